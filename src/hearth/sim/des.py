"""The discrete-event simulator: one workload trace, two ways to serve it.

``ollama``: every client sends straight to its Ollama server (tenant i to server i mod N, as
each service points its OLLAMA_BASE_URL at one box) and Ollama's FIFO scheduler decides.
``hearth``: every request goes through Hearth's scheduling policy (``gateway/policy.py``, the
code the gateway runs), which sends it to a server when it grants a slot, unloading the models
it chose to evict first, and polls the servers' loaded models every ``poll_s`` as discovery does.

Both use the same model of Ollama (``sim/ollama.py``) and report the same figures: a request's
wait runs from its arrival to the moment its prompt evaluation starts on a loaded runner. With
``server.compute_runners`` set, the requests running on a server share its compute (``_Shared``);
otherwise each runs at its model's full speed.
Events are ordered by time, then by the order they were scheduled, so a run is deterministic.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

from hearth.gateway.policy import BATCH, INTERACTIVE, BackendSpec, Job, Policy, PolicySettings
from hearth.sim.ollama import OllamaModel
from hearth.sim.report import Outcome
from hearth.sim.specs import SimRequest
from hearth.sim.workload import Arrival, Workload

GB = 1e9
POLICIES = ("ollama", "hearth")


@dataclass(slots=True)
class Result:
    policy: str
    outcomes: list[Outcome]
    loads: int


class _Clock:
    """A heap of (time, sequence, action)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(t, self.now), next(self._seq), action))

    def run(self, after_each: Callable[[], None]) -> None:
        while self._heap:
            t, _, action = heapq.heappop(self._heap)
            self.now = t
            action()
            after_each()


@dataclass(slots=True, eq=False)
class _Run:
    work: float  # solo seconds left to its end
    first: float | None  # solo seconds left to its first byte; None once it came
    on_first: Callable[[], None]
    on_done: Callable[[], None]


class _Shared:
    """One server's compute, shared by the requests running on it (``ServerSpec.compute_runners``):
    with k running, each progresses at min(1, capacity / k) of its solo speed. One timer is kept
    for the next first byte or end; a change in k re-times every run."""

    def __init__(self, clock: _Clock, capacity: float) -> None:
        self.clock = clock
        self.capacity = capacity
        self.runs: dict[int, _Run] = {}
        self.t = 0.0
        self.version = 0

    def _rate(self) -> float:
        return min(1.0, self.capacity / len(self.runs)) if self.runs else 1.0

    def _advance(self) -> None:
        done = (self.clock.now - self.t) * self._rate()
        for r in self.runs.values():
            r.work -= done
            if r.first is not None:
                r.first -= done
        self.t = self.clock.now

    def _arm(self) -> None:
        self.version += 1
        if not self.runs:
            return
        rate = self._rate()
        nearest = min(r.work if r.first is None else r.first for r in self.runs.values())  # first <= work
        self.clock.at(self.clock.now + max(0.0, nearest) / rate, functools.partial(self._fire, self.version))

    def start(
        self, key: int, work: float, first: float, on_first: Callable[[], None], on_done: Callable[[], None]
    ) -> None:
        self._advance()
        self.runs[key] = _Run(work, first, on_first, on_done)
        self._arm()

    def stop(self, key: int) -> None:
        """The run was aborted (preempted): it no longer takes a share."""
        self._advance()
        if self.runs.pop(key, None) is not None:
            self._arm()

    def _fire(self, version: int) -> None:
        if version != self.version:
            return  # re-timed since
        self._advance()
        eps = 1e-9
        firsts = [r for r in self.runs.values() if r.first is not None and r.first <= eps]
        ends = [(k, r) for k, r in self.runs.items() if r.work <= eps]
        for r in firsts:
            r.first = None
        for k, _ in ends:
            del self.runs[k]
        self._arm()
        for r in firsts:
            r.on_first()
        for _, r in ends:
            r.on_done()


class _Servers:
    """The Ollama models and their timers."""

    def __init__(
        self,
        wl: Workload,
        clock: _Clock,
        on_start: Callable[[SimRequest, float], None],
        on_reject: Callable[[SimRequest, float], None],
    ) -> None:
        self.clock = clock
        self.names = [f"ollama-{i + 1}" for i in range(wl.servers)]
        self.models = {n: OllamaModel(wl.server, wl.models, on_start, on_reject) for n in self.names}
        self._armed: dict[str, float | None] = dict.fromkeys(self.names)

    def arm(self) -> None:
        for name, m in self.models.items():
            t = m.next_timer()
            if t is not None and t != self._armed[name]:
                self._armed[name] = t
                self.clock.at(t, functools.partial(self._advance, m))

    def _advance(self, model: OllamaModel) -> None:
        model.advance(self.clock.now)

    @property
    def loads(self) -> int:
        return sum(m.loads for m in self.models.values())


