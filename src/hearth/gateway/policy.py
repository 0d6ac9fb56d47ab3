"""The scheduling policy: which waiting request goes to which backend, and when a backend
changes model. A synchronous state machine with an injected clock (``now`` in seconds) and no
I/O: ``gateway/scheduler.py`` drives it for the live gateway, ``sim/des.py`` in simulated time,
so the simulator measures this very code.

What it knows of each backend: parallel slots per model (Ollama's OLLAMA_NUM_PARALLEL), how many
models and how much memory it can hold, which models are loaded (its own grants, reconciled
with /api/ps) and how long each stays once idle (the expiry /api/ps last showed for it, which
knows keep_alives Hearth did not send; else, as in Ollama, the keep_alive of the last call sent
to it: a client's, such as Home Assistant's -1, or an alias's; else the backend's), each
model's size, and a load-time estimate per model (size / bandwidth plus a fixed part until a
load is observed, then a moving average of observed loads).

The policy, in the order it is applied each time anything changes:

1. **Slots, never more.** At most ``slots`` requests per loaded model are in flight at a
   backend, so Ollama's own FIFO never decides the order; the rest wait here.
2. **Loaded models first.** A free slot on a loaded model goes to a request for that model.
3. **Who goes first** among the requests for one model: interactive before batch, where a batch
   request that has waited ``aging`` seconds counts as interactive (so batch work is never
   starved); then weighted fair sharing across tenants (start-time fair queueing: each grant
   advances the tenant's virtual time by cost / weight, so a tenant with weight 2 gets twice the
   tokens of a tenant with weight 1 when both wait); then arrival order.
4. **Switch only when it pays.** A model that is not loaded on a backend gets loaded there when
   the waiting cost of its queue reaches the cost of evicting what must make room:

       waiting cost = sum over its requests of w * (age + load time of the model)
       switch cost  = for each model evicted: its load time * (requests waiting for it
                      + requests expected for it, from a count of its recent arrivals that
                      decays over ``horizon`` seconds, at most 1; 1 if it is busy)

   w is 1 for an interactive request and ``batch_weight`` for a batch one (1 once aged), times
   the tenant's weight. An interactive request does not wait for its cost to build up
   (``interactive_now``): it switches as soon as room can be made. Loading into free memory
   costs nothing, so an idle backend is never left idle while requests wait.
5. **Who may be evicted.** Interactive and urgent requests may take any model: one still
   serving requests is drained (no new requests until idle), then unloaded (keep_alive 0) and
   the waiting request sent. Victims are taken by eviction cost, cheapest first, until the
   model fits; then any whose going turned out not to be needed stays. Batch work evicts only
   idle models nobody waits for. Batch work that cannot be preempted (rule 6) also leaves room
   for the interactive models in use (each could still load next to the batch models that stay,
   by the backend's fit rule), so a long batch generation never locks an interactive model out;
   batch work that can be preempted may fill that room, since an interactive request would
   preempt it. Until ``last_chance`` of its bound has passed, batch work leaves alone a model
   that finished an interactive request within ``session_gap`` seconds: the next turn of a
   conversation is likely. One switch at a time per backend, as Ollama loads one model at a
   time; switches that cannot wait go first, earliest deadline first.
6. **Bounded waits.** A request that has waited half its tenant's ``max_wait`` (a batch one:
   ``batch_urgency`` of it) is urgent: its switch happens whatever its cost, and may take any
   model; at ``max_wait`` it is dropped (503 with Retry-After). Batch requests age into
   interactive ones after ``aging`` seconds. So no request waits forever: a model is drained
   within one generation, and aging and urgency outgrow any other request's claim.
   **Preemption:** draining can take minutes (a batch generation on a CPU), longer than an
   interactive bound. A batch call whose client reads the whole answer (no stream) is
   preemptible: the driver can abort it and send it again, and the client only sees it take
   longer. An interactive request with a bound whose switch needs busy models preempts their
   calls, if all are preemptible, at once when the drain would end after its urgency by the
   models' average service times, or at its urgency if the drain has not ended by then. The
   victims are chosen by eviction cost plus the work their calls would lose. A preempted call
   goes back to the head of its tenant's queue, with its time on the backend not counted
   against its bound, and may be preempted again only while it could still start within its
   bound after a reload and one more run of its model.
7. **Several backends.** A request may go to any backend that serves its model: a loaded one
   with a free slot first, in the caller's order; otherwise the switch goes where it pays
   most (ties: where the model fits best). A queue for a model that is loaded but busy
   elsewhere warms it on a second backend when its interactive requests (and batch ones aged
   into them, into free room only) would wait longer for the loaded copy than the load and the
   evictions take, at once when that backend has room; fresh batch work waits for the loaded
   copy until it is urgent.

Backends that do not load models (OpenAI-compatible servers, cloud APIs) have every model ready
and ``max_in_flight`` slots in all (unlimited when None).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

INTERACTIVE = 0
BATCH = 1
HOT = 0.5  # an interactive model is "in use" while its decaying count of arrivals is above this
UNLOAD_GRACE = 30.0  # seconds a poll may still list a model the policy unloaded


@dataclass(slots=True, frozen=True)
class BackendSpec:
    name: str
    loads_models: bool = True  # Ollama: a model must be loaded before it serves
    slots_per_model: int = 1  # OLLAMA_NUM_PARALLEL
    max_loaded: int | None = 3  # OLLAMA_MAX_LOADED_MODELS
    memory: float | None = None  # bytes it can hold; None: only max_loaded limits
    fit_fraction: float = 0.8  # Ollama loads alongside only if a model needs <= this of free memory
    # Seconds an idle model stays loaded (OLLAMA_KEEP_ALIVE); math.inf when Hearth holds models
    # (sends keep_alive -1): then only its own evictions unload them.
    keep_alive: float = 300.0
    max_in_flight: int | None = None  # all models together; None: unlimited


@dataclass(slots=True, frozen=True)
class PolicySettings:
    aging: float = 120.0  # seconds after which a batch request competes as interactive
    batch_weight: float = 0.25  # a batch request's waiting cost relative to an interactive one
    # Evicting a model costs its reload times the requests expected for it within this many
    # seconds (a decaying count of recent arrivals, weighted like waiting requests; at most 1).
    horizon: float = 300.0
    interactive_now: bool = True  # an interactive request switches as soon as victims are idle
    load_fixed: float = 2.0  # load time estimate before one is observed: fixed + size / bandwidth
    load_bandwidth: float = 2e9  # bytes per second
    default_size: float = 5e9  # bytes, for a model whose size no backend has reported
    memory_overhead: float = 0.1  # loaded size over file size, until /api/ps shows the real one
    # A bounded batch request is urgent (switches whatever it costs) after this share of its
    # bound; an interactive one after half.
    batch_urgency: float = 0.6
    # Batch work leaves alone a model that finished an interactive request this recently (the
    # next turn of a conversation is likely), until ``last_chance`` of its own bound has passed.
    session_gap: float = 60.0
    last_chance: float = 0.85
    preempt: bool = True  # an interactive request may abort batch calls that can be sent again


@dataclass(eq=False, slots=True)
class Job:
    """One request waiting for (then holding) a backend slot."""

    tenant: str
    model: str
    backends: tuple[str, ...]  # where it may run, in the caller's order of preference
    arrived: float
    priority: int = INTERACTIVE
    weight: float = 1.0
    max_wait: float | None = None
    cost: float = 1.0  # estimated tokens, charged to the tenant's virtual time
    tag: Any = None  # the driver's own
    # The driver may abort it while it runs and send it again later (a batch call whose client
    # gets nothing before the end: no stream).
    preemptible: bool = False
    # What the call asks the backend to keep its model loaded for once idle, in seconds (an
    # Ollama keep_alive; negative: forever); None: the backend's default.
    keep_alive: float | None = None
    # Set by the policy.
    seq: int = 0
    position: int = 0  # its place in the queue for its model when it arrived (1: next); 0: not queued
    backend: str | None = None
    granted_at: float | None = None
    unload: tuple[str, ...] = ()  # models to unload on `backend` before sending this request
    loads: bool = False  # this request makes the backend load its model
    started: bool = False
    dropped: str | None = None
    preempted: int = 0  # times it was aborted and queued again


@dataclass(slots=True)
class _Runner:
    model: str
    size: float
    loading: bool = False  # granted a load; no first byte yet
    last_used: float = 0.0
    draining: bool = False
    jobs: list[Job] = field(default_factory=list)  # in flight here
    # Seconds it stays loaded once idle, as the last request sent to it asked (Ollama: the last
    # one wins); math.inf: forever; None: the backend's default.
    keep_alive: float | None = None
    # When the backend said it unloads this idle model (/api/ps expires_at; math.inf: never):
    # it knows keep_alives Hearth did not send (OLLAMA_KEEP_ALIVE, other clients). None: count
    # keep_alive from last_used. Hearth's next use of the runner makes it stale.
    expires: float | None = None

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    def touch(self, now: float) -> None:
        """Hearth used it: its idle time, and the backend's expiry, start again."""
        self.last_used = now
        self.expires = None


