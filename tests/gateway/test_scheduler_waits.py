"""What the live scheduler tells a call of its waits (``acquire``'s ``on_wait``), which the
request log, the queue headers and the queue-wait histogram report: each wait once, from its
start (the arrival, or the preemption) to its grant, or to its end when it is given up.

The scheduler runs on a real event loop; its clock is replaced by one the test moves, so the
waits are exact."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from tests.conftest import make_settings

from hearth.backends.pool import Pool
from hearth.errors import QueueTimeout
from hearth.gateway.auth import Principal
from hearth.gateway.scheduler import Scheduler

X, Y = "x:latest", "y:latest"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def scheduler(clock: Clock, **tenants: dict[str, object]) -> tuple[Scheduler, dict[str, Principal]]:
    settings = make_settings(
        [{"name": "o", "kind": "ollama", "url": "http://127.0.0.1:9", "max_loaded_models": 1}],
        tenants=tenants,
        # A conversation's model is left alone for session_gap after its turn: short here, so
        # the preempted call goes again as soon as the voice turn ends.
        scheduler={"horizon": 0.2, "session_gap": 0.2},
    )
    sched = Scheduler(settings, Pool(settings), clock)
    who = {name: Principal(name, name, None, settings.tenants[name]) for name in tenants}
    return sched, who


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # let woken tasks run (no time passes: the clock is the test's)


def test_a_preempted_call_reports_its_wait_in_the_queue_and_its_wait_after_preemption_once_each() -> None:
    async def run() -> None:
        clock = Clock()
        sched, who = scheduler(clock, meal={"priority": "batch", "max_wait": 600}, voice={"max_wait": 4})
        waits: dict[str, list[tuple[int, float]]] = {"a": [], "b": [], "voice": []}

        def told(name: str) -> Callable[[int, float], None]:
            return lambda position, waited: waits[name].append((position, waited))

        a = await sched.acquire(who["meal"], X, ["o"], 10, True, told("a"))
        b_task = asyncio.create_task(sched.acquire(who["meal"], X, ["o"], 10, True, told("b")))
        await settle()
        assert not b_task.done()  # one slot: b queues behind a

        clock.t += 10
        a.release()
        b = await b_task  # granted when a's slot came free: 10 s in the queue
        assert waits["a"] == [(1, 0.0)]  # X was not loaded: a queued for the load, granted at once
        assert waits["b"] == [(1, 10.0)]

        clock.t += 5  # b has run 5 s; the voice turn needs Y, and only one model fits
        v_task = asyncio.create_task(sched.acquire(who["voice"], Y, ["o"], 10, False, told("voice")))
        await settle()
        # Its bound is too short to wait for b's run to end (10 s, as a's took): b is preempted.
        assert b.preempted is not None and b.preempted.done()
        voice = await v_task
        assert waits["voice"] == [(1, 0.0)]

        r_task = asyncio.create_task(sched.resume(b, X))
        clock.t += 7
        voice.release()
        await settle()
        assert not r_task.done()  # Y is left alone for session_gap after the turn
        clock.t += 0.2
        sched.policy.pump(clock())  # what the scheduler's timer does then
        b2 = await r_task
        # The 5 s it ran are not a wait; the 7.2 s after the preemption are, counted once.
        assert waits["b"] == [(1, 10.0), (1, pytest.approx(7.2))]
        b2.release()

    asyncio.run(run())


@pytest.mark.parametrize("ending", ["given up at the bound", "the client left"])
def test_a_wait_that_ends_without_a_grant_reports_its_whole_length(ending: str) -> None:
    async def run() -> None:
        clock = Clock()
        sched, who = scheduler(clock, chat={"max_wait": 30})
        waits: list[tuple[int, float]] = []
        first = await sched.acquire(who["chat"], X, ["o"], 10)
        queued = asyncio.create_task(
            sched.acquire(who["chat"], X, ["o"], 10, on_wait=lambda p, w: waits.append((p, w)))
        )
        await settle()
        if ending == "given up at the bound":
            clock.t += 30
            sched.policy.pump(clock())  # what the scheduler's timer does at the bound
            with pytest.raises(QueueTimeout):
                await queued
            assert waits == [(1, 30.0)]
        else:
            clock.t += 12
            queued.cancel()
            with pytest.raises(asyncio.CancelledError):
                await queued
            assert waits == [(1, 12.0)]
        assert sched.policy.waiting() == 0
        first.release()

    asyncio.run(run())
