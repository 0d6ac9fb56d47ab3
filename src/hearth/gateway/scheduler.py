"""The live scheduler: ``gateway/policy.py`` driven by asyncio, in front of every backend.

A model call asks for a slot (``acquire``) before it is sent and gives it back when it ends
(``Ticket.release``). The policy clock is the event loop's monotonic clock. One timer is kept
armed for the policy's next deadline (a bound, an aging, a switch coming due) while requests
wait; nothing is armed on the fast path, where a request's model has a free slot and nobody
waits for it. Discovery polls feed the policy what each backend has loaded.

A batch call whose client reads the whole answer (no stream) is preemptible: the policy may
abort it for an interactive request that cannot otherwise start within its bound. Its ticket's
``preempted`` future then resolves, the dispatcher closes the upstream connection (Ollama stops
generating), and ``resume`` waits for the call's next grant, first of its tenant's queue.

Scheduling is per Hearth process: several processes behind one Ollama each keep their own
queues (their sum of in-flight requests can exceed the server's slots).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from hearth.backends.pool import BackendState, Pool, canonical_name
from hearth.errors import NoBackend, QueueFull, QueueTimeout
from hearth.gateway.auth import Principal
from hearth.gateway.policy import BATCH, INTERACTIVE, BackendSpec, Job, Policy, PolicySettings
from hearth.settings import BackendSettings, Settings

log = logging.getLogger("hearth.scheduler")

UNLIMITED = 1 << 30


def backend_spec(cfg: BackendSettings) -> BackendSpec:
    if cfg.kind == "ollama":
        return BackendSpec(
            cfg.name,
            loads_models=True,
            slots_per_model=cfg.num_parallel,
            max_loaded=cfg.max_loaded_models,
            memory=None if cfg.memory_gb is None else cfg.memory_gb * 1e9,
            keep_alive=math.inf if cfg.hold_models else cfg.keep_alive,
        )
    return BackendSpec(
        cfg.name,
        loads_models=False,
        slots_per_model=cfg.max_concurrent or UNLIMITED,
        max_loaded=None,
        max_in_flight=cfg.max_concurrent,
    )


# Told when a wait for a slot ends, granted or not: (place in the queue on arrival, 1 = next,
# 0 = it did not queue; seconds waited).
OnWait = Callable[[int, float], None]


class _Wait:
    """A request's link to the scheduler: the future its next grant resolves, the ticket of the
    grant it holds, and whom to tell how long each wait took."""

    __slots__ = ("fut", "on_wait", "since", "ticket")

    def __init__(self, on_wait: OnWait | None, since: float) -> None:
        self.fut: asyncio.Future[None] | None = None
        self.ticket: Ticket | None = None
        self.on_wait = on_wait
        self.since = since  # when the current wait began: the arrival, or the last preemption


class Ticket:
    """A slot on a backend, held from grant to release (or until the policy preempts it)."""

    __slots__ = ("_done", "_sched", "job", "preempted")

    def __init__(self, sched: Scheduler, job: Job) -> None:
        self._sched = sched
        self.job = job
        self._done = False
        # Resolves when the policy takes the slot back: the call must stop and wait again.
        self.preempted: asyncio.Future[None] | None = (
            asyncio.get_running_loop().create_future() if job.preemptible else None
        )

    @property
    def backend(self) -> str:
        assert self.job.backend is not None
        return self.job.backend

    @property
    def unload(self) -> tuple[str, ...]:
        """Models to unload on the backend before sending: the policy evicts them to make room."""
        return self.job.unload

    def started(self) -> None:
        """The first byte came back (the model is loaded)."""
        if not self.job.started:
            self._sched.policy.started(self.job, self._sched.now())
            if self.job.loads:  # only a finished load can change what the policy decides
                self._sched.arm()

    @property
    def loads(self) -> bool:
        """This call makes the backend load its model (its load time is worth learning)."""
        return self.job.loads

    def release(self, ok: bool = True, load_seconds: float | None = None) -> None:
        if self._done:
            return
        self._done = True
        self._sched.policy.finish(self.job, self._sched.now(), ok, load_seconds)
        self._sched.arm()


class FreeTicket:
    """A call that takes no slot: Ollama's unload request (keep_alive 0, nothing to generate)
    returns at once and must never make the scheduler load the model first."""

    __slots__ = ("backend",)
    loads = False
    preempted: asyncio.Future[None] | None = None  # never stopped
    unload: tuple[str, ...] = ()
    position = 0
    waited = 0.0

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def started(self) -> None:
        pass

    def release(self, ok: bool = True, load_seconds: float | None = None) -> None:
        pass


class Scheduler:
    def __init__(self, settings: Settings, pool: Pool, clock: Callable[[], float] | None = None) -> None:
        """``clock``: the policy's clock in seconds; the event loop's monotonic clock if None."""
        s = settings.scheduler
        self.settings = settings
        self.pool = pool
        self.policy = Policy(
            [backend_spec(st.backend.cfg) for st in pool.states],
            PolicySettings(
                aging=s.aging,
                batch_weight=s.batch_weight,
                horizon=s.horizon,
                load_fixed=s.load_fixed,
                load_bandwidth=s.load_gbps * 1e9,
                preempt=s.preempt,
                batch_urgency=s.batch_urgency,
                session_gap=s.session_gap,
            ),
            self._granted,
            self._granted,
            self._preempted,
        )
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        pool.listeners.append(self._observe)

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    async def acquire(
        self,
        who: Principal,
        model: str,
        backends: list[str],
        cost: float,
        preemptible: bool = False,
        on_wait: OnWait | None = None,
        keep_alive: float | None = None,
    ) -> Ticket:
        """Wait for a slot on one of ``backends`` (in order of preference) for ``model``.
        ``preemptible``: the caller reads the whole answer before sending anything on, so the
        call may be aborted and sent again (only a batch tenant's call ever is). ``on_wait`` is
        told of every wait that ends, this one and those after a preemption, granted or not
        (timed out, the client gone). ``keep_alive``: the seconds the call asks the backend to
        keep the model once idle (negative: forever), None for the backend's default."""
        p = who.policy
        now = self.now()
        job = Job(
            who.name,
            canonical_name(model, "ollama"),
            tuple(backends),
            0.0,
            priority=BATCH if p.priority == "batch" else INTERACTIVE,
            weight=p.weight,
            max_wait=p.max_wait,
            cost=max(cost, 1.0),
            tag=_Wait(on_wait, now),
            preemptible=preemptible,
            keep_alive=keep_alive,
        )
        policy = self.policy
        policy.submit(job, now)
        if job.backend is not None:
            self._waited(job)
            return self._ticket(job)
        if policy.waiting(job.tenant) > p.max_queue or policy.waiting() > self.settings.scheduler.max_queue:
            policy.cancel(job, self.now())
            raise QueueFull(
                f"too many requests waiting for a backend (tenant '{job.tenant}' may queue {p.max_queue})",
                self.expected_wait(job),
            )
        job.tag.fut = asyncio.get_running_loop().create_future()
        return await self._wait(job, model)

    async def resume(self, ticket: Ticket, model: str) -> Ticket:
        """The next grant of a preempted call."""
        job = ticket.job
        if job.backend is not None:
            self._waited(job)
            return self._ticket(job)  # granted again already
        return await self._wait(job, model)

    def abandon(self, ticket: Ticket) -> None:
        """A preempted call had finished all the same: it will not be sent again."""
        job = ticket.job
        if job.backend is None:
            self.policy.cancel(job, self.now())
        elif job.tag.ticket is None:
            self.policy.finish(job, self.now(), ok=True)  # its new grant was never used
        self.arm()

    async def _wait(self, job: Job, model: str) -> Ticket:
        policy = self.policy
        fut = job.tag.fut
        assert fut is not None
        self.arm()
        try:
            await fut
        except asyncio.CancelledError:
            # The client left while waiting, or just as its slot was granted.
            if job.backend is None:
                policy.cancel(job, self.now())
            else:
                policy.finish(job, self.now(), ok=True)
            self.arm()
            raise
        finally:
            self._waited(job)
        if job.dropped == "timeout":
            raise QueueTimeout(
                f"waited {job.max_wait:g} s for a backend to serve '{model}'", self.expected_wait(job)
            )
        if job.dropped is not None:
            raise NoBackend(f"no backend is available for model '{model}'")
        return self._ticket(job)

    def _waited(self, job: Job) -> None:
        """Tell the caller how long the wait that just ended took (to its grant, if granted)."""
        w: _Wait = job.tag
        if w.on_wait is not None:
            end = self.now() if job.granted_at is None else job.granted_at
            w.on_wait(job.position, end - w.since)

    def _ticket(self, job: Job) -> Ticket:
        ticket = Ticket(self, job)
        job.tag.ticket = ticket
        return ticket

    def unloaded(self, backend: str, model: str) -> None:
        """A client unloaded ``model`` on ``backend`` (keep_alive 0)."""
        self.policy.forget(backend, canonical_name(model, "ollama"), self.now())
        self.arm()

    def expected_wait(self, job: Job) -> float:
        return self.policy.expected_wait(job.model, job.backends)

    def snapshot(self) -> dict[str, Any]:
        return self.policy.snapshot(self.now())

    def waiting_by_model(self) -> dict[str, int]:
        return self.policy.waiting_by_model()

    def waiting_by_backend(self) -> dict[str, int]:
        return self.policy.waiting_by_backend()

    def loads_by_backend(self) -> dict[str, int]:
        return self.policy.loads_by_backend()

    def preemptions_by_backend(self) -> dict[str, int]:
        return self.policy.preemptions_by_backend()

    # ---- callbacks and the timer -------------------------------------------------------------

    def _granted(self, job: Job) -> None:
        """The policy granted (or dropped) a queued job: wake its request."""
        fut = job.tag.fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _preempted(self, job: Job, backend: str) -> None:
        """The policy took a running call's slot back: stop it, and wait for the next grant."""
        w: _Wait = job.tag
        ticket, w.ticket = w.ticket, None
        w.fut = asyncio.get_running_loop().create_future()
        w.since = self.now()
        if ticket is not None:
            ticket._done = True  # its release must not free the slot a second time
            if ticket.preempted is not None and not ticket.preempted.done():
                ticket.preempted.set_result(None)
        log.info("preempted a %s call for %s on %s", job.tenant, job.model, backend)

    def arm(self) -> None:
        """Keep one timer for the policy's next deadline while requests wait."""
        if not self.policy.waiting():
            if self._timer is not None:
                self._timer.cancel()
                self._timer = self._timer_at = None
            return
        at = self.policy.next_deadline(self.now())
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, at - self.now()), self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        self.policy.pump(self.now())
        self.arm()

    def _observe(self, state: BackendState) -> None:
        kind = state.backend.kind
        sizes = {canonical_name(n, kind): float(m.size) for n, m in state.models.items()}
        loaded = {canonical_name(n, kind): float(m.size) for n, m in state.loaded.items()}
        try:
            now = self.now()
        except RuntimeError:
            return  # polled outside a loop (tests building a pool by hand)
        wall = time.time()
        expires = {
            canonical_name(n, kind): left
            for n, m in state.loaded.items()
            if (left := seconds_left(m.expires_at, wall)) is not None
        }
        self.policy.observe(state.name, now, state.up, sizes, loaded, expires)
        self.arm()


FOREVER_S = 10 * 365 * 86400.0  # an expiry further off than this is keep_alive -1 (Ollama: year 2318)


def seconds_left(expires_at: str, wall: float) -> float | None:
    """Seconds from ``wall`` (epoch) to an /api/ps ``expires_at`` (math.inf past FOREVER_S);
    None when there is none or it cannot be read."""
    if not expires_at:
        return None
    try:
        left = datetime.fromisoformat(expires_at).timestamp() - wall
    except (ValueError, OverflowError, OSError):
        return None
    return math.inf if left > FOREVER_S else left