def simulate(
    wl: Workload,
    policy: str,
    settings: PolicySettings | None = None,
    poll_s: float = 10.0,
    hold_models: bool = False,
) -> Result:
    """Play the trace through ``policy``. ``hold_models``: Hearth holds models (the backend
    setting): its calls carry keep_alive -1 (unless the tenant's client sends its own), and its
    policy counts on idle models staying."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
    clock = _Clock()
    outcomes: dict[int, Outcome] = {}
    servers: _Servers

    def service_s(req: SimRequest) -> float:
        return next(iter(servers.models.values())).generation_seconds(req)

    def on_start(req: SimRequest, now: float) -> None:
        outcomes[req.id].started_at = now
        model = servers.models[str(req.tags["server"])]
        job = req.tags.get("job")
        attempt = req.tags.get("attempt")
        # Hearth sees the first byte after the prompt; without streaming, only with the answer.
        streams = wl.tenants[outcomes[req.id].arrival.tenant].stream
        first_byte = model.prompt_seconds(req) if streams else model.generation_seconds(req)

        def first() -> None:
            if isinstance(job, Job) and req.tags.get("attempt") == attempt:
                pol.started(job, clock.now)

        def done() -> None:
            if req.tags.get("attempt") != attempt:
                return  # preempted: this run was aborted
            model.finish(req, clock.now)
            outcomes[req.id].finished_at = clock.now
            if isinstance(job, Job):
                assert req.submitted_at is not None
                # What Ollama reports as load_duration: queueing and loading before the start.
                pol.finish(job, clock.now, load_seconds=now - req.submitted_at if job.loads else None)

        if shared is None:
            clock.at(now + first_byte, first)
            clock.at(now + model.generation_seconds(req), done)
        else:
            shared[str(req.tags["server"])].start(
                req.id, model.generation_seconds(req), first_byte, first, done
            )

    def on_reject(req: SimRequest, now: float) -> None:
        outcomes[req.id].rejected = req.rejected or "server busy"
        job = req.tags.get("job")
        if isinstance(job, Job):
            pol.finish(job, now, ok=False)

    servers = _Servers(wl, clock, on_start, on_reject)
    capacity = wl.server.compute_runners
    shared = None if capacity is None else {name: _Shared(clock, capacity) for name in servers.names}
    tenant_names = list(wl.tenants)

    def request(i: int, a: Arrival, server: str) -> SimRequest:
        return SimRequest(i, a.model, a.prompt_tokens, a.output_tokens, tags={"server": server})

    if policy == "ollama":

        def arrive(i: int, a: Arrival) -> None:
            server = servers.names[tenant_names.index(a.tenant) % len(servers.names)]
            req = request(i, a, server)
            outcomes[i] = Outcome(a, None, None, service_s(req))
            req.keep_alive_s = wl.tenants[a.tenant].keep_alive_s
            servers.models[server].submit(req, clock.now)

        after = servers.arm
    else:
        s = wl.server
        specs = [
            BackendSpec(
                name,
                slots_per_model=s.num_parallel,
                max_loaded=s.max_loaded_models,
                memory=s.memory_gb * GB,
                fit_fraction=s.fit_fraction,
                keep_alive=math.inf if hold_models else s.keep_alive_s,
            )
            for name in servers.names
        ]

        def grant(job: Job) -> None:
            assert job.backend is not None
            model = servers.models[job.backend]
            for victim in job.unload:
                model.unload(victim, clock.now)
            req: SimRequest = job.tag
            req.tags["server"] = job.backend
            req.tags["job"] = job
            req.tags["attempt"] = job.preempted
            req.keep_alive_s = job.keep_alive  # the client's, sent on
            if hold_models and req.keep_alive_s is None:
                req.keep_alive_s = -1.0  # forever, as Ollama reads a negative keep_alive
            model.submit(req, clock.now)

        def preempt(job: Job, backend: str) -> None:
            # Hearth closes the connection: Ollama stops the generation (or drops the request
            # from its queue), and the call is sent again when the policy grants it anew.
            req: SimRequest = job.tag
            o = outcomes[req.id]
            if o.started_at is not None:
                o.lost_s += clock.now - o.started_at
            o.started_at = None
            o.preempted += 1
            req.tags["attempt"] = -1
            if shared is not None:
                shared[backend].stop(req.id)
            servers.models[backend].cancel(req, clock.now)
            req.started_at = req.finished_at = None

        def drop(job: Job) -> None:
            req: SimRequest = job.tag
            outcomes[req.id].rejected = "timed out"

        pol = Policy(specs, settings or PolicySettings(), grant, drop, preempt)
        sizes = {m.name: m.size_gb * GB for m in wl.models.values()}

        def poll() -> None:
            for name, m in servers.models.items():
                loaded = {k: v * GB for k, v in m.loaded().items()}
                expires = {k: e for k in loaded if (e := m.unloads_in(k, clock.now)) is not None}
                pol.observe(name, clock.now, True, sizes, loaded, expires)
            if len(outcomes) < len(wl.arrivals) or any(
                o.finished_at is None and o.rejected is None for o in outcomes.values()
            ):
                clock.at(clock.now + poll_s, poll)

        def arrive(i: int, a: Arrival) -> None:
            t = wl.tenants[a.tenant]
            req = request(i, a, "")
            outcomes[i] = Outcome(a, None, None, service_s(req))
            if t.max_queue is not None and pol.waiting(a.tenant) >= t.max_queue:
                outcomes[i].rejected = "queue full"
                return
            job = Job(
                a.tenant,
                a.model,
                tuple(servers.names),
                clock.now,
                priority=INTERACTIVE if a.priority == "interactive" else BATCH,
                weight=t.weight,
                max_wait=t.max_wait_s,
                cost=a.prompt_tokens + a.output_tokens,
                tag=req,
                preemptible=a.priority == "batch" and not t.stream,
                keep_alive=t.keep_alive_s,
            )
            pol.submit(job, clock.now)

        pumps: set[float] = set()

        def after() -> None:
            servers.arm()
            t = pol.next_deadline(clock.now)
            if t is not None and t not in pumps:
                pumps.add(t)
                clock.at(t, lambda: pol.pump(clock.now))

        clock.at(0.0, poll)

    for i, a in enumerate(wl.arrivals):
        clock.at(a.t, functools.partial(arrive, i, a))
    clock.run(after)
    return Result(policy, [outcomes[i] for i in range(len(wl.arrivals))], servers.loads)
