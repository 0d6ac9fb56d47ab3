"""Ollama's scheduler (server/sched.go) for one server, as a state machine driven by an outside clock.

Nothing here sleeps or reads a clock: every method takes ``now`` in seconds, and the driver (the
discrete-event simulator, or the HTTP emulator in compressed time) asks ``next_timer()`` when it
must call ``advance()``. Timers that fell due before a call are processed first, each at its own
time, so the callbacks always see times in order.

The rules modelled (shared/docs/ollama-protocol.md, "The scheduler"):

1. A request for a loaded model that is not being evicted takes a reference on its runner and
   waits on the runner's FIFO semaphore of ``num_parallel`` slots. That wait is not bounded by
   ``max_queue`` and does not go through the pending queue.
2. Any other request joins the pending queue; beyond ``max_queue`` it is rejected at once
   ("server busy"). The request the scheduler is working on has left the queue, as in Ollama,
   where it has been read off the pending channel.
3. The pending queue is served strictly FIFO, one head at a time. If the head's model is loaded
   it goes to the runner (rule 1). Else if ``max_loaded_models`` are loaded, evict a victim; else
   if nothing is loaded, load (no fit check); else if the model's ``memory_gb`` exceeds
   ``fit_fraction`` of the free memory, evict a victim; else load alongside. An eviction waits
   until the victim is idle, and the whole pending queue waits with it (head-of-line blocking).
   The victim takes no new references meanwhile; then the same head is considered again.
4. Victim: runners by keep_alive ascending (forever last), then by model name; the first idle
   one, or the first one if none is idle.
5. One load at a time, taking ``server.load_seconds(model)``. The pending queue waits for it;
   requests for loaded models (rule 1) do not. When it completes, the head goes to its runner.
6. When a runner's last reference goes, it unloads at once if its keep_alive is 0, else after
   keep_alive seconds unless a request takes it first. Each request that takes a reference sets
   the runner's keep_alive (its own, or the server default): the last one wins. A negative
   keep_alive means forever (Ollama parses it as the largest duration).
7. A request that leaves before it starts leaves the pending queue or the semaphore. If it was
   the head, an eviction already under way still completes; if its load was under way, the load
   still completes and the runner is left idle with that request's keep_alive.

``unload(model)`` is what a keep_alive 0 request with an empty prompt does (``expireRunner``): the
runner's keep_alive becomes 0, so it unloads now if idle, else when its last reference goes
(unless a later request sets another keep_alive). It does nothing for a model that is not loaded,
including one being loaded.

Left out: reloads on runner option changes (the drivers send fixed options); the GPU's wait for
VRAM to free after an unload (unloading on CPU is instant); memory estimates beyond
``ModelSpec.memory_gb``; load failures and OLLAMA_LOAD_TIMEOUT.

Callbacks run synchronously inside the model's methods and must not call back into the model.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .specs import ModelSpec, ServerSpec, SimRequest

Callback = Callable[[SimRequest, float], None]


@dataclass(eq=False)
class _Runner:
    spec: ModelSpec
    keep_alive: float  # seconds, math.inf for forever; set by the last request that took a reference
    running: list[SimRequest] = field(default_factory=list)
    waiting: deque[SimRequest] = field(default_factory=deque)  # on the semaphore, FIFO
    expires_at: float | None = None  # set while idle with a finite keep_alive
    evicting: bool = False  # chosen as a victim: unloads once idle, takes no new references

    @property
    def refs(self) -> int:
        return len(self.running) + len(self.waiting)


@dataclass(eq=False)
class _Load:
    spec: ModelSpec
    done_at: float
    keep_alive: float
    req: SimRequest | None  # None once its client has left: the load completes all the same


class OllamaModel:
    """One Ollama server's scheduler. ``on_start(req, t)``: ``req`` holds a slot on its loaded
    runner from ``t`` and prompt evaluation begins (the driver calls ``finish`` when generation
    ends). ``on_reject(req, t)``: the pending queue was full. ``on_assign(req, t)``: ``req`` has
    left the scheduler with a reference on its runner (Ollama's load_duration ends here); it
    starts now or when a slot frees."""

    def __init__(
        self,
        server: ServerSpec,
        models: Mapping[str, ModelSpec],
        on_start: Callback,
        on_reject: Callback | None = None,
        *,
        on_assign: Callback | None = None,
    ) -> None:
        self.server = server
        self.models = dict(models)
        self._on_start = on_start
        self._on_reject = on_reject
        self._on_assign = on_assign
        self._runners: dict[str, _Runner] = {}
        self._queue: deque[SimRequest] = deque()  # the pending channel, capacity max_queue
        self._head: SimRequest | None = None  # read off the queue, waiting for an eviction
        self._victim: _Runner | None = None
        self._load: _Load | None = None
        self.loads = 0
        self.load_log: list[tuple[float, str]] = []  # (time the load began, model)
        self.unload_log: list[tuple[float, str]] = []

    # ------------------------------------------------------------------ driver interface
    def submit(self, req: SimRequest, now: float) -> None:
        """A request arrives."""
        if req.model not in self.models:
            raise KeyError(f"unknown model {req.model!r}")
        self._run_due(now)
        req.submitted_at = now
        runner = self._runners.get(req.model)
        if runner is not None and not runner.evicting:
            self._assign(runner, req, now)
        elif len(self._queue) >= self.server.max_queue:
            req.rejected = "server busy"
            if self._on_reject is not None:
                self._on_reject(req, now)
        else:
            self._queue.append(req)
            self._schedule(now)

    def finish(self, req: SimRequest, now: float) -> None:
        """A started request's generation ended, or its client left mid-generation."""
        self._run_due(now)
        runner = self._runners.get(req.model)
        if runner is None or req not in runner.running:
            raise ValueError(f"request {req.id} is not running")
        runner.running.remove(req)
        req.finished_at = now
        if runner.waiting:
            self._start(runner, runner.waiting.popleft(), now)
        elif not runner.running:
            self._release(runner, now)
        self._schedule(now)

    def cancel(self, req: SimRequest, now: float) -> None:
        """A request that has not started is abandoned by its client. If a timer due by ``now``
        started it, it is finished at ``now`` instead."""
        self._run_due(now)
        if req.started_at is not None:
            self.finish(req, now)
            return
        runner = self._runners.get(req.model)
        if req is self._head:
            self._head = None
        elif self._load is not None and self._load.req is req:
            self._load.req = None
        elif req in self._queue:
            self._queue.remove(req)
        elif runner is not None and req in runner.waiting:
            # A waiter means every slot is busy, so the runner stays referenced.
            runner.waiting.remove(req)
        self._schedule(now)

    def unload(self, model: str, now: float) -> None:
        """A keep_alive 0 request with an empty prompt: unload ``model`` as soon as it is idle."""
        self._run_due(now)
        runner = self._runners.get(model)
        if runner is not None:
            runner.keep_alive = 0.0
            if runner.refs == 0:
                self._unload(runner, now)
        self._schedule(now)

    def next_timer(self) -> float | None:
        """When ``advance`` must next be called (a load completes, a keep_alive expires)."""
        times = [r.expires_at for r in self._runners.values() if r.expires_at is not None]
        if self._load is not None:
            times.append(self._load.done_at)
        return min(times, default=None)

    def advance(self, now: float) -> None:
        """Process every timer due at or before ``now``."""
        self._run_due(now)

    # ------------------------------------------------------------------ introspection
    def loaded(self) -> dict[str, float]:
        """Model name -> memory_gb of the loaded models, as /api/ps lists them."""
        return {name: r.spec.memory_gb for name, r in self._runners.items()}

    def used_gb(self) -> float:
        return sum(r.spec.memory_gb for r in self._runners.values())

    @property
    def loading(self) -> str | None:
        """The model being loaded."""
        return self._load.spec.name if self._load is not None else None

    @property
    def evicting(self) -> str | None:
        """The victim the pending queue is waiting on."""
        return self._victim.spec.name if self._victim is not None else None

    def pending(self) -> list[SimRequest]:
        """Requests not yet handed to a runner, in order: the one whose load is under way or the
        head waiting for an eviction, then the queue."""
        first = [self._load.req] if self._load is not None and self._load.req is not None else []
        head = [self._head] if self._head is not None else []
        return first + head + list(self._queue)

    def running(self, model: str) -> int:
        runner = self._runners.get(model)
        return len(runner.running) if runner is not None else 0

    def waiting(self, model: str) -> int:
        """Requests holding a reference on ``model``'s runner and waiting for a slot."""
        runner = self._runners.get(model)
        return len(runner.waiting) if runner is not None else 0

    def keep_alive(self, model: str) -> float | None:
        """The loaded runner's keep_alive in seconds (math.inf: forever); None if not loaded."""
        runner = self._runners.get(model)
        return runner.keep_alive if runner is not None else None

    def expires_at(self, model: str) -> float | None:
        """When the idle runner unloads; None while it is referenced, kept forever or not loaded."""
        runner = self._runners.get(model)
        return runner.expires_at if runner is not None else None

    def unloads_in(self, model: str, now: float) -> float | None:
        """What /api/ps tells of an idle runner: seconds until it unloads (math.inf: never).
        None while it is referenced (Ollama's expiry is then stale) or not loaded."""
        runner = self._runners.get(model)
        if runner is None or runner.refs:
            return None
        return math.inf if runner.expires_at is None else runner.expires_at - now

    def prompt_seconds(self, req: SimRequest) -> float:
        return req.prompt_tokens / self.models[req.model].prompt_tokens_per_s

    def generation_seconds(self, req: SimRequest) -> float:
        """Prompt evaluation plus generation: from start to finish."""
        return self.prompt_seconds(req) + req.output_tokens / self.models[req.model].tokens_per_s

    # ------------------------------------------------------------------ the scheduler
    def _run_due(self, now: float) -> None:
        while (t := self.next_timer()) is not None and t <= now:
            expired = [r for r in self._runners.values() if r.expires_at is not None and r.expires_at <= t]
            for runner in expired:
                self._unload(runner, t)
            if self._load is not None and self._load.done_at <= t:
                self._finish_load(t)
            self._schedule(t)

    def _schedule(self, now: float) -> None:
        """Serve the pending queue (rule 3) until it is empty or waits for a load or an eviction."""
        while self._load is None and self._victim is None:
            if self._head is None:
                if not self._queue:
                    return
                self._head = self._queue.popleft()
            req = self._head
            spec = self.models[req.model]
            runner = self._runners.get(req.model)
            if runner is not None:
                self._head = None
                self._assign(runner, req, now)
            elif len(self._runners) >= max(1, self.server.max_loaded_models) or (
                self._runners and not self.server.fits(spec.memory_gb, self.used_gb())
            ):
                self._evict(now)
            else:
                self._head = None
                self._load = _Load(spec, now + self.server.load_seconds(spec), self._keep_alive(req), req)
                self.loads += 1
                self.load_log.append((now, spec.name))

    def _evict(self, now: float) -> None:
        ranked = sorted(self._runners.values(), key=lambda r: (r.keep_alive, r.spec.name))
        victim = next((r for r in ranked if r.refs == 0), ranked[0])
        if victim.refs == 0:
            self._unload(victim, now)
        else:
            victim.evicting = True
            self._victim = victim

    def _finish_load(self, now: float) -> None:
        assert self._load is not None
        load, self._load = self._load, None
        runner = _Runner(load.spec, load.keep_alive)
        self._runners[load.spec.name] = runner
        if load.req is not None:
            self._assign(runner, load.req, now)
        else:
            self._release(runner, now)

    def _assign(self, runner: _Runner, req: SimRequest, now: float) -> None:
        """``req`` takes a reference on ``runner`` and waits on its semaphore."""
        runner.expires_at = None
        runner.keep_alive = self._keep_alive(req)
        if self._on_assign is not None:
            self._on_assign(req, now)
        if len(runner.running) < self.server.num_parallel:
            self._start(runner, req, now)
        else:
            runner.waiting.append(req)

    def _start(self, runner: _Runner, req: SimRequest, now: float) -> None:
        runner.running.append(req)
        req.started_at = now
        self._on_start(req, now)

    def _release(self, runner: _Runner, now: float) -> None:
        """The last reference on ``runner`` went."""
        if runner.evicting or runner.keep_alive <= 0:
            self._unload(runner, now)
        elif math.isfinite(runner.keep_alive):
            runner.expires_at = now + runner.keep_alive

    def _unload(self, runner: _Runner, now: float) -> None:
        del self._runners[runner.spec.name]
        self.unload_log.append((now, runner.spec.name))
        if runner is self._victim:
            self._victim = None

    def _keep_alive(self, req: SimRequest) -> float:
        seconds = self.server.keep_alive_s if req.keep_alive_s is None else req.keep_alive_s
        return math.inf if seconds < 0 else seconds
