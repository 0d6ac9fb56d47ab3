"""Ollama's native API over real HTTP, scheduled by ``OllamaModel`` in compressed time.

``EmulatedOllama`` is an aiohttp server on loopback that Hearth and the official ``ollama`` client
can talk to as to a real Ollama (``hearth sim --live``). Simulated seconds are real seconds since
``start()`` times ``speed``: at speed 100, a 5 s load takes 50 ms. The durations in replies are
simulated seconds in nanoseconds, so they read like a real server's; ``expires_at`` in /api/ps is
real wall-clock time, as a client comparing it with its own clock expects. A gateway that
learns from those durations (Hearth learns load times from load_duration) runs on real time,
so ``sim/live.py`` runs the emulator at speed 1 with specs made faster instead.

It serves GET /, /api/version, /api/tags, /api/ps, POST /api/chat and /api/generate (streamed or
not, including the empty-prompt load and keep_alive 0 unload) and GET /sim/stats. A reply has
exactly ``options.num_predict`` tokens (128 by default), sent in lines of ``chunk_s`` simulated
seconds' worth; a prompt counts one token per 4 characters.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from hearth.protocol.ollama import parse_keep_alive

from .ollama import OllamaModel
from .specs import ModelSpec, ServerSpec, SimRequest

__all__ = ["EmulatedOllama"]

VERSION = "0.12.0"
BUSY = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_NUM_PREDICT = 128
CONTEXT_LENGTH = 4096
GB = 1e9
_FOREVER_S = 2**63 / 1e9  # Go's largest duration, what Ollama keeps a keep_alive -1 model for


class EmulatedOllama:
    """One emulated Ollama server. ``start()`` and ``stop()`` run on the event loop that serves it."""

    def __init__(
        self, server: ServerSpec, models: Mapping[str, ModelSpec], speed: float = 100.0, chunk_s: float = 1.0
    ) -> None:
        if speed <= 0 or chunk_s <= 0:
            raise ValueError("speed and chunk_s must be positive")
        self.server = server
        self.models = dict(models)
        self.speed = speed
        self.chunk_s = chunk_s
        self.requests = 0
        self.rejected = 0
        # A rejection needs no callback: submit() returns with req.rejected set.
        self._model = OllamaModel(server, self.models, self._on_start, on_assign=self._on_assign)
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._t0 = 0.0  # loop time at start()
        self._wall0 = time.time()  # wall-clock time at start()
        self._last = 0.0  # the latest simulated time handed to the model: it never goes back
        self._timer: asyncio.TimerHandle | None = None
        self._modified_at = _iso_local(time.time())

    @property
    def model(self) -> OllamaModel:
        return self._model

    def stats(self) -> dict[str, object]:
        loaded = self._model.loaded()
        return {
            "loads": self._model.loads,
            "requests": self.requests,
            "rejected": self.rejected,
            "load_log": [[t, name] for t, name in self._model.load_log],
            "pending": len(self._model.pending()),
            "running": sum(self._model.running(name) for name in loaded),
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: an ephemeral port); returns the base URL."""
        if self._runner is not None:
            raise RuntimeError("already started")
        app = web.Application()
        app.router.add_get("/", self._root)
        app.router.add_get("/api/version", self._version)
        app.router.add_get("/api/tags", self._tags)
        app.router.add_get("/api/ps", self._ps)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_post("/api/generate", self._generate)
        app.router.add_get("/sim/stats", self._stats)
        # handler_cancellation: a client that hangs up cancels its handler, which frees its slot.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        self._loop = asyncio.get_running_loop()
        self._t0, self._wall0 = self._loop.time(), time.time()
        return f"http://{host}:{runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    # ------------------------------------------------------------------ clock and timers
    def _now(self, at_least: float = 0.0) -> float:
        if self._loop is not None:
            self._last = max(self._last, at_least, (self._loop.time() - self._t0) * self.speed)
        return self._last

    def _drive(self, action: Callable[[float], None]) -> None:
        """Call into the model at the current simulated time, then re-arm its timer."""
        action(self._now())
        self._arm()

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self._model.next_timer()
        if due is not None and self._loop is not None:
            self._timer = self._loop.call_at(self._t0 + due / self.speed, self._fire, due)

    def _fire(self, due: float) -> None:
        self._timer = None
        self._model.advance(self._now(at_least=due))  # the loop may wake a hair early
        self._arm()

    async def _sleep_until(self, sim_t: float) -> None:
        delay = (sim_t - self._now()) / self.speed
        if delay > 0:
            await asyncio.sleep(delay)

    # Called synchronously from inside the model: wake the handler waiting for its request.
    def _on_start(self, req: SimRequest, now: float) -> None:
        started = req.tags.get("started")
        if isinstance(started, asyncio.Future) and not started.done():
            started.set_result(now)

    def _on_assign(self, req: SimRequest, now: float) -> None:
        req.tags["assigned_at"] = now

    # ------------------------------------------------------------------ endpoints
    async def _root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _tags(self, request: web.Request) -> web.Response:
        models = [
            {
                "name": spec.name,
                "model": spec.name,
                "modified_at": self._modified_at,
                "size": round(spec.size_gb * GB),
                "digest": _digest(spec.name),
                "details": _details(spec),
            }
            for spec in self.models.values()
        ]
        return web.json_response({"models": models})

    async def _ps(self, request: web.Request) -> web.Response:
        now = self._now()
        rows: list[tuple[float, dict[str, Any]]] = []
        for name, memory_gb in self._model.loaded().items():
            expires = self._model.expires_at(name)
            if expires is None:  # in use, or kept forever: its keep_alive counts from now
                expires = now + (self._model.keep_alive(name) or 0.0)
            real_s = min(expires / self.speed, _FOREVER_S)  # since start()
            spec = self.models[name]
            entry = {
                "name": name,
                "model": name,
                "size": round(memory_gb * GB),
                "digest": _digest(name),
                "details": _details(spec),
                "expires_at": _iso_local(self._wall0 + real_s),
                "size_vram": 0,
                "context_length": CONTEXT_LENGTH,
            }
            rows.append((real_s, entry))
        rows.sort(key=lambda row: -row[0])
        return web.json_response({"models": [entry for _, entry in rows]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "invalid JSON body")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        name = body.get("model")
        if not isinstance(name, str) or not name:
            return _error(400, "model is required")
        spec = self._find(name)
        if spec is None:
            return _error(404, f"model '{name}' not found")
        try:
            keep_alive = parse_keep_alive(body.get("keep_alive"))
        except ValueError as exc:
            return _error(400, str(exc))
        text, empty = _prompt(body, chat)
        if empty and keep_alive == 0:
            self._drive(lambda now: self._model.unload(spec.name, now))
            return web.json_response(_line(name, chat, "", done_reason="unload"))

        # An empty prompt only loads the model: a request with nothing to evaluate or generate.
        prompt_tokens = 0 if empty else max(1, len(text) // 4)
        output_tokens = 0 if empty else _num_predict(body.get("options"))
        req = SimRequest(next(self._ids), spec.name, prompt_tokens, output_tokens, keep_alive_s=keep_alive)
        started: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        req.tags["started"] = started
        self.requests += 1
        try:
            self._drive(lambda now: self._model.submit(req, now))
            if req.rejected is not None:
                self.rejected += 1
                return _error(503, BUSY)
            await started
        except asyncio.CancelledError:  # the client left before its turn (cancel finishes a due start)
            self._drive(lambda now: self._model.cancel(req, now))
            raise
        try:
            if empty:
                return web.json_response(_line(name, chat, "", done_reason="load"))
            return await self._reply(request, req, name, chat, stream=body.get("stream") is not False)
        finally:  # done, or the client left mid-generation
            if req.finished_at is None:
                self._drive(lambda now: self._model.finish(req, now))

    async def _reply(
        self, request: web.Request, req: SimRequest, name: str, chat: bool, stream: bool
    ) -> web.StreamResponse:
        spec = self.models[req.model]
        assert req.submitted_at is not None
        assert req.started_at is not None
        prompt_s = self._model.prompt_seconds(req)
        eval_s = req.output_tokens / spec.tokens_per_s
        per_line = max(1, round(self.chunk_s * spec.tokens_per_s))
        response: web.StreamResponse | None = None
        if stream:
            response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await response.prepare(request)
        pieces: list[str] = []
        sent = 0
        try:
            await self._sleep_until(req.started_at + prompt_s)
            while sent < req.output_tokens:
                n = min(per_line, req.output_tokens - sent)
                sent += n
                await self._sleep_until(req.started_at + prompt_s + sent / spec.tokens_per_s)
                if response is not None:
                    await response.write(_ndjson(_line(name, chat, "tok " * n)))
                else:
                    pieces.append("tok " * n)
            assigned_at = req.tags.get("assigned_at", req.started_at)
            assert isinstance(assigned_at, float)
            durations = {
                "total_duration": _ns(self._now() - req.submitted_at),
                "load_duration": _ns(assigned_at - req.submitted_at),
                "prompt_eval_count": req.prompt_tokens,
                "prompt_eval_duration": _ns(prompt_s),
                "eval_count": req.output_tokens,
                "eval_duration": _ns(eval_s),
            }
            final = _line(
                name, chat, "".join(pieces), done_reason="stop", **{k: v for k, v in durations.items() if v}
            )
            if response is None:
                return web.json_response(final)
            await response.write(_ndjson(final))
            await response.write_eof()
        except ConnectionResetError:  # only when streaming: the client left; the caller frees the slot
            pass
        assert response is not None
        return response

    def _find(self, name: str) -> ModelSpec | None:
        """The model ``name`` refers to, with or without the implicit ``:latest`` tag."""
        for candidate in (name, f"{name}:latest", name.removesuffix(":latest")):
            if candidate in self.models:
                return self.models[candidate]
        return None


def _line(model: str, chat: bool, content: str, **final: object) -> dict[str, Any]:
    """One reply object; with ``final`` fields (done_reason, durations) it is the last one."""
    line: dict[str, Any] = {"model": model, "created_at": _created_at()}
    if chat:
        line["message"] = {"role": "assistant", "content": content}
    else:
        line["response"] = content
    line["done"] = bool(final)
    line.update(final)
    return line


def _prompt(body: dict[str, Any], chat: bool) -> tuple[str, bool]:
    """The text to evaluate, and whether the request has none (a load or unload request)."""
    if chat:
        messages = body.get("messages") or []
        text = "".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        return text, not messages
    return str(body.get("system") or "") + str(body.get("prompt") or ""), not body.get("prompt")


def _ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _num_predict(options: object) -> int:
    value = options.get("num_predict") if isinstance(options, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return DEFAULT_NUM_PREDICT  # absent, or Ollama's -1 (until done) / -2 (fill the context)


def _ns(seconds: float) -> int:
    return round(seconds * 1e9)


def _created_at() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _iso_local(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).astimezone().isoformat()


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(spec: ModelSpec) -> dict[str, Any]:
    """Plausible /api/tags details: the family from the name, the size from the tag ("8b") or the
    file size at about 0.6 bytes a parameter (Q4_K_M)."""
    base, _, tag = spec.name.rpartition("/")[2].partition(":")
    family = m.group(0) if (m := re.match(r"[a-z]+", base.lower())) else "llama"
    size = re.fullmatch(r"(\d+(?:\.\d+)?)b", tag.lower())
    params_b = float(size.group(1)) if size else spec.size_gb / 0.6
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": f"{params_b:.1f}B",
        "quantization_level": "Q4_K_M",
    }
