"""The request path for model calls: resolve the model, pick a backend, send, fail over.

For each target (the model asked for, then its fallbacks) the pool's candidates are tried in
order: loaded first, fewest in flight, local before cloud. A candidate that refuses before the
first byte (connection error, 429, 502-504, or a 404 from stale discovery) is skipped and the
next one tried, up to ``routing.max_attempts``. Once a response has started there is no retry:
a failure then becomes the dialect's in-stream error.

A batch tenant's call whose client does not stream is preemptible: the whole answer is read
here before anything goes to the client, so the scheduler may stop it for an interactive request
and have it sent again later (gateway/scheduler.py); the client only sees it take longer.

When the client's dialect is the backend's own, the request bytes go through untouched (or
re-encoded once when an alias changed the model or options) and the response bytes come back
untouched, forwarded record by record; otherwise the canonical request goes to the backend
adapter and canonical chunks come back for the api layer to encode.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any, Literal

import msgspec

from hearth.backends.base import RawResponse
from hearth.backends.pool import BackendState, Pool
from hearth.errors import BackendUnavailable, HearthError, ModelNotFound, NoBackend, UpstreamError
from hearth.gateway.auth import Principal
from hearth.gateway.content import reply_text, stream_text
from hearth.gateway.limits import Limits
from hearth.gateway.records import (
    RequestLog,
    Trace,
    estimate_tokens,
    peek_usage,
    records_estimate,
    reply_chars,
)
from hearth.gateway.router import Router, Target
from hearth.gateway.scheduler import FreeTicket, Scheduler, Ticket
from hearth.protocol.canonical import (
    ChatRequest,
    Chunk,
    CompletionRequest,
    EmbedRequest,
    EmbedResult,
    Endpoint,
)
from hearth.protocol.ollama import parse_keep_alive

log = logging.getLogger("hearth.gateway")

Dialect = Literal["ollama", "openai"]
CanonicalRequest = ChatRequest | CompletionRequest | EmbedRequest

# Ollama options that OpenAI requests carry as top-level fields, for same-dialect passthrough.
_OPENAI_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "num_predict": "max_tokens",
}


# The end of an OpenAI stream: never where the token counts are.
_SSE_DONE = (b"data: [DONE]", b"data:[DONE]")


@dataclass(slots=True)
class Call:
    """One model call as the api layer hands it over: validated, not yet routed."""

    dialect: Dialect
    endpoint: Endpoint
    path: str  # the client's path: /api/chat, /v1/chat/completions, /api/embeddings ...
    body: dict[str, Any]
    raw: bytes
    request: CanonicalRequest
    principal: Principal


class _Lease:
    """One request's hold on a backend: its scheduler slot, the in-flight count and the breaker
    outcome, settled once."""

    __slots__ = ("_done", "load_seconds", "state", "ticket")

    def __init__(self, state: BackendState, ticket: Ticket | FreeTicket) -> None:
        self.state = state
        self.ticket = ticket
        self._done = False
        self.load_seconds: float | None = None  # what the backend reported, when this call loaded
        state.in_flight += 1
        state.breaker.begin()

    def first_byte(self, trace: Trace) -> None:
        trace.first_byte()
        self.ticket.started()

    @property
    def preempted(self) -> bool:
        """The scheduler stopped this call to send it again later: its trace goes on."""
        fut = self.ticket.preempted
        return fut is not None and fut.done()

    def settle(self, ok: bool | None) -> None:
        """ok: the backend did its job; False: it failed; None: says nothing of its health
        (the client left)."""
        if self._done:
            return
        self._done = True
        self.state.in_flight -= 1
        self.ticket.release(ok is not False, self.load_seconds)
        if ok is None:
            self.state.breaker.abandon()
        elif ok:
            self.state.breaker.success()
        else:
            self.state.breaker.failure()


class Passthrough:
    """A same-dialect response: bytes forwarded as they come, whole records only."""

    def __init__(self, raw: RawResponse, lease: _Lease, trace: Trace, dialect: str, sse: bool) -> None:
        self.raw = raw
        self.backend = raw.backend
        self._lease = lease
        self._trace = trace
        self._dialect = dialect
        self._sse = sse
        self.headers = queue_headers(trace)
        self._read: bytes | HearthError | None = None  # what prefetch() got

    async def prefetch(self) -> None:
        """Read the whole answer now; read() hands it over (or raises its error) later."""
        try:
            self._read = await self.read()
        except HearthError as exc:
            self._read = exc

    async def read(self) -> bytes:
        if self._read is not None:
            if isinstance(self._read, HearthError):
                raise self._read
            return self._read
        try:
            body = await self.raw.read()
        except HearthError as exc:
            self._lease.settle(False)
            self._trace.finish(exc.status, exc.message)
            raise
        except BaseException:
            self._lease.settle(None)
            if not self._lease.preempted:
                self._trace.finish(499, "client disconnected")
            raise
        prompt, completion, load = peek_usage(self._dialect, body)
        tokens = (prompt, completion)
        self._loaded(load)
        if self._trace.content is not None:  # the tenant stores content
            self._trace.reply_text = reply_text(body)
        self._lease.first_byte(self._trace)  # before the release: the load ended first
        self._lease.settle(True)
        if tokens == (None, None):  # no counts: the request log gets an estimate
            self._trace.reply_estimate = estimate_tokens(reply_chars(body))
        self._trace.finish(200, tokens=tokens)
        return body

    def _loaded(self, load: float | None) -> None:
        """The load time the backend reported: for the trace, and for the scheduler to learn
        from when this call made it load the model."""
        if load is None:
            return
        self._trace.load_ms = load * 1000
        if self._lease.ticket.loads:
            self._lease.load_seconds = load

    async def stream(self) -> AsyncIterator[bytes]:
        """Forward upstream bytes up to the last complete record, so an error line we may have
        to append never lands inside a half-sent record."""
        seps = (b"\n\n", b"\r\n\r\n") if self._sse else (b"\n",)
        pending = b""
        last = b""  # the final records, where the backend puts its token counts
        records = 0  # relayed, for the token estimate when the backend reports no counts
        trace = self._trace
        lease = self._lease
        # What was relayed, only for a tenant that stores content (read once the stream ends).
        kept: list[bytes] | None = None if trace.content is None else []
        ok = False
        try:
            async for data in self.raw.iter_chunks():
                pending += data
                cut = max(pending.rfind(s) + len(s) if pending.rfind(s) >= 0 else 0 for s in seps)
                if cut:
                    piece, pending = pending[:cut], pending[cut:]
                    for s in seps:
                        records += piece.count(s)
                    # OpenAI's usage record may arrive a read before the [DONE] that ends it.
                    if not piece.startswith(_SSE_DONE):
                        last = piece
                    lease.first_byte(trace)
                    if kept is not None:
                        kept.append(piece)
                    yield piece
            if pending:
                if not pending.startswith(_SSE_DONE):
                    last = pending
                records += 1
                if kept is not None:
                    kept.append(pending)
                yield pending
            ok = True
        except HearthError as exc:
            self._lease.settle(False)
            if kept is not None:
                trace.reply_text = stream_text(self._dialect, b"".join(kept))
            trace.finish(200, exc.message)  # the status line had gone out already
            raise
        finally:
            self.raw.close()
            if kept is not None and not trace.done:
                trace.reply_text = stream_text(self._dialect, b"".join(kept))
            tokens: tuple[int | None, int | None] = (None, None)
            if ok:
                prompt, completion, load = peek_usage(self._dialect, last)
                tokens = (prompt, completion)
                self._loaded(load)
            self._lease.settle(True if ok else None)
            if ok:
                if tokens == (None, None):
                    trace.reply_estimate = records_estimate(self._dialect, trace.endpoint, records)
                trace.finish(200, tokens=tokens)
            else:
                trace.finish(499, "client disconnected")  # no-op after a backend error


class Translated:
    """A cross-dialect response: canonical chunks (or an embedding) for the api layer to encode."""

    def __init__(self, backend: str, model: str, lease: _Lease, trace: Trace) -> None:
        self.backend = backend
        self.model = model
        self._lease = lease
        self._trace = trace
        self.headers = queue_headers(trace)

    async def guard(self, chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
        usage = None
        chars = 0  # of reply text, for the token estimate when the backend reports no counts
        trace = self._trace
        kept: list[str] | None = None if trace.content is None else []  # store_content only
        ok = False
        try:
            async for c in chunks:
                self._lease.first_byte(trace)
                if c.usage is not None:
                    usage = c.usage
                    if usage.load_duration is not None:
                        trace.load_ms = usage.load_duration / 1e6
                        if usage.load_duration:
                            self._lease.load_seconds = usage.load_duration / 1e9
                chars += len(c.content) + len(c.thinking)
                if kept is not None:
                    kept.append(c.content)
                yield c
            ok = True
        except HearthError as exc:
            self._lease.settle(False)
            if kept is not None:
                trace.reply_text = "".join(kept)
            trace.finish(200, exc.message)
            raise
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            if kept is not None and not trace.done:
                trace.reply_text = "".join(kept)
            self._lease.settle(True if ok else None)
            if ok:
                if usage is None:
                    trace.reply_estimate = estimate_tokens(chars)
                trace.finish_usage(usage)
            elif not self._lease.preempted:
                trace.finish(499, "client disconnected")  # no-op after a backend error


@dataclass(slots=True)
class ChunkStream:
    meta: Translated
    chunks: AsyncIterator[Chunk]


@dataclass(slots=True)
class Embedding:
    backend: str
    result: EmbedResult
    headers: dict[str, str]


def queue_headers(trace: Trace) -> dict[str, str]:
    """What the client may want to know of its wait: its place in the queue for its model when
    it arrived (1: next in line; 0: it did not queue), and the milliseconds it waited."""
    return {
        "X-Hearth-Queue-Position": str(trace.queue_position),
        "X-Hearth-Queue-Wait-Ms": f"{trace.queue_wait_ms:.0f}",
    }


Outcome = Passthrough | ChunkStream | Embedding


class Gateway:
    def __init__(
        self,
        pool: Pool,
        router: Router,
        max_attempts: int,
        records: RequestLog,
        limits: Limits,
        scheduler: Scheduler,
    ) -> None:
        self.pool = pool
        self.scheduler = scheduler
        self.router = router
        self.max_attempts = max_attempts
        self.records = records
        self.limits = limits

    async def dispatch(self, call: Call) -> Outcome:
        stream = bool(getattr(call.request, "stream", False))
        who = call.principal
        trace = self.records.trace(
            call.dialect, call.endpoint.value, call.request.model, stream, who.name, who.key_id
        )
        trace.request_bytes = len(call.raw)
        if who.policy.store_content:
            trace.content = call.raw  # kept with the reply's text (gateway/content.py)
        try:
            max_tokens = call.request.options.get("num_predict")
            estimate = self.limits.estimate(
                len(call.raw), max_tokens if isinstance(max_tokens, int) else None
            )
            trace.estimate = estimate
            trace.reservation = await self.limits.admit(who, estimate)
            return await self._dispatch(call, trace)
        except HearthError as exc:
            trace.finish(exc.status, exc.message)
            raise
        except BaseException:
            trace.finish(499, "client disconnected")
            raise

    async def _dispatch(self, call: Call, trace: Trace) -> Outcome:
        targets = self.router.targets(call.request.model)
        local_only = call.principal.policy.local_only
        plan = self._plan(targets, local_only)
        if not plan:
            if not self._known(targets, local_only):
                # Discovery may be stale (a model pulled on the backend directly): look once more.
                await self.pool.refresh()
                plan = self._plan(targets, local_only)
            if not plan:
                if self._known(targets, local_only):
                    raise NoBackend(f"no backend is available for model '{call.request.model}'")
                raise ModelNotFound(call.request.model)
        if call.dialect == "ollama" and _is_unload(call.request):
            # Ollama unloads at once and generates nothing: no slot, and never a load first.
            target, state = plan[0]
            trace.attempts = 1
            trace.backend = state.name
            trace.served_model = target.model
            out = await self._try(call, target, state, trace, FreeTicket(state.name))
            self.scheduler.unloaded(state.name, target.model)
            return out
        last: HearthError | None = None
        tried: set[tuple[int, str]] = set()
        preemptible = (
            self.scheduler.settings.scheduler.preempt
            and call.principal.policy.priority == "batch"
            and not _wants_stream(call)
        )
        for i, target in enumerate(targets):
            while trace.attempts < self.max_attempts:
                names = [s.name for t, s in plan if t is target and (i, s.name) not in tried]
                if not names:
                    break
                # The scheduler picks the backend among the candidates and says when to send.
                ticket = await self.scheduler.acquire(
                    call.principal,
                    target.model,
                    names,
                    trace.estimate,
                    preemptible,
                    trace.queued,
                    _keep_alive_s(call.request, target),
                )
                trace.attempts += 1
                trace.served_model = target.model
                try:
                    while True:
                        state = self.pool.by_name[ticket.backend]
                        tried.add((i, state.name))
                        trace.backend = state.name
                        if ticket.preempted is None:
                            return await self._try(call, target, state, trace, ticket)
                        whole = await self._preemptible(call, target, state, trace, ticket)
                        if whole is not None:
                            return whole
                        ticket = await self.scheduler.resume(ticket, target.model)
                except BackendUnavailable as exc:
                    log.info("backend %s refused %s: %s", state.name, target.model, exc.message)
                    last = exc
                except UpstreamError as exc:
                    if exc.status != 404:
                        raise
                    # Stale discovery: this backend no longer has the model.
                    last = exc
                    self.pool.refresh_soon(state)
        if last is None:
            raise NoBackend(f"no backend is available for model '{call.request.model}'")
        if isinstance(last, UpstreamError) and last.status == 404:
            raise ModelNotFound(call.request.model) from last
        raise last

    def _known(self, targets: list[Target], local_only: bool) -> bool:
        """Whether any backend this caller may use lists one of the targets, up or not."""
        return any(
            s.serves(t.model) and not (local_only and s.backend.cfg.cloud)
            for t in targets
            for s in self.pool.states
        )

    def _plan(self, targets: list[Target], local_only: bool) -> list[tuple[Target, BackendState]]:
        plan = [(t, s) for t in targets for s in self.pool.candidates(t.model)]
        if local_only:
            # Health data stays in the house: no cloud backend, not even as a fallback.
            plan = [(t, s) for t, s in plan if not s.backend.cfg.cloud]
        return plan

    async def _preemptible(
        self, call: Call, target: Target, state: BackendState, trace: Trace, ticket: Ticket
    ) -> Outcome | None:
        """Send and read the whole answer, unless the scheduler preempts the call first: then
        close the connection (Ollama stops generating) and return None."""
        preempted = ticket.preempted
        assert preempted is not None
        task = asyncio.ensure_future(self._whole(call, target, state, trace, ticket))
        try:
            await asyncio.wait((task, preempted), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # the client left
            raise
        if task.done():
            if preempted.done():
                self.scheduler.abandon(ticket)  # it ended just as it was preempted
            return task.result()
        task.cancel()  # the scheduler logged the preemption
        await asyncio.wait((task,))
        return None

    async def _whole(
        self, call: Call, target: Target, state: BackendState, trace: Trace, ticket: Ticket
    ) -> Outcome:
        out = await self._try(call, target, state, trace, ticket)
        if isinstance(out, Passthrough):
            await out.prefetch()
        elif isinstance(out, ChunkStream):
            out = ChunkStream(out.meta, await _buffered(out.chunks))
        return out

    async def _try(
        self, call: Call, target: Target, state: BackendState, trace: Trace, ticket: Ticket | FreeTicket
    ) -> Outcome:
        backend = state.backend
        lease = _Lease(state, ticket)
        try:
            for model in ticket.unload:
                # The scheduler evicts these to make room for target.model: unload them first,
                # so Ollama does not pick a victim of its own.
                try:
                    await backend.unload(model)
                except HearthError as exc:
                    log.warning("unloading %s on %s failed: %s", model, state.name, exc.message)
            hold = backend.cfg.hold_models
            if backend.kind == call.dialect:
                body = self._native_body(call, target, hold)
                raw = await backend.forward("POST", backend.native_path(call.path), body)
                sse = call.dialect == "openai" and _wants_stream(call)
                return Passthrough(raw, lease, trace, call.dialect, sse)
            req = _retarget(call.request, target)
            if hold and req.keep_alive is None:
                req = replace(req, keep_alive=-1)  # loaded until the scheduler evicts it
            meta = Translated(backend.name, target.model, lease, trace)
            if isinstance(req, EmbedRequest):
                result = await backend.embed(req)
                lease.first_byte(trace)
                lease.settle(True)
                u = result.usage  # all zero: the backend reported no counts (estimated then)
                trace.finish_usage(u if u.prompt_tokens or u.completion_tokens else None)
                return Embedding(backend.name, result, queue_headers(trace))
            if isinstance(req, ChatRequest):
                chunks = await backend.chat(req)
            else:
                chunks = await backend.complete(req)
            return ChunkStream(meta, meta.guard(chunks))
        except UpstreamError as exc:
            # 429 means busy, 404 stale discovery, other 4xx the client's fault: none of these
            # make a backend unhealthy; refused connections and 5xx do.
            lease.settle(exc.status < 500 and not (isinstance(exc, BackendUnavailable) and exc.status != 429))
            raise
        except BaseException:
            lease.settle(None)  # cancelled: the client left, the backend did nothing wrong
            raise

    def _native_body(self, call: Call, target: Target, hold: bool) -> bytes:
        """The client's body for a backend of its own dialect, with the alias applied; with
        ``hold`` (an Ollama backend whose models Hearth holds), keep_alive -1 unless set."""
        hold = hold and target.keep_alive is None and call.body.get("keep_alive") is None
        if not hold and not target.changes_request and target.model == call.body.get("model"):
            return call.raw
        body = dict(call.body)
        body["model"] = target.model
        if call.dialect == "ollama":
            opts = target.options(body.get("options") if isinstance(body.get("options"), dict) else None)
            if opts:
                body["options"] = opts
            if target.keep_alive is not None:
                body["keep_alive"] = target.keep_alive
            elif hold:
                body["keep_alive"] = -1
        else:
            for name, value in target.defaults.items():
                field = _OPENAI_FIELDS.get(name)
                if field is None or field in body:
                    continue
                if field == "max_tokens" and "max_completion_tokens" in body:
                    continue
                body[field] = value
        return msgspec.json.encode(body)


def _is_unload(req: CanonicalRequest) -> bool:
    """Ollama's unload request: keep_alive 0 and nothing to generate (Open WebUI's unload)."""
    if parse_keep_alive(req.keep_alive) != 0:  # checked on decoding: it parses
        return False
    if isinstance(req, CompletionRequest):
        return not req.prompt and not req.images
    return isinstance(req, ChatRequest) and not req.messages


async def _buffered(chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """Read a stream to its end now; replay it later, ending with its error if it had one."""
    got: list[Chunk] = []
    error: HearthError | None = None
    try:
        async for c in chunks:
            got.append(c)
    except HearthError as exc:
        error = exc

    async def replay() -> AsyncIterator[Chunk]:
        for c in got:
            yield c
        if error is not None:
            raise error

    return replay()


def _wants_stream(call: Call) -> bool:
    return bool(getattr(call.request, "stream", False))


def _keep_alive_s(req: CanonicalRequest, target: Target) -> float | None:
    """The keep_alive the call will carry (an alias's, else the client's), in seconds; None
    when it carries none (the backend's default, or -1 where Hearth holds models)."""
    value = target.keep_alive if target.keep_alive is not None else req.keep_alive
    return parse_keep_alive(value)  # both were checked: the client's on decoding, an alias's on loading


def _retarget(req: CanonicalRequest, target: Target) -> CanonicalRequest:
    if not target.changes_request and target.model == req.model:
        return req
    keep_alive = target.keep_alive if target.keep_alive is not None else req.keep_alive
    return replace(req, model=target.model, options=target.options(req.options), keep_alive=keep_alive)