@dataclass(slots=True)
class _Backend:
    spec: BackendSpec
    up: bool = True
    sizes: dict[str, float] = field(default_factory=dict)  # model -> file bytes (/api/tags)
    memory: dict[str, float] = field(default_factory=dict)  # model -> bytes once loaded (/api/ps)
    runners: dict[str, _Runner] = field(default_factory=dict)
    in_flight: int = 0
    switching: str | None = None  # a model being loaded (granted, no first byte yet)
    switch_ends: float = 0.0  # when that load should be done, by the estimate
    loads: int = 0  # switches started here
    # Models this policy evicted (-> when): a poll taken before the unload landed still lists
    # them, and must not bring them back.
    unloading: dict[str, float] = field(default_factory=dict)
    preemptions: int = 0  # calls stopped here to be sent again

    def used(self) -> float:
        return sum(r.size for r in self.runners.values())

    def has_room(self) -> bool:
        cap = self.spec.max_in_flight
        return cap is None or self.in_flight < cap


class Policy:
    """See the module docstring. ``on_grant(job)`` and ``on_drop(job)`` are called from inside
    ``submit``/``finish``/``pump``...; the driver then sends or fails the request.
    ``on_preempt(job, backend)``: the driver must stop that call, which waits for its next grant."""

    def __init__(
        self,
        backends: Iterable[BackendSpec],
        settings: PolicySettings,
        on_grant: Callable[[Job], None],
        on_drop: Callable[[Job], None],
        on_preempt: Callable[[Job, str], None] | None = None,
    ) -> None:
        self.settings = settings
        self._backends = {b.name: _Backend(b) for b in backends}
        self._on_grant = on_grant
        self._on_drop = on_drop
        self._on_preempt = on_preempt
        self._queues: dict[str, dict[str, deque[Job]]] = {}  # model -> tenant -> FIFO
        self._waiting: dict[str, int] = {}  # model -> count
        self._by_tenant: dict[str, int] = {}  # tenant -> count waiting
        self._finish_tag: dict[str, float] = {}  # tenant -> virtual finish time of its last grant
        self._vtime = 0.0
        self._load_est: dict[tuple[str, str], float] = {}
        self._arrivals: dict[str, tuple[float, float]] = {}  # model -> (decaying count, as of)
        self._interactive: dict[str, tuple[float, float]] = {}  # the same, interactive requests only
        self._service_est: dict[str, float] = {}  # model -> moving average of grant-to-end seconds
        self._served: dict[str, float] = {}  # model -> when it last finished an interactive request
        self._seq = itertools.count(1)
        self._pumping = False
        self._switch_due: list[float] = []  # when a waiting cost will reach its switch cost
        self.loads = 0
        self.grants = 0
        self.dropped = 0
        self.preemptions = 0

    # ---- the driver's calls ---------------------------------------------------------------

    def observe(
        self,
        backend: str,
        now: float,
        up: bool,
        sizes: Mapping[str, float],
        loaded: Mapping[str, float],
        expires: Mapping[str, float] | None = None,
    ) -> None:
        """What a poll of the backend found: served models with sizes, loaded models with sizes,
        and in ``expires`` the seconds until the backend unloads each loaded model if it stays
        idle (math.inf: never). Ollama sets that time when a model goes idle, so one not in the
        future means the model is in use by a client that does not go through Hearth (or still
        loading): it counts as just used."""
        b = self._backends[backend]
        b.up = up
        if up:
            b.sizes = dict(sizes)
            for model in list(b.unloading):
                if model not in loaded or now - b.unloading[model] >= UNLOAD_GRACE:
                    del b.unloading[model]  # gone; or the unload failed: believe the backend
            for model, size in loaded.items():
                if size:
                    b.memory[model] = size
                if model in b.unloading:
                    continue
                r = b.runners.get(model)
                if r is None:
                    r = b.runners[model] = _Runner(model, size, last_used=now)
                elif size:
                    r.size = size
                left = None if expires is None else expires.get(model)
                if left is not None and r.in_flight == 0 and not r.loading:
                    if left > 0:
                        r.expires = now + left
                    else:
                        r.touch(now)
            for model in list(b.runners):
                r = b.runners[model]
                if model not in loaded and r.in_flight == 0 and not r.loading:
                    del b.runners[model]  # unloaded behind our back (keep_alive, another client)
        self.pump(now)

    def submit(self, job: Job, now: float) -> None:
        """Queue a request, or grant it at once when its model has a free slot and nobody waits."""
        job.seq = next(self._seq)
        job.arrived = now
        self._note_arrival(job, now)
        ahead = self._waiting.get(job.model, 0)
        if ahead == 0:
            for name in job.backends:
                b = self._backends.get(name)
                if b is not None and b.up and b.has_room():
                    r = self._runner(b, job.model, now)
                    if r is not None and not r.draining and r.in_flight < b.spec.slots_per_model:
                        self._grant(job, b, r, now)
                        return
        job.position = ahead + 1
        self._enqueue(job)
        self.pump(now)

    def cancel(self, job: Job, now: float) -> None:
        """The client left while waiting."""
        if job.backend is None and self._remove(job):
            self.pump(now)

    def started(self, job: Job, now: float) -> None:
        """The first byte came back: the model is loaded."""
        if job.started or job.backend is None:
            return
        job.started = True
        if job.loads:
            b = self._backends[job.backend]
            r = b.runners.get(job.model)
            if r is not None:
                r.loading = False
            if b.switching == job.model:
                b.switching = None
            self.pump(now)

    def finish(self, job: Job, now: float, ok: bool = True, load_seconds: float | None = None) -> None:
        """The request ended (or failed, or its client left): its slot is free. ``load_seconds``:
        the load time the backend reported (Ollama's load_duration), if this request loaded."""
        if job.backend is None:
            return
        b = self._backends[job.backend]
        if job.loads and load_seconds is not None and load_seconds > 0:
            key = (b.spec.name, job.model)
            old = self._load_est.get(key)
            self._load_est[key] = load_seconds if old is None else 0.5 * old + 0.5 * load_seconds
        r = b.runners.get(job.model)
        b.in_flight -= 1
        if job.priority == INTERACTIVE:
            self._served[job.model] = now
        if ok and job.granted_at is not None:
            took = now - job.granted_at
            old = self._service_est.get(job.model)
            self._service_est[job.model] = took if old is None else 0.8 * old + 0.2 * took
        if r is not None:
            if job in r.jobs:
                r.jobs.remove(job)
            r.touch(now)
            if job.loads and not job.started:
                # The load did not complete: the model may not be there.
                r.loading = False
                if not ok and r.in_flight == 0:
                    del b.runners[job.model]
        if b.switching == job.model and not job.started:
            b.switching = None
        self.pump(now)

    def loads_by_backend(self) -> dict[str, int]:
        return {name: b.loads for name, b in self._backends.items()}

    def preemptions_by_backend(self) -> dict[str, int]:
        return {name: b.preemptions for name, b in self._backends.items()}

    def waiting_by_model(self) -> dict[str, int]:
        return dict(self._waiting)

    def waiting_by_backend(self) -> dict[str, int]:
        """Requests waiting that may run on each backend (one that may go to two counts at both)."""
        out = dict.fromkeys(self._backends, 0)
        for tenants in self._queues.values():
            for q in tenants.values():
                for j in q:
                    for name in j.backends:
                        if name in out:
                            out[name] += 1
        return out

    def expected_wait(self, model: str, backends: Iterable[str]) -> float:
        """A rough wait for a new request for ``model``, for Retry-After: the queue ahead of it
        over the slots that serve it, at the model's average service time, plus a load if it is
        loaded nowhere."""
        slots = 0
        load = math.inf
        for name in backends:
            b = self._backends.get(name)
            if b is None or not b.up:
                continue
            if model in b.runners or not b.spec.loads_models:
                slots += min(b.spec.slots_per_model, b.spec.max_in_flight or b.spec.slots_per_model)
            else:
                load = min(load, self.load_estimate(name, model))
        service = self._service_est.get(model, 10.0)
        ahead = self._waiting.get(model, 0)
        if slots:
            return service * (ahead / slots + 1)
        return (0.0 if load == math.inf else load) + service * (ahead + 1)

    def forget(self, backend: str, model: str, now: float) -> None:
        """The model was unloaded on the backend by someone else (a client's keep_alive 0)."""
        b = self._backends.get(backend)
        r = b.runners.get(model) if b is not None else None
        if b is not None and r is not None and r.in_flight == 0 and not r.loading:
            del b.runners[model]
            self.pump(now)

    def waiting(self, tenant: str | None = None) -> int:
        if tenant is None:
            return sum(self._waiting.values())
        return self._by_tenant.get(tenant, 0)

    def load_estimate(self, backend: str, model: str) -> float:
        est = self._load_est.get((backend, model))
        if est is not None:
            return est
        s = self.settings
        return s.load_fixed + self._size(self._backends[backend], model) / s.load_bandwidth

    def next_deadline(self, now: float) -> float | None:
        """When pump() must run again although nothing happened: a bound, an urgency, a last
        chance, an aging or a switch coming due, a loaded model's keep_alive running out, an
        interactive model cooling or a conversation's gap ending."""
        if not self._waiting:
            return None
        times: list[float] = []
        s = self.settings
        for tenants in self._queues.values():
            for q in tenants.values():
                for j in q:
                    if j.max_wait is not None:
                        times.append(self._urgent_at(j))
                        times.append(self._last_chance(j))
                        times.append(j.arrived + j.max_wait)
                    if j.priority == BATCH:
                        times.append(j.arrived + s.aging)
        for b in self._backends.values():
            if b.switching is not None:
                times.append(b.switch_ends)
            for r in b.runners.values():
                if r.in_flight == 0 and b.spec.loads_models and math.isfinite(_unloads_at(b, r)):
                    times.append(_unloads_at(b, r))
        times.extend(self._switch_due)
        times.extend(t + s.session_gap for t in self._served.values())
        for value, then in self._interactive.values():
            if value > HOT:  # when it stops being "in use", batch work may take its room
                # (a microsecond later: at the very instant, rounding may leave it at HOT)
                times.append(then + s.horizon * math.log(value / HOT) + 1e-6)
        future = [t for t in times if t > now]
        return min(future) if future else None

    def snapshot(self, now: float) -> dict[str, Any]:
        """Backends and queues as the admin API shows them; queue positions in grant order."""
        waiting = []
        for model, tenants in self._queues.items():
            jobs = sorted((j for q in tenants.values() for j in q), key=lambda j: self._order(j, now))
            for pos, j in enumerate(jobs, 1):
                waiting.append(
                    {
                        "tenant": j.tenant,
                        "model": model,
                        "position": pos,
                        "priority": "interactive" if j.priority == INTERACTIVE else "batch",
                        "aged": j.priority == BATCH and now - j.arrived >= self.settings.aging,
                        "waited_s": round(now - j.arrived, 3),
                        "max_wait_s": j.max_wait,
                    }
                )
        backends = []
        for b in self._backends.values():
            backends.append(
                {
                    "name": b.spec.name,
                    "up": b.up,
                    "in_flight": b.in_flight,
                    "loads": b.loads,
                    "preemptions": b.preemptions,
                    "switching_to": b.switching,
                    "slots_per_model": b.spec.slots_per_model,
                    "models": [
                        {
                            "model": r.model,
                            "in_flight": r.in_flight,
                            "loading": r.loading,
                            "draining": r.draining,
                            "size": r.size,
                            "idle_s": None if r.in_flight else round(now - r.last_used, 3),
                            # How long it stays once idle, as its last request asked; -1: forever.
                            "keep_alive_s": -1 if math.isinf(_kept(b, r)) else _kept(b, r),
                            # Seconds until the backend unloads it, if it stays idle; -1: never.
                            "unloads_in_s": _unloads_in(b, r, now),
                        }
                        for r in b.runners.values()
                    ],
                }
            )
        return {
            "waiting": waiting,
            "backends": backends,
            "loads": self.loads,
            "grants": self.grants,
            "dropped": self.dropped,
            "preemptions": self.preemptions,
        }

    # ---- the policy -------------------------------------------------------------------------

    def pump(self, now: float) -> None:
        """Apply the policy until nothing more can be granted."""
        if self._pumping or not self._waiting:
            return  # a callback re-entered (the running pump loops again), or nobody waits
        self._pumping = True
        try:
            self._drop_expired(now)
            self._switch_due = []
            progress = True
            while progress:
                progress = self._fill_slots(now) | self._switch(now)
        finally:
            self._pumping = False

    def _drop_expired(self, now: float) -> None:
        for b in self._backends.values():
            if b.switching is not None and now >= b.switch_ends:
                # Loaded by now, by the estimate: the first byte may wait on a long prompt (or,
                # without streaming, the whole answer), but the backend can take the next switch.
                r = b.runners.get(b.switching)
                if r is not None:
                    r.loading = False
                b.switching = None
            if b.spec.loads_models:
                for r in [r for r in b.runners.values() if r.in_flight == 0 and not r.loading]:
                    if now >= _unloads_at(b, r):
                        del b.runners[r.model]  # the backend unloads idle models after keep_alive
        for tenants in list(self._queues.values()):
            for q in list(tenants.values()):
                for j in [j for j in q if j.max_wait is not None and now - j.arrived >= j.max_wait]:
                    self._remove(j)
                    j.dropped = "timeout"
                    self.dropped += 1
                    self._on_drop(j)
        for tenants in list(self._queues.values()):
            for q in list(tenants.values()):
                for j in [j for j in q if not any(self._usable(n) for n in j.backends)]:
                    self._remove(j)
                    j.dropped = "no backend"
                    self.dropped += 1
                    self._on_drop(j)

    def _usable(self, name: str) -> bool:
        b = self._backends.get(name)
        return b is not None and b.up

    def _fill_slots(self, now: float) -> bool:
        progress = False
        for b in self._backends.values():
            if not b.up:
                continue
            name = b.spec.name
            models = list(b.runners) if b.spec.loads_models else list(self._queues)
            for model in models:
                r = b.runners.get(model)
                if r is not None and r.draining:
                    continue
                while b.has_room() and self._waiting.get(model):
                    if r is not None and r.in_flight >= b.spec.slots_per_model:
                        break
                    job = self._pick(model, name, now)
                    if job is None:
                        break
                    if r is None:  # a backend with every model ready
                        r = b.runners[model] = _Runner(model, 0.0, last_used=now)
                    self._remove(job)
                    self._grant(job, b, r, now)
                    progress = True
        return progress

    def _switch(self, now: float) -> bool:
        """Start the switch that pays most, or drain the models it needs evicted first."""
        cands: list[tuple[tuple[bool, float, float, float], str, str, list[_Runner], bool]] = []
        for model, count in self._waiting.items():
            if not count:
                continue
            jobs = [j for q in self._queues[model].values() for j in q]
            for name in dict.fromkeys(n for j in jobs for n in j.backends):
                b = self._backends.get(name)
                if b is None or not b.up or not b.spec.loads_models or b.switching is not None:
                    continue
                if model in b.runners or (b.sizes and model not in b.sizes):
                    continue
                counted = [j for j in jobs if name in j.backends]
                urgent = any(now >= self._urgent_at(j) for j in counted)
                # Aged batch work without a bound of its own counts as interactive here too: aging
                # is its only guarantee against starvation. Bounded work has urgency instead.
                interactive = any(
                    j.priority == INTERACTIVE or (j.max_wait is None and self._class(j, now) == INTERACTIVE)
                    for j in counted
                )
                chosen = self._choose_victims(b, model, counted, now, urgent, interactive)
                if chosen is None:
                    continue
                victims, preempt = chosen
                load = self.load_estimate(name, model)
                wsum = sum(self._w(j, now) for j in counted)
                pressure = sum(self._w(j, now) * (now - j.arrived + load) for j in counted)
                cost = sum(self._evict_cost(b, v, now) for v in victims)
                # An interactive request does not wait for its cost to build up, unless its model
                # is loaded on another backend: then it waits for that slot, or for warming a
                # second copy to pay.
                copies = [
                    o
                    for o in self._backends.values()
                    if o is not b and o.up and model in o.runners and not o.runners[model].draining
                ]
                # Slots of loaded copies every waiting request may use (a retry excludes the
                # backend that refused it: for that request there is no other copy).
                usable = all(any(o.spec.name in j.backends for o in copies) for j in counted)
                elsewhere = sum(o.spec.slots_per_model for o in copies) if usable else 0
                forced = urgent or (interactive and self.settings.interactive_now and not elsewhere)
                if not forced and pressure < cost:
                    self._switch_due.append(now + (cost - pressure) / wsum)
                    continue
                if elsewhere and not urgent:
                    # A second copy pays only if the requests served first (interactive ones,
                    # and batch work aged into them) would wait longer for the copy that is
                    # loaded than the load and the evictions take. Fresh batch work waits for
                    # the loaded copy until it is urgent: a copy for it would cost a load and
                    # the memory it holds, to save waits that its bound allows. Aged batch work
                    # warms a copy only into free room: evicting a model for it trades that
                    # model's reload for a wait its bound allows.
                    first = sum(
                        1
                        for j in counted
                        if self._class(j, now) == INTERACTIVE and (j.priority == INTERACTIVE or not cost)
                    )
                    backlog = first / elsewhere * self._service_est.get(model, 10.0)
                    if not first or backlog < load + cost:
                        continue
                leftover = self._free(b) - self._size(b, model)
                # Switches that cannot wait go first, earliest deadline first; then the one that
                # pays most.
                deadline = min(
                    (j.arrived + j.max_wait for j in counted if j.max_wait is not None), default=math.inf
                )
                key = (forced, -deadline if forced else 0.0, pressure - cost, -leftover)
                cands.append((key, name, model, victims, preempt))
        for b in self._backends.values():
            for r in b.runners.values():
                r.draining = False
        cands.sort(key=lambda c: c[0], reverse=True)
        taken_backends: set[str] = set()
        taken_models: set[str] = set()
        for _, name, model, victims, preempt in cands:
            if name in taken_backends or model in taken_models:
                continue
            taken_backends.add(name)
            taken_models.add(model)
            b = self._backends[name]
            if any(v.in_flight > 0 for v in victims):
                if not preempt:
                    for v in victims:
                        v.draining = True  # no new requests until all are idle, then the switch
                    continue
                for v in victims:
                    for j in list(v.jobs):
                        self._preempt(j, b, v, now)
            job = self._pick(model, name, now)
            if job is None:
                continue
            self._remove(job)
            for v in victims:
                del b.runners[v.model]
                b.unloading[v.model] = now
            b.unloading.pop(model, None)
            job.unload = tuple(v.model for v in victims)
            r = _Runner(model, self._size(b, model), loading=True, last_used=now)
            b.runners[model] = r
            b.switching = model
            b.switch_ends = now + self.load_estimate(name, model)
            job.loads = True
            self.loads += 1
            b.loads += 1
            self._grant(job, b, r, now)
            return True  # the picture changed: weigh the rest again
        return False

    def _choose_victims(
        self, b: _Backend, model: str, jobs: list[Job], now: float, urgent: bool, interactive: bool
    ) -> tuple[list[_Runner], bool] | None:
        """What must go for ``model`` to load on ``b`` for ``jobs`` (rule 5), and whether the
        calls running there are to be preempted rather than drained (rule 6); None: nothing can.

        Only an interactive or urgent request may take a model others wait for or still use.
        Batch work that cannot be preempted keeps room for the interactive models in use; batch
        work that can need not: an interactive request would preempt it. Until its last chance,
        batch work leaves alone a model that finished an interactive request within
        ``session_gap``: the next turn of a conversation is likely."""
        fills = self.settings.preempt and all(j.preemptible for j in jobs)
        keep: set[str] = set()
        if not interactive and not any(now >= self._last_chance(j) for j in jobs):
            gap = self.settings.session_gap
            keep = {m for m, t in self._served.items() if now - t < gap}
        protect = not (interactive or urgent) and not fills
        victims = self._victims(b, model, now, urgent or interactive, protect=protect, keep=keep)
        if victims is None or not any(v.in_flight for v in victims):
            return None if victims is None else (victims, False)
        # An interactive request with a bound does not wait for batch work to drain past half of
        # it: it preempts at once if the drain would end too late by the estimates, else at half
        # its bound if the drain has not ended by then.
        bounded = [j for j in jobs if j.priority == INTERACTIVE and j.max_wait is not None]
        if not bounded:
            return victims, False
        drained = now + max(self._remaining(v, now) for v in victims) + self.load_estimate(b.spec.name, model)
        if all(drained <= self._urgent_at(j) and now < self._urgent_at(j) for j in bounded):
            return victims, False
        rescue = self._victims(b, model, now, True, protect=False, preempt=True)
        return (victims, False) if rescue is None else (rescue, True)

    def _victims(
        self,
        b: _Backend,
        model: str,
        now: float,
        may_take: bool,
        protect: bool,
        preempt: bool = False,
        keep: set[str] | frozenset[str] = frozenset(),
    ) -> list[_Runner] | None:
        """The cheapest loaded models to evict so that ``model`` fits, or None if it cannot:
        taken cheapest first until it fits, then any that need not go are kept.
        Without ``may_take`` only idle models nobody waits for are candidates. With ``protect``
        (batch switches), enough must go that each interactive model in use could still load
        next to the batch models left: a long batch generation never keeps it out. With
        ``preempt``, only models that are idle or serve nothing but preemptible calls."""
        spec = b.spec
        size = self._size(b, model)

        def key(r: _Runner) -> tuple[float, int, float]:
            cost = self._evict_cost(b, r, now) + (self._ran(r, now) if preempt else 0.0)  # and lost runs
            return (cost, r.in_flight, r.last_used)

        order = sorted(
            (
                r
                for r in b.runners.values()
                if not r.loading
                and r.model not in keep
                and (may_take or (r.in_flight == 0 and not self._waiting.get(r.model)))
                and (not preempt or all(self._preemptible(b, j, now) for j in r.jobs))
            ),
            key=key,
        )
        hot = self._hot_interactive(b, now) - {model} if protect else set()

        def room(victims: list[_Runner]) -> bool:
            count = len(b.runners) - len(victims)
            used = b.used() - sum(r.size for r in victims)
            fits_count = spec.max_loaded is None or count < spec.max_loaded
            fits_mem = spec.memory is None or count == 0 or size <= spec.fit_fraction * (spec.memory - used)
            return fits_count and fits_mem and (not hot or self._room_for(b, model, victims, hot))

        for n in range(len(order) + 1):
            victims = order[:n]
            if room(victims):
                # Taken cheapest first, an early victim may have freed too little to matter once
                # a later one goes (a small model, then the big one): keep it, dearest first.
                for r in sorted(victims[:-1], key=key, reverse=True):
                    if room([v for v in victims if v is not r]):
                        victims.remove(r)
                return victims
        return None

    def _last_chance(self, job: Job) -> float:
        return math.inf if job.max_wait is None else job.arrived + job.max_wait * self.settings.last_chance

    def _urgent_at(self, job: Job) -> float:
        """When a bounded request's switch happens whatever it costs (never for an unbounded one)."""
        if job.max_wait is None:
            return math.inf
        share = 0.5 if job.priority == INTERACTIVE else self.settings.batch_urgency
        return job.arrived + job.max_wait * share

    @staticmethod
    def _ran(r: _Runner, now: float) -> float:
        """Seconds of work its calls have done: what preempting them throws away."""
        return sum(now - (j.granted_at or now) for j in r.jobs)

    def _remaining(self, r: _Runner, now: float) -> float:
        """When the runner's calls should end, by the model's average service time (never, while
        none has been seen: an interactive request does not bet its bound on a guess)."""
        est = self._service_est.get(r.model, math.inf)
        return max((est - (now - (j.granted_at or now)) for j in r.jobs), default=0.0)

    def _preemptible(self, b: _Backend, job: Job, now: float) -> bool:
        """A batch call not yet answering may be aborted if it can still start within its bound
        after a reload and one more run of its model ahead of it (once, if it has no bound)."""
        if not self.settings.preempt or not job.preemptible or job.started or job.priority != BATCH:
            return False
        if job.max_wait is None:
            return not job.preempted
        again = self.load_estimate(b.spec.name, job.model) + self._service_est.get(job.model, 0.0)
        return now - job.arrived + again < job.max_wait

    def _preempt(self, job: Job, b: _Backend, r: _Runner, now: float) -> None:
        """Abort a running batch call and queue it again, first of its tenant's. Its bound
        counts the time it waited here, not the time it ran."""
        assert job.granted_at is not None
        r.jobs.remove(job)
        r.touch(now)
        b.in_flight -= 1
        job.arrived += now - job.granted_at
        job.backend = job.granted_at = None
        job.unload = ()
        job.loads = False
        job.preempted += 1
        self.preemptions += 1
        b.preemptions += 1
        self._enqueue(job, first=True)
        if self._on_preempt is not None:
            self._on_preempt(job, b.spec.name)

    def _hot_interactive(self, b: _Backend, now: float) -> set[str]:
        """Models interactive requests used lately (or wait for) that this backend serves."""
        hot = {m for m in self._interactive if self._recent(self._interactive, m, now) >= HOT}
        hot.update(
            j.model
            for q in self._queues.values()
            for js in q.values()
            for j in js
            if j.priority == INTERACTIVE
        )
        return {m for m in hot if not b.sizes or m in b.sizes}

    def _room_for(self, b: _Backend, model: str, victims: list[_Runner], hot: set[str]) -> bool:
        """Whether each hot interactive model could load next to the batch models that would
        stay (``model`` included), by the backend's own fit rule, evicting only interactive ones."""
        spec = b.spec
        gone = {v.model for v in victims}
        batch = [r.model for r in b.runners.values() if r.model not in gone and r.model not in hot]
        batch.append(model)
        if spec.max_loaded is not None and len(batch) + 1 > spec.max_loaded:
            return False
        if spec.memory is None:
            return True
        free = spec.memory - sum(self._size(b, m) for m in batch)
        return all(self._size(b, m) <= spec.fit_fraction * free for m in hot)

    def _evict_cost(self, b: _Backend, r: _Runner, now: float) -> float:
        demand = sum(self._w(j, now) for j in self._jobs(r.model) if b.spec.name in j.backends)
        expected = 1.0 if r.in_flight else min(1.0, self._recent_demand(r.model, now))
        return self.load_estimate(b.spec.name, r.model) * (demand + expected)

    def _note_arrival(self, job: Job, now: float) -> None:
        self._arrivals[job.model] = (self._recent(self._arrivals, job.model, now) + self._w(job, now), now)
        if job.priority == INTERACTIVE:
            self._interactive[job.model] = (self._recent(self._interactive, job.model, now) + 1.0, now)

    def _recent_demand(self, model: str, now: float) -> float:
        return self._recent(self._arrivals, model, now)

    def _recent(self, counts: dict[str, tuple[float, float]], model: str, now: float) -> float:
        """A count of arrivals that decays by e every ``horizon`` seconds."""
        value, then = counts.get(model, (0.0, now))
        return value * math.exp((then - now) / self.settings.horizon)

    # ---- helpers ------------------------------------------------------------------------------

    def _runner(self, b: _Backend, model: str, now: float) -> _Runner | None:
        r = b.runners.get(model)
        if r is None:
            if not b.spec.loads_models:
                r = b.runners[model] = _Runner(model, 0.0, last_used=now)
        elif r.in_flight == 0 and not r.loading and now >= _unloads_at(b, r):
            del b.runners[model]  # idle past keep_alive: the backend has unloaded it
            return None
        return r

    def _grant(self, job: Job, b: _Backend, r: _Runner, now: float) -> None:
        job.backend = b.spec.name
        job.granted_at = now
        r.jobs.append(job)
        r.touch(now)
        ka = job.keep_alive
        r.keep_alive = math.inf if ka is not None and ka < 0 else ka
        b.in_flight += 1
        self.grants += 1
        start = max(self._vtime, self._finish_tag.get(job.tenant, 0.0))
        self._finish_tag[job.tenant] = start + job.cost / job.weight
        self._vtime = start
        self._on_grant(job)

    def _order(self, job: Job, now: float) -> tuple[int, float, int]:
        return (self._class(job, now), max(self._vtime, self._finish_tag.get(job.tenant, 0.0)), job.seq)

    def _class(self, job: Job, now: float) -> int:
        if job.priority == BATCH and now - job.arrived < self.settings.aging:
            return BATCH
        return INTERACTIVE

    def _w(self, job: Job, now: float) -> float:
        base = 1.0 if self._class(job, now) == INTERACTIVE else self.settings.batch_weight
        return base * job.weight

    def _pick(self, model: str, backend: str, now: float) -> Job | None:
        best: Job | None = None
        key: tuple[int, float, int] | None = None
        for q in self._queues.get(model, {}).values():
            for j in q:
                if backend in j.backends:
                    k = self._order(j, now)
                    if key is None or k < key:
                        best, key = j, k
                    break  # a tenant's own requests go in arrival order
        return best

    def _jobs(self, model: str) -> Iterable[Job]:
        for q in self._queues.get(model, {}).values():
            yield from q

    def _enqueue(self, job: Job, first: bool = False) -> None:
        """Queue ``job`` last of its tenant's requests for its model (``first``: ahead of them)."""
        q = self._queues.setdefault(job.model, {}).setdefault(job.tenant, deque())
        if first:
            q.appendleft(job)
        else:
            q.append(job)
        self._waiting[job.model] = self._waiting.get(job.model, 0) + 1
        self._by_tenant[job.tenant] = self._by_tenant.get(job.tenant, 0) + 1

    def _remove(self, job: Job) -> bool:
        tenants = self._queues.get(job.model)
        q = tenants.get(job.tenant) if tenants else None
        if q is None or job not in q:
            return False
        q.remove(job)
        if not q:
            del tenants[job.tenant]  # type: ignore[union-attr]
            if not tenants:
                del self._queues[job.model]
        self._waiting[job.model] -= 1
        if not self._waiting[job.model]:
            del self._waiting[job.model]
        self._by_tenant[job.tenant] -= 1
        if not self._by_tenant[job.tenant]:
            del self._by_tenant[job.tenant]
        return True

    def _size(self, b: _Backend, model: str) -> float:
        """Memory the model takes once loaded: as /api/ps last showed it, else its file size plus
        ``memory_overhead`` for the KV cache and buffers."""
        r = b.runners.get(model)
        if r is not None and r.size:
            return r.size
        for o in (b, *self._backends.values()):
            if o.memory.get(model):
                return o.memory[model]
        for o in (b, *self._backends.values()):
            if o.sizes.get(model):
                return o.sizes[model] * (1 + self.settings.memory_overhead)
        return self.settings.default_size

    def _free(self, b: _Backend) -> float:
        return (b.spec.memory or math.inf) - b.used()


def _kept(b: _Backend, r: _Runner) -> float:
    """Seconds ``r`` stays loaded on ``b`` once idle."""
    return b.spec.keep_alive if r.keep_alive is None else r.keep_alive


def _unloads_at(b: _Backend, r: _Runner) -> float:
    """When ``r`` unloads on ``b`` if it stays idle: when the backend said, else keep_alive after
    its last use."""
    return r.expires if r.expires is not None else r.last_used + _kept(b, r)


def _unloads_in(b: _Backend, r: _Runner, now: float) -> float | None:
    """Seconds until ``r`` unloads if it stays idle (-1: never); None while it is in use."""
    if r.in_flight or r.loading or not b.spec.loads_models:
        return None
    at = _unloads_at(b, r)
    return -1 if math.isinf(at) else round(max(0.0, at - now), 3)
