"""The set of backends: health polling, discovery of served and loaded models, circuit breakers.

Each backend is polled every ``discovery.interval`` seconds (Ollama: /api/tags, /api/ps and
/api/version; OpenAI-compatible: /v1/models). A failed poll marks it down. Requests that fail
to reach a backend count against its breaker: after ``breaker.failures`` consecutive failures it
is skipped for ``breaker.cooldown`` seconds, after which one request (or a good poll) probes it.

The breaker is a few lines of state rather than a library: pybreaker and aiobreaker wrap a call
(sync or tornado), while here success and failure are known at different points of a stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import aiohttp

from hearth import background
from hearth.backends.base import Backend, LoadedModel, ModelInfo
from hearth.backends.ollama import OllamaBackend
from hearth.backends.openai_compat import OpenAIBackend
from hearth.errors import HearthError
from hearth.settings import BreakerSettings, Settings

log = logging.getLogger("hearth.pool")


def canonical_name(name: str, kind: str) -> str:
    """Ollama treats ``llama3.1`` and ``llama3.1:latest`` as one model."""
    if kind == "ollama" and ":" not in name.rsplit("/", 1)[-1]:
        return name + ":latest"
    return name


@dataclass(slots=True)
class Breaker:
    cfg: BreakerSettings
    failures: int = 0
    open_until: float = 0.0
    probing: bool = False

    @property
    def state(self) -> str:
        if self.failures < self.cfg.failures:
            return "closed"
        return "open" if time.monotonic() < self.open_until else "half-open"

    def allows(self) -> bool:
        state = self.state
        return state == "closed" or (state == "half-open" and not self.probing)

    def begin(self) -> None:
        if self.state == "half-open":
            self.probing = True

    def success(self) -> None:
        self.failures = 0
        self.probing = False

    def abandon(self) -> None:
        """The request ended without telling anything about the backend (a client left)."""
        self.probing = False

    def failure(self) -> None:
        self.failures += 1
        self.probing = False
        if self.failures >= self.cfg.failures:
            self.open_until = time.monotonic() + self.cfg.cooldown


@dataclass(slots=True)
class BackendState:
    backend: Backend
    index: int
    breaker: Breaker
    up: bool = False
    last_error: str | None = None
    last_checked: float | None = None
    version: str | None = None
    models: dict[str, ModelInfo] = field(default_factory=dict)
    loaded: dict[str, LoadedModel] = field(default_factory=dict)
    in_flight: int = 0

    @property
    def name(self) -> str:
        return self.backend.name

    def serves(self, model: str) -> bool:
        return canonical_name(model, self.backend.kind) in self.models

    def is_loaded(self, model: str) -> bool:
        return canonical_name(model, self.backend.kind) in self.loaded

    def as_json(self) -> dict[str, object]:
        cfg = self.backend.cfg
        return {
            "name": self.name,
            "kind": self.backend.kind,
            "url": cfg.url,
            "cloud": cfg.cloud,
            "up": self.up,
            "version": self.version,
            "last_error": self.last_error,
            "last_checked_ago_s": None
            if self.last_checked is None
            else round(time.monotonic() - self.last_checked, 3),
            "in_flight": self.in_flight,
            "breaker": self.breaker.state,
            "models": [{"name": m.name, "size": m.size} for m in self.models.values()],
            "loaded": [
                {
                    "name": m.name,
                    "size": m.size,
                    "size_vram": m.size_vram,
                    "expires_at": m.expires_at,
                    "context_length": m.context_length,
                }
                for m in self.loaded.values()
            ],
        }


class Pool:
    """Owns the backends and what is known about them. Built by create_app; no globals."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.states: list[BackendState] = []
        self.disabled: dict[str, str] = {}
        for i, cfg in enumerate(settings.backends):
            if not cfg.enabled:
                self.disabled[cfg.name] = cfg.disabled_reason or "disabled in config"
                log.info("backend %s disabled: %s", cfg.name, self.disabled[cfg.name])
                continue
            cls = OllamaBackend if cfg.kind == "ollama" else OpenAIBackend
            backend = cls(cfg, settings.timeouts)
            self.states.append(BackendState(backend, i, Breaker(settings.routing.breaker)))
        self.by_name = {s.name: s for s in self.states}
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Called after every poll of a backend (the scheduler reconciles what is loaded).
        self.listeners: list[Callable[[BackendState], None]] = []

    async def refresh(self, states: Iterable[BackendState] | None = None) -> None:
        await asyncio.gather(*(self._poll(s) for s in (self.states if states is None else states)))

    def refresh_soon(self, state: BackendState) -> None:
        """Re-poll one backend in the background (its model list turned out stale)."""
        task = asyncio.get_running_loop().create_task(self._poll(state))
        self._background.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._background.discard)

    async def _poll(self, state: BackendState) -> None:
        try:
            found = await state.backend.discover(self.settings.discovery.timeout)
        except (HearthError, aiohttp.ClientError, TimeoutError, ValueError, TypeError, AttributeError) as exc:
            if state.up:
                log.warning("backend %s is down: %s", state.name, exc)
            state.up = False
            state.last_error = str(exc)
        else:
            if not state.up:
                log.info("backend %s is up (%d models)", state.name, len(found.models))
            kind = state.backend.kind
            state.up = True
            state.last_error = None
            state.models = {canonical_name(m.name, kind): m for m in found.models}
            state.loaded = {canonical_name(m.name, kind): m for m in found.loaded}
            state.version = found.version or state.version
            if state.breaker.state == "half-open":
                state.breaker.success()  # a good poll is the probe
        state.last_checked = time.monotonic()
        for listener in self.listeners:
            listener(state)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.discovery.interval)
            await self.refresh()

    async def start(self, session: aiohttp.ClientSession) -> None:
        for s in self.states:
            s.backend.bind(session)
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="hearth-discovery")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None

    def candidates(self, model: str) -> list[BackendState]:
        """Backends that can take ``model`` now: loaded first, then fewest in flight, local first."""
        found = [s for s in self.states if s.up and s.serves(model) and s.breaker.allows()]
        found.sort(key=lambda s: (not s.is_loaded(model), s.backend.cfg.cloud, s.in_flight, s.index))
        return found

    def knows(self, model: str) -> bool:
        return any(s.serves(model) for s in self.states)

    def ollama_states(self) -> list[BackendState]:
        return [s for s in self.states if s.backend.kind == "ollama"]
