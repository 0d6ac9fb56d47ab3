"""Shared machinery of the fake LLM servers: a real aiohttp server on 127.0.0.1 running in its own
thread and event loop, request recording, scripted failures and observable counters."""

from __future__ import annotations

import asyncio
import json
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATE_KEY = web.RequestKey("fake_state", dict)


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it (recorded before any check or handler runs)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any | None
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fail:
    status: int
    message: str | None
    retry_after: float | None = None


@dataclass(frozen=True)
class Drop:
    pass


@dataclass(frozen=True)
class DieMidStream:
    after_chunks: int


@dataclass(frozen=True)
class ErrorMidStream:
    after_chunks: int
    message: str


Action = Fail | Drop | DieMidStream | ErrorMidStream


@dataclass
class Streamed:
    """A streamed body: ``chunks`` are written one by one (``chunk_delay`` between them). The last
    ``n_tail`` chunks are the "clean end" (final/done chunk, usage, [DONE]) that a mid-stream death
    never sends. ``error_chunk`` builds the dialect's in-band error chunk."""

    chunks: list[bytes]
    n_tail: int
    content_type: str
    error_chunk: Callable[[str], bytes] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    #: called just before the first tail chunk is sent (e.g. a pull adds its model before "success")
    on_complete: Callable[[], None] | None = None


@dataclass
class Whole:
    """A complete, non-streamed body."""

    body: bytes
    content_type: str = "application/json; charset=utf-8"
    status: int = 200


