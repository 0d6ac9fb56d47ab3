"""OllamaModel follows Ollama's scheduler rule by rule, with hand-computed times.

Unless a test says otherwise: every model is 4 GB with no KV surcharge, and a load takes
1 s + size / 1 GB/s, so 5 s.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hearth.sim.ollama import OllamaModel
from hearth.sim.specs import ModelSpec, ServerSpec, SimRequest

SERVER = ServerSpec(
    memory_gb=48.0,
    max_loaded_models=3,
    num_parallel=1,
    max_queue=512,
    keep_alive_s=300.0,
    load_fixed_s=1.0,
    load_gbps=1.0,
    fit_fraction=0.8,
)


def spec(name: str, size_gb: float = 4.0) -> ModelSpec:
    return ModelSpec(name, size_gb=size_gb, kv_gb=0.0)


class Harness:
    """An OllamaModel whose callbacks are recorded; the test calls it with explicit times."""

    def __init__(self, *models: ModelSpec, **server: Any) -> None:
        self.started: dict[int, float] = {}
        self.rejected: list[int] = []
        self.assigned: dict[int, float] = {}
        self.model = OllamaModel(
            replace(SERVER, **server),
            {m.name: m for m in models or [spec(n) for n in "abcdef"]},
            lambda req, t: self.started.__setitem__(req.id, t),
            lambda req, t: self.rejected.append(req.id),
            on_assign=lambda req, t: self.assigned.__setitem__(req.id, t),
        )
        self._ids = itertools.count(1)

    def submit(self, model: str, t: float, keep_alive: float | None = None) -> SimRequest:
        req = SimRequest(next(self._ids), model, prompt_tokens=0, output_tokens=10, keep_alive_s=keep_alive)
        self.model.submit(req, t)
        return req

    def warm(self, model: str, t: float, keep_alive: float | None = None) -> float:
        """Send one request at ``t``, let any load complete, finish it the moment it starts, and
        return that moment."""
        req = self.submit(model, t, keep_alive)
        if req.started_at is None:
            due = self.model.next_timer()
            assert due is not None
            self.model.advance(due)
        assert req.started_at is not None
        self.model.finish(req, req.started_at)
        return req.started_at


# ----------------------------------------------------------------------------------------- loads
def test_a_request_for_an_unloaded_model_starts_when_its_load_completes() -> None:
    h = Harness()
    r = h.submit("a", 0.0)
    assert h.model.loading == "a"
    assert h.model.loaded() == {}  # a model counts as loaded once its load completes
    assert h.model.next_timer() == 5.0
    assert h.started == {}
    h.model.advance(5.0)
    assert h.started == {r.id: 5.0}
    assert (r.submitted_at, r.started_at) == (0.0, 5.0)
    assert h.model.loaded() == {"a": 4.0}
    assert h.model.loads == 1
    assert h.model.load_log == [(0.0, "a")]


def test_a_late_advance_fires_each_timer_at_its_own_time() -> None:
    h = Harness()
    r = h.submit("a", 0.0)
    h.model.advance(7.0)
    assert r.started_at == 5.0


def test_every_call_processes_due_timers_first() -> None:
    h = Harness()
    h.submit("a", 0.0)
    h.submit("b", 7.0)  # a's load completed at 5, so b loads alongside at once
    assert h.model.load_log == [(0.0, "a"), (7.0, "b")]
    assert h.started == {1: 5.0}


def test_loads_happen_one_at_a_time_in_arrival_order() -> None:
    h = Harness()
    for name in "abc":
        h.submit(name, 0.0)
    h.model.advance(100.0)
    assert h.model.load_log == [(0.0, "a"), (5.0, "b"), (10.0, "c")]
    assert h.started == {1: 5.0, 2: 10.0, 3: 15.0}


def test_requests_for_loaded_models_start_while_another_model_loads() -> None:
    h = Harness()
    h.warm("a", 0.0)  # loaded at 5
    b = h.submit("b", 5.0)  # loads 5..10
    c = h.submit("c", 6.0)  # waits: one load at a time
    a = h.submit("a", 7.0)
    assert a.started_at == 7.0
    assert h.model.pending() == [b, c]
    h.model.advance(10.0)
    assert h.model.load_log == [(0.0, "a"), (5.0, "b"), (10.0, "c")]
    h.model.advance(15.0)
    assert c.started_at == 15.0


def test_requests_for_a_model_being_loaded_share_its_runner() -> None:
    h = Harness(num_parallel=2)
    r1 = h.submit("a", 0.0)
    r2 = h.submit("a", 1.0)
    h.model.advance(5.0)
    assert (r1.started_at, r2.started_at) == (5.0, 5.0)
    assert h.model.loads == 1


def test_a_reload_counts_as_a_load() -> None:
    h = Harness(max_loaded_models=1)
    h.warm("a", 0.0)
    h.warm("b", 5.0)
    h.warm("a", 10.0)
    assert h.model.loads == 3
    assert h.model.load_log == [(0.0, "a"), (5.0, "b"), (10.0, "a")]
    assert h.model.unload_log == [(5.0, "a"), (10.0, "b")]


def test_nothing_loaded_means_no_fit_check() -> None:
    h = Harness(spec("huge", 60.0))
    r = h.submit("huge", 0.0)
    h.model.advance(61.0)
    assert r.started_at == 61.0
    assert h.model.loaded() == {"huge": 60.0}


def test_the_time_a_request_gets_its_runner_is_reported() -> None:
    h = Harness()
    r1 = h.submit("a", 0.0)
    h.model.advance(5.0)
    r2 = h.submit("a", 6.0)  # waits on the semaphore behind r1: assigned now, started later
    h.model.finish(r1, 9.0)
    assert h.assigned == {r1.id: 5.0, r2.id: 6.0}
    assert r2.started_at == 9.0


# ------------------------------------------------------------------------------------- semaphore
def test_a_runner_runs_num_parallel_requests_and_queues_the_rest_fifo() -> None:
    h = Harness(num_parallel=2)
    h.warm("a", 0.0)
    r1, r2, r3, r4 = (h.submit("a", t) for t in (10.0, 11.0, 12.0, 13.0))
    assert (r1.started_at, r2.started_at, r3.started_at, r4.started_at) == (10.0, 11.0, None, None)
    assert (h.model.running("a"), h.model.waiting("a")) == (2, 2)
    h.model.finish(r2, 20.0)
    assert (r3.started_at, r4.started_at) == (20.0, None)
    h.model.finish(r1, 21.0)
    assert r4.started_at == 21.0


def test_the_semaphore_wait_is_not_bounded_by_max_queue() -> None:
    h = Harness(max_queue=1)
    h.warm("a", 0.0)
    h.submit("a", 5.0)
    for t in range(6, 11):
        h.submit("a", float(t))
    assert h.rejected == []
    assert h.model.waiting("a") == 5
    assert h.model.pending() == []


# -------------------------------------------------------------------------------------- eviction
def test_a_new_model_evicts_a_victim_when_max_loaded_models_are_loaded() -> None:
    h = Harness(max_loaded_models=2)
    h.warm("a", 0.0)
    h.warm("b", 5.0)
    c = h.submit("c", 10.0)
    assert h.model.unload_log == [(10.0, "a")]
    assert h.model.load_log[-1] == (10.0, "c")
    h.model.advance(15.0)
    assert c.started_at == 15.0
    assert h.model.loaded() == {"b": 4.0, "c": 4.0}


def test_a_model_that_needs_more_than_the_fit_fraction_of_free_memory_evicts() -> None:
    # Two 8 GB models in 48 GB leave 32 GB free; 80 % of that is 25.6 GB < 26 GB.
    h = Harness(spec("s1", 8.0), spec("s2", 8.0), spec("big", 26.0))
    h.warm("s1", 0.0)  # loaded at 9
    h.warm("s2", 9.0)  # loaded at 18
    big = h.submit("big", 18.0)
    assert h.model.unload_log == [(18.0, "s1")]  # then 40 GB free: 32 GB >= 26 GB
    assert h.model.load_log[-1] == (18.0, "big")
    h.model.advance(45.0)
    assert big.started_at == 45.0
    assert h.model.loaded() == {"s2": 8.0, "big": 26.0}


def test_a_model_within_the_fit_fraction_loads_alongside() -> None:
    h = Harness(spec("s1", 8.0), spec("s2", 8.0), spec("big", 25.0))
    h.warm("s1", 0.0)
    h.warm("s2", 9.0)
    h.warm("big", 18.0)
    assert h.model.unload_log == []
    assert h.model.loaded() == {"s1": 8.0, "s2": 8.0, "big": 25.0}


def test_an_eviction_waiting_for_a_busy_victim_blocks_the_pending_queue_but_not_loaded_models() -> None:
    h = Harness(max_loaded_models=2, num_parallel=2)
    h.warm("a", 0.0)
    h.warm("b", 5.0)
    ra = h.submit("a", 10.0)
    h.submit("b", 10.0)
    c = h.submit("c", 11.0)  # a and b are busy: the victim is a (by name), and c waits for it
    assert h.model.evicting == "a"
    d = h.submit("d", 12.0)  # queued behind c
    b2 = h.submit("b", 13.0)  # b is loaded and has a free slot: starts at once
    a2 = h.submit("a", 14.0)  # a is being evicted: it takes no new requests, so a2 queues
    assert b2.started_at == 13.0
    assert h.model.pending() == [c, d, a2]
    assert h.model.next_timer() is None
    h.model.finish(ra, 20.0)
    assert h.model.unload_log == [(20.0, "a")]
    assert h.model.load_log[-1] == (20.0, "c")
    h.model.advance(25.0)
    assert c.started_at == 25.0
    assert h.model.evicting == "b"  # d now needs a victim too: b and c are busy, b comes first
    assert d.started_at is None


def test_the_victim_is_the_first_idle_runner_by_keep_alive_then_forever_last() -> None:
    h = Harness()
    h.warm("a", 0.0, keep_alive=600.0)
    h.warm("b", 5.0, keep_alive=60.0)
    h.warm("c", 10.0, keep_alive=-1.0)  # forever
    h.warm("d", 15.0, keep_alive=900.0)  # evicts b (60 s)
    h.warm("e", 20.0, keep_alive=1000.0)  # evicts a (600 s)
    h.warm("f", 25.0)  # evicts d (900 s); c is pinned
    assert h.model.unload_log == [(15.0, "b"), (20.0, "a"), (25.0, "d")]
    assert set(h.model.loaded()) == {"c", "e", "f"}


def test_victims_with_equal_keep_alive_go_by_model_name_not_by_use() -> None:
    h = Harness(max_loaded_models=2)
    h.warm("b", 0.0)
    h.warm("a", 5.0)  # a is the most recently used
    h.submit("c", 10.0)
    assert h.model.unload_log == [(10.0, "a")]


def test_an_idle_victim_is_preferred_over_a_busy_one_that_sorts_first() -> None:
    h = Harness(max_loaded_models=2)
    h.warm("a", 0.0, keep_alive=60.0)
    h.warm("b", 5.0, keep_alive=600.0)
    h.submit("a", 10.0, keep_alive=60.0)  # a busy
    h.submit("c", 11.0)
    assert h.model.unload_log == [(11.0, "b")]
    assert h.model.evicting is None


# ------------------------------------------------------------------------------------ keep_alive
def test_an_idle_runner_unloads_when_its_keep_alive_expires() -> None:
    h = Harness()
    h.warm("a", 0.0, keep_alive=10.0)  # idle from 5
    assert h.model.next_timer() == 15.0
    assert h.model.expires_at("a") == 15.0
    h.model.advance(14.9)
    assert h.model.loaded() == {"a": 4.0}
    h.model.advance(15.0)
    assert h.model.loaded() == {}
    assert h.model.unload_log == [(15.0, "a")]
    assert h.model.next_timer() is None


def test_a_new_request_cancels_the_expiry() -> None:
    h = Harness()
    h.warm("a", 0.0, keep_alive=10.0)
    r = h.submit("a", 12.0)  # the server default, 300 s
    assert h.model.next_timer() is None
    h.model.advance(16.0)
    assert h.model.loaded() == {"a": 4.0}
    h.model.finish(r, 20.0)
    assert h.model.next_timer() == 320.0


def test_keep_alive_zero_unloads_as_soon_as_idle() -> None:
    h = Harness()
    h.warm("a", 0.0, keep_alive=0.0)
    assert h.model.loaded() == {}
    assert h.model.unload_log == [(5.0, "a")]


def test_the_last_request_to_take_the_runner_sets_its_keep_alive() -> None:
    h = Harness(num_parallel=2)
    r1 = h.submit("a", 0.0, keep_alive=0.0)
    h.model.advance(5.0)
    r2 = h.submit("a", 6.0, keep_alive=100.0)
    h.model.finish(r2, 7.0)
    h.model.finish(r1, 8.0)  # r1 (keep_alive 0) ends last, but r2 took the runner last
    assert h.model.loaded() == {"a": 4.0}
    assert h.model.expires_at("a") == 108.0


def test_a_negative_keep_alive_keeps_the_model_forever() -> None:
    h = Harness()
    h.warm("a", 0.0, keep_alive=-1.0)
    assert h.model.keep_alive("a") == math.inf
    assert h.model.next_timer() is None


def test_requests_without_keep_alive_use_the_servers() -> None:
    h = Harness(keep_alive_s=30.0)
    h.warm("a", 0.0)
    assert h.model.expires_at("a") == 35.0


# ----------------------------------------------------------------------------------- queue full
def test_a_full_pending_queue_rejects_at_once() -> None:
    h = Harness(max_loaded_models=1, max_queue=1)
    r0 = h.submit("a", 0.0)
    h.model.advance(5.0)
    r1 = h.submit("b", 6.0)  # read off the queue: waits for a to go idle
    r2 = h.submit("b", 7.0)  # the one place in the queue
    r3 = h.submit("c", 8.0)
    assert h.rejected == [r3.id]
    assert r3.rejected == "server busy"
    assert h.model.pending() == [r1, r2]
    h.model.finish(r0, 10.0)
    h.model.advance(100.0)
    assert (r1.started_at, r3.started_at) == (15.0, None)
    assert r3.id not in h.started


# ---------------------------------------------------------------------------------------- cancel
def test_a_cancelled_queued_request_never_starts() -> None:
    h = Harness(max_loaded_models=1)
    r0 = h.submit("a", 0.0)
    h.model.advance(5.0)
    r1 = h.submit("b", 6.0)
    r2 = h.submit("c", 7.0)
    h.model.cancel(r2, 8.0)
    assert h.model.pending() == [r1]
    h.model.finish(r0, 10.0)
    h.model.advance(100.0)
    assert r2.started_at is None
    assert [m for _, m in h.model.load_log] == ["a", "b"]


def test_a_cancelled_semaphore_waiter_gives_its_turn_to_the_next() -> None:
    h = Harness()
    r0 = h.submit("a", 0.0)
    h.model.advance(5.0)
    r1 = h.submit("a", 6.0)
    r2 = h.submit("a", 7.0)
    h.model.cancel(r1, 8.0)
    assert h.model.waiting("a") == 1
    h.model.finish(r0, 9.0)
    assert (r1.started_at, r2.started_at) == (None, 9.0)


def test_cancelling_the_head_does_not_stop_the_eviction_under_way() -> None:
    h = Harness(max_loaded_models=1)
    r0 = h.submit("a", 0.0)
    h.model.advance(5.0)
    r1 = h.submit("b", 6.0)
    h.submit("c", 7.0)
    h.model.cancel(r1, 8.0)
    assert h.model.evicting == "a"
    h.model.finish(r0, 10.0)
    assert h.model.unload_log == [(10.0, "a")]
    assert h.model.load_log[-1] == (10.0, "c")


def test_a_load_completes_after_its_request_left_and_the_runner_idles() -> None:
    h = Harness()
    r = h.submit("a", 0.0, keep_alive=10.0)
    h.model.cancel(r, 2.0)
    h.model.advance(5.0)
    assert r.started_at is None
    assert h.model.loaded() == {"a": 4.0}
    assert h.model.expires_at("a") == 15.0


def test_cancel_after_a_due_start_finishes_the_request() -> None:
    h = Harness()
    r = h.submit("a", 0.0)
    h.model.cancel(r, 6.0)  # its load completed at 5: it had started
    assert (r.started_at, r.finished_at) == (5.0, 6.0)
    assert h.model.running("a") == 0


# ---------------------------------------------------------------------------------------- unload
def test_unload_of_an_idle_model_is_immediate() -> None:
    h = Harness()
    h.warm("a", 0.0)
    h.model.unload("a", 7.0)
    assert h.model.loaded() == {}
    assert h.model.unload_log == [(7.0, "a")]


def test_unload_of_a_busy_model_happens_when_it_goes_idle() -> None:
    h = Harness()
    r = h.submit("a", 0.0)
    h.model.advance(5.0)
    h.model.unload("a", 6.0)
    assert h.model.loaded() == {"a": 4.0}
    h.model.finish(r, 9.0)
    assert h.model.unload_log == [(9.0, "a")]


def test_unload_of_a_model_not_loaded_does_nothing() -> None:
    h = Harness()
    h.submit("a", 0.0)
    h.model.unload("a", 1.0)  # still loading: Ollama's expireRunner finds no runner
    h.model.unload("b", 1.0)
    h.model.advance(5.0)
    assert h.model.loaded() == {"a": 4.0}


# ----------------------------------------------------------------------------------------- misc
def test_prompt_and_generation_seconds_follow_the_model_speeds() -> None:
    m = ModelSpec("a", 4.0, tokens_per_s=10.0, prompt_tokens_per_s=100.0)
    model = OllamaModel(SERVER, {"a": m}, lambda req, t: None)
    req = SimRequest(1, "a", prompt_tokens=250, output_tokens=30)
    assert model.prompt_seconds(req) == 2.5
    assert model.generation_seconds(req) == 5.5


def test_an_unknown_model_is_an_error() -> None:
    h = Harness()
    with pytest.raises(KeyError):
        h.submit("nope", 0.0)


def test_finishing_a_request_that_is_not_running_is_an_error() -> None:
    h = Harness()
    r = h.submit("a", 0.0)
    with pytest.raises(ValueError, match="not running"):
        h.model.finish(r, 1.0)


# ------------------------------------------------------------------------------------- property
@dataclass(frozen=True)
class Op:
    """One client action in a generated trace."""

    gap: float  # since the previous action
    model: int
    unload: bool  # a keep_alive 0 empty request instead of a generation
    output_tokens: int
    keep_alive: float | None
    leave_after: float | None  # the client gives up this long after arriving, if not started


_KEEP_ALIVE = st.sampled_from([None, 0.0, -1.0, 3.0, 30.0])
_OPS = st.lists(
    st.builds(
        Op,
        gap=st.floats(0.0, 3.0),
        model=st.integers(0, 3),
        unload=st.sampled_from([False, False, False, True]),
        output_tokens=st.integers(0, 80),
        keep_alive=_KEEP_ALIVE,
        leave_after=st.none() | st.floats(0.0, 20.0),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(
    sizes=st.lists(st.floats(1.0, 40.0), min_size=4, max_size=4),
    max_loaded=st.integers(1, 3),
    num_parallel=st.integers(1, 3),
    max_queue=st.integers(1, 5),
    memory=st.floats(8.0, 64.0),
    keep_alive=st.sampled_from([0.0, -1.0, 3.0, 30.0]),
    ops=_OPS,
)
def test_every_accepted_request_runs_within_the_servers_limits(
    sizes: list[float],
    max_loaded: int,
    num_parallel: int,
    max_queue: int,
    memory: float,
    keep_alive: float,
    ops: list[Op],
) -> None:
    server = replace(
        SERVER,
        memory_gb=memory,
        max_loaded_models=max_loaded,
        num_parallel=num_parallel,
        max_queue=max_queue,
        keep_alive_s=keep_alive,
    )
    models = {f"m{i}": ModelSpec(f"m{i}", size, kv_gb=0.5) for i, size in enumerate(sizes)}
    names = list(models)
    events: list[tuple[float, int, Callable[[], None]]] = []
    seq = itertools.count()
    clock = 0.0

    def at(t: float, action: Callable[[], None]) -> None:
        heapq.heappush(events, (t, next(seq), action))

    def on_start(req: SimRequest, t: float) -> None:
        def done() -> None:
            if req.finished_at is None:  # a cancel may have finished it already
                model.finish(req, clock)

        at(t + model.generation_seconds(req), done)

    model = OllamaModel(server, models, on_start)
    requests: list[SimRequest] = []
    cancelled: list[SimRequest] = []

    def arrive(req: SimRequest) -> Callable[[], None]:
        return lambda: model.submit(req, clock)

    def leave(req: SimRequest) -> Callable[[], None]:
        def action() -> None:
            if req.started_at is None and req.rejected is None:
                model.cancel(req, clock)
                if req.started_at is None:
                    cancelled.append(req)

        return action

    def unload(name: str) -> Callable[[], None]:
        return lambda: model.unload(name, clock)

    t = 0.0
    for op in ops:
        t += op.gap
        if op.unload:
            at(t, unload(names[op.model]))
            continue
        req = SimRequest(len(requests), names[op.model], 10, op.output_tokens, keep_alive_s=op.keep_alive)
        requests.append(req)
        at(t, arrive(req))
        if op.leave_after is not None:
            at(t + op.leave_after, leave(req))

    for _ in range(10_000):
        timer = model.next_timer()
        if events and (timer is None or events[0][0] <= timer):
            clock, _, action = heapq.heappop(events)
            action()
        elif timer is not None:
            clock = timer
            model.advance(timer)
        else:
            break
        loaded = model.loaded()
        assert len(loaded) <= max_loaded
        assert len(loaded) == 1 or sum(loaded.values()) <= memory + 1e-9
        for name in names:
            assert model.running(name) <= num_parallel
    else:
        pytest.fail("the simulation did not settle")

    assert model.pending() == []
    for req in requests:
        if req.rejected is not None or req in cancelled:
            assert req.started_at is None
        else:
            assert req.submitted_at is not None
            assert req.started_at is not None
            assert req.finished_at is not None
            assert req.submitted_at <= req.started_at <= req.finished_at