Result = web.StreamResponse | Streamed | Whole


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class FakeServer:
    """Base class: do not use directly (see FakeOllama, FakeOpenAI)."""

    #: how long stop() lets in-flight handlers finish before cancelling them (seconds)
    shutdown_timeout = 0.1

    def __init__(self) -> None:
        self.delay_first_byte: float = 0.0
        self.chunk_delay: float = 0.0
        self._cond = threading.Condition(threading.RLock())  # re-entrant: predicates may use properties
        self._requests: list[Recorded] = []
        self._script: deque[Action] = deque()
        self._in_flight = 0
        self._max_in_flight = 0
        self._cancelled = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._gate: asyncio.Event | None = None
        self._port: int | None = None
        self._start_error: BaseException | None = None
        self._bind_port = 0
        self._last_port: int | None = None
        self._active: set[asyncio.Transport] = set()  # connections with a request in progress

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int = 0) -> Self:
        """Serve on 127.0.0.1:``port`` (0 = an ephemeral port) from a background thread."""
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        self._stopping = False
        self._start_error = None
        self._bind_port = port
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"{type(self).__name__}-loop", daemon=True
        )
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start in time")
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from self._start_error
        self._last_port = self._port
        return self

    def stop(self) -> None:
        """Stop like a killed process: connections with a request in progress are aborted at once
        (clients see a reset / incomplete body), idle keep-alive connections are closed. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with self._cond:
            self._stopping = True
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None
        self._port = None

    def restart(self) -> Self:
        """stop() then start() again on the same port; state (models, script, counters) is kept."""
        port = self._last_port or 0
        self.stop()
        return self.start(port)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:
                self._start_error = exc
                ready.set()
                loop.run_until_complete(self._acleanup())
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._acleanup())
        finally:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()

    async def _astart(self) -> None:
        self._gate = asyncio.Event()
        self._gate.set()
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        self._setup_routes(app)
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=self.shutdown_timeout, access_log=None
        )
        self._runner = runner
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self._bind_port)
        await site.start()
        self._port = int(runner.addresses[0][1])

    async def _acleanup(self) -> None:
        for transport in list(self._active):
            transport.abort()
        self._active.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._port is not None

    # ------------------------------------------------------------------ recording & counters
    @property
    def requests(self) -> list[Recorded]:
        """A snapshot of every request received so far, in arrival order."""
        with self._cond:
            return list(self._requests)

    def requests_to(self, path: str, method: str | None = None) -> list[Recorded]:
        with self._cond:
            return [r for r in self._requests if r.path == path and (method is None or r.method == method)]

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def max_in_flight_seen(self) -> int:
        with self._cond:
            return self._max_in_flight

    @property
    def cancelled(self) -> int:
        with self._cond:
            return self._cancelled

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait (without polling) until ``predicate()`` is true; it is re-evaluated whenever a request
        arrives or its handler returns, a generation request starts/ends or a disconnect is seen.
        Returns False on timeout. The predicate may use the fake's properties (``in_flight``, ``models``...)."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def wait_cancelled(self, timeout: float = 5.0, count: int = 1) -> bool:
        """True once at least ``count`` client disconnects mid-response have been observed."""
        return self.wait_for(lambda: self._cancelled >= count, timeout)

    def wait_in_flight(self, count: int, timeout: float = 5.0) -> bool:
        """True once exactly ``count`` generation requests are in flight."""
        return self.wait_for(lambda: self._in_flight == count, timeout)

    def wait_requests(self, count: int, timeout: float = 5.0, path: str | None = None) -> bool:
        """True once at least ``count`` requests (to ``path`` if given) have been received."""
        return self.wait_for(
            lambda: sum(1 for r in self._requests if path is None or r.path == path) >= count, timeout
        )

    def reset(self) -> None:
        """Forget recorded requests, the script, counters, delays, and release a hold."""
        with self._cond:
            self._requests.clear()
            self._script.clear()
            self._max_in_flight = self._in_flight
            self._cancelled = 0
            self.delay_first_byte = 0.0
            self.chunk_delay = 0.0
            self._cond.notify_all()
        if self.running:
            self.release()

    # ------------------------------------------------------------------ scripting
    def fail_next(
        self, status: int, message: str | None = None, times: int = 1, *, retry_after: float | None = None
    ) -> None:
        """The next ``times`` generation requests answer ``status`` with the dialect's error body
        (``message`` or a realistic default), before any byte of body. ``retry_after`` adds a
        Retry-After header."""
        self._enqueue(Fail(status, message, retry_after), times)

    def drop_next(self, times: int = 1) -> None:
        """The next ``times`` generation requests get their TCP connection aborted without any answer."""
        self._enqueue(Drop(), times)

    def die_mid_stream_next(self, after_chunks: int = 2, times: int = 1) -> None:
        """The next generation responses send ``after_chunks`` chunks (NDJSON lines / SSE events; capped
        so the final chunk is never sent) then abort the connection. A non-streamed response sends its
        headers and half its body, then aborts."""
        self._enqueue(DieMidStream(after_chunks), times)

    def error_mid_stream_next(
        self, after_chunks: int = 2, message: str = "fake mid-stream error", times: int = 1
    ) -> None:
        """Status 200, ``after_chunks`` chunks, then the dialect's in-band error chunk and a clean end
        (Ollama: an {"error": ...} line; OpenAI: data: {"error": {...}})."""
        self._enqueue(ErrorMidStream(after_chunks, message), times)

    def clear_script(self) -> None:
        with self._cond:
            self._script.clear()

    @property
    def script_pending(self) -> int:
        with self._cond:
            return len(self._script)

    def _enqueue(self, action: Action, times: int) -> None:
        with self._cond:
            self._script.extend([action] * times)

    def hold(self) -> None:
        """Make generation requests wait (in flight, before their first byte) until ``release()``."""
        self._call_in_loop(self._gate_clear)

    def release(self) -> None:
        self._call_in_loop(self._gate_set)

    async def _gate_clear(self) -> None:
        assert self._gate is not None
        self._gate.clear()

    async def _gate_set(self) -> None:
        assert self._gate is not None
        self._gate.set()

    def _call_in_loop(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        if self._loop is None:
            raise RuntimeError(f"{type(self).__name__} is not running")
        asyncio.run_coroutine_threadsafe(fn(), self._loop).result(5)

    # ------------------------------------------------------------------ subclass hooks
    def _setup_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def _gatekeeper(self, request: web.Request) -> web.StreamResponse | None:
        """Reject a request before routing (host check, auth); None lets it through."""
        return None

    def _error(
        self, status: int, message: str | None, request: web.Request, headers: dict[str, str] | None = None
    ) -> web.Response:
        """The dialect's error response; ``message`` None means a realistic default."""
        raise NotImplementedError

    def _not_found_route(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=404, text="404 page not found")

    # ------------------------------------------------------------------ request plumbing
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        parsed: Any | None = None
        if body:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
        rec = Recorded(
            method=request.method,
            path=request.path,
            headers=_lower_headers(request),
            body=body,
            json=parsed,
            query=dict(request.query),
        )
        request[_STATE_KEY] = {"aborted": False, "counted": False, "json": parsed, "in_flight": False}
        with self._cond:
            self._requests.append(rec)
            self._cond.notify_all()
        rejected = await self._gatekeeper(request)
        if rejected is not None:
            return rejected
        transport = request.transport
        if transport is not None:
            self._active.add(transport)
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self._not_found_route(request)
        except web.HTTPMethodNotAllowed:
            return web.Response(status=405, text="405 method not allowed")
        except asyncio.CancelledError:
            self._note_cancelled(request)
            raise
        finally:
            if transport is not None:
                self._active.discard(transport)
            with self._cond:
                self._cond.notify_all()  # wake wait_for() predicates on state changed by this request

    def _note_cancelled(self, request: web.Request) -> None:
        state = request.get(_STATE_KEY)
        if state is None or state["aborted"] or state["counted"]:
            return
        with self._cond:
            if self._stopping:
                return
            state["counted"] = True
            self._cancelled += 1
            self._cond.notify_all()

    async def _parse_json(self, request: web.Request) -> tuple[Any, str | None]:
        """(parsed body, error message or None)."""
        body = await request.read()
        if not body:
            return None, "unexpected EOF"
        try:
            return json.loads(body), None
        except ValueError as exc:
            return None, f"invalid JSON in request body: {exc}"

    async def _generation(
        self, request: web.Request, produce: Callable[[web.Request], Awaitable[Result]]
    ) -> web.StreamResponse:
        """Run a generation endpoint: in-flight accounting, delay, hold, then the scripted action."""
        with self._cond:
            action = self._script.popleft() if self._script else None
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            request[_STATE_KEY]["in_flight"] = True
            self._cond.notify_all()
        try:
            if self.delay_first_byte > 0:
                await asyncio.sleep(self.delay_first_byte)
            assert self._gate is not None
            await self._gate.wait()
            if isinstance(action, Drop):
                await self._abort(request)
                return web.Response(status=500)  # never sent: the transport is gone
            if isinstance(action, Fail):
                headers = {"Retry-After": _fmt_seconds(action.retry_after)} if action.retry_after else None
                return self._error(action.status, action.message, request, headers)
            result = await produce(request)
            return await self._send(request, result, action)
        finally:
            self._leave(request)

    def _leave(self, request: web.Request) -> None:
        """End a generation request's in-flight span (once). Called just before its last byte or its
        abort, so a client that has seen the end of the response always sees the counter decremented."""
        state = request[_STATE_KEY]
        with self._cond:
            if state["in_flight"]:
                state["in_flight"] = False
                self._in_flight -= 1
                self._cond.notify_all()

    async def _send(
        self, request: web.Request, result: Result, action: Action | None = None
    ) -> web.StreamResponse:
        if isinstance(result, web.StreamResponse):
            return result
        if isinstance(result, Whole):
            if isinstance(action, DieMidStream):
                resp = web.StreamResponse(status=result.status, headers={"Content-Type": result.content_type})
                resp.content_length = len(result.body)
                try:
                    await resp.prepare(request)
                    await resp.write(result.body[: len(result.body) // 2])
                except ConnectionResetError:
                    self._note_cancelled(request)
                    return resp
                await self._abort(request)
                return resp
            return web.Response(
                body=result.body,
                status=result.status,
                content_type=None,
                headers={"Content-Type": result.content_type},
            )
        chunks = result.chunks
        body_len = len(chunks) - result.n_tail
        resp = web.StreamResponse(status=200, headers={"Content-Type": result.content_type, **result.headers})
        try:
            await resp.prepare(request)
            writer = getattr(resp, "_payload_writer", None)
            if writer is not None and hasattr(writer, "send_headers"):
                writer.send_headers()  # aiohttp defers headers to the first chunk; a stream starts now
            if isinstance(action, DieMidStream):
                to_send = chunks[: max(0, min(action.after_chunks, body_len))]
            elif isinstance(action, ErrorMidStream) and result.error_chunk is not None:
                to_send = chunks[: max(0, min(action.after_chunks, body_len))]
                to_send.append(result.error_chunk(action.message))
            else:
                to_send = chunks
            for i, chunk in enumerate(to_send):
                if i and self.chunk_delay > 0:
                    await asyncio.sleep(self.chunk_delay)
                if i == max(body_len, 0) and action is None and result.on_complete is not None:
                    result.on_complete()  # before the final chunk, so clients see the new state
                if i == len(to_send) - 1 and not isinstance(action, DieMidStream):
                    self._leave(request)
                await resp.write(chunk)
            if isinstance(action, DieMidStream):
                await self._abort(request)
                return resp
            await resp.write_eof()
        except ConnectionResetError:
            self._note_cancelled(request)
        return resp

    async def _abort(self, request: web.Request) -> None:
        """Flush what was written, then abort the TCP connection."""
        transport = request.transport
        if transport is None:
            return
        for _ in range(200):
            if transport.is_closing() or transport.get_write_buffer_size() == 0:
                break
            await asyncio.sleep(0.001)
        request[_STATE_KEY]["aborted"] = True
        self._leave(request)
        transport.abort()


def _lower_headers(request: web.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for k, v in request.headers.items():
        key = k.lower()
        headers[key] = f"{headers[key]}, {v}" if key in headers else v
    return headers


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for t in tasks:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
