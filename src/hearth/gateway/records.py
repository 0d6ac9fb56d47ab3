"""The request log: one row per model call, written in batches off the request path.

``RequestLog.add`` only appends a tuple to a list; a background task hands the batch to the
store every ``store.flush_interval`` seconds, and a graceful shutdown flushes what is left. A
crash loses at most one flush interval of rows. For SQLite the batch is written on the event
loop (small and frequent: about 5 us a row, see store/db.py for why not a thread) and the WAL
checkpoint runs in a thread; for other databases the whole write runs in a thread. If the store
falls behind, rows beyond ``store.max_pending`` are dropped and counted rather than let memory
grow.

Token counts are peeked from the backend's own final record (Ollama's prompt_eval_count and
eval_count, OpenAI's usage). Prompts and replies are stored only for tenants with
``store_content`` on: their calls carry the request body and the reply's text
(gateway/content.py), written to ``trace_contents`` in the same batch and transaction as the
rows that point at them. Everyone else's calls hold neither.

``RequestLog.exporter``, when set (observability/otel.py), is called with each finished trace:
one attribute check per call when it is not.

When a call that reached a backend succeeded but the backend reported no counts at all (an
OpenAI-compatible stream whose client did not ask for ``include_usage``, a server that never
reports usage, Ollama's legacy ``/api/embeddings``), the row holds an estimate instead and
``tokens_estimated`` is set. The estimate costs the request path next to nothing: no reply is
parsed while it streams.

- prompt tokens: request body bytes / 4, rounded up (the JSON framing and options count too);
- completion tokens, streamed as-is (passthrough): one token per record relayed (SSE event or
  NDJSON line), less the records that carry no text: three for an OpenAI chat stream (the
  opening role record, the closing finish record, ``[DONE]``), two for a completion stream, one
  for an Ollama stream. Servers stream about one token per record;
- completion tokens, translated or whole (non-stream) replies: characters of the reply's text
  (and thinking) / 4, rounded up; embeddings: 0.

Metrics and limits see only the backend's own counts; the estimate is for the request log.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy.exc

from hearth import background
from hearth.protocol.canonical import Usage
from hearth.store.db import Store

if TYPE_CHECKING:
    from hearth.gateway.limits import Reservation
    from hearth.observability.metrics import Metrics

log = logging.getLogger("hearth.records")


class _OllamaCounts(msgspec.Struct):
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    load_duration: int | None = None  # ns


class _OpenAIUsage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _OpenAIEnvelope(msgspec.Struct):
    usage: _OpenAIUsage | None = None


_ollama_dec = msgspec.json.Decoder(_OllamaCounts)
_openai_dec = msgspec.json.Decoder(_OpenAIEnvelope)

# The estimate used when a backend reports no token counts (see the module docstring).
BYTES_PER_TOKEN = 4
# Records of a stream that carry no text: (dialect, endpoint) -> how many.
_FRAMING_RECORDS = {("openai", "chat"): 3, ("openai", "completion"): 2}


class _Message(msgspec.Struct):
    content: str | None = None
    thinking: str | None = None
    reasoning_content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None
    text: str | None = None


class _Reply(msgspec.Struct):
    """The text of a whole reply in either dialect (Ollama chat/generate, OpenAI choices)."""

    message: _Message | None = None
    response: str | None = None
    thinking: str | None = None
    choices: list[_Choice] = msgspec.field(default_factory=list)


_reply_dec = msgspec.json.Decoder(_Reply)


def estimate_tokens(chars: int) -> int:
    """Tokens in ``chars`` characters (or bytes) of text: 4 a token, rounded up."""
    return -(-chars // BYTES_PER_TOKEN)


def _message_chars(m: _Message | None) -> int:
    if m is None:
        return 0
    return len(m.content or "") + len(m.thinking or "") + len(m.reasoning_content or "")


def reply_chars(body: bytes) -> int:
    """Characters of text in a whole (non-stream) reply; the body's size if it is not one."""
    try:
        r = _reply_dec.decode(body)
    except msgspec.DecodeError:
        return len(body)
    n = _message_chars(r.message) + len(r.response or "") + len(r.thinking or "")
    for c in r.choices:
        n += _message_chars(c.message) + len(c.text or "")
    return n


def records_estimate(dialect: str, endpoint: str, records: int) -> int:
    """Completion tokens of a relayed stream of ``records`` records: one a record, less framing."""
    return max(0, records - _FRAMING_RECORDS.get((dialect, endpoint), 1))


def peek_usage(dialect: str, record: bytes) -> tuple[int | None, int | None, float | None]:
    """(prompt tokens, completion tokens, load seconds) from the last NDJSON line / SSE event /
    whole body a backend sent; the load time is Ollama's ``load_duration`` (None elsewhere)."""
    try:
        if dialect == "ollama":
            c = _ollama_dec.decode(record.rstrip().rsplit(b"\n", 1)[-1])
            load = None if c.load_duration is None else c.load_duration / 1e9
            return c.prompt_eval_count, c.eval_count, load
        for line in reversed(record.rstrip().split(b"\n")):
            line = line.strip()
            if line.startswith(b"data:"):
                line = line[5:].strip()
                if line == b"[DONE]":
                    continue
            if line.startswith(b"{"):
                u = _openai_dec.decode(line).usage
                return (u.prompt_tokens, u.completion_tokens, None) if u else (None, None, None)
    except msgspec.DecodeError:
        pass
    return None, None, None


class Trace:
    """What one call did, filled in along the way and written once at the end."""

    __slots__ = (
        "_log",
        "_t0",
        "_ts",
        "_ttft",
        "attempts",
        "backend",
        "content",
        "dialect",
        "done",
        "endpoint",
        "estimate",
        "key_id",
        "load_ms",
        "model",
        "queue_position",
        "queue_wait_ms",
        "reply_estimate",
        "reply_text",
        "request_bytes",
        "reservation",
        "served_model",
        "stream",
        "tenant",
    )

    def __init__(
        self,
        log: RequestLog,
        dialect: str,
        endpoint: str,
        model: str,
        stream: bool,
        tenant: str = "anonymous",
        key_id: str | None = None,
    ) -> None:
        self._log = log
        self.tenant = tenant
        self.key_id = key_id
        self._t0 = time.perf_counter()
        self._ts = time.time()
        self._ttft: float | None = None
        self.dialect = dialect
        self.endpoint = endpoint
        self.model = model
        self.stream = stream
        self.attempts = 0
        self.backend: str | None = None
        self.served_model: str | None = None
        self.done = False
        self.reservation: Reservation | None = None  # released with the backend's count at the end
        # For the estimate when the backend reports no counts: the request body's size, and the
        # completion tokens the relaying code estimated from what it sent on.
        self.request_bytes = 0
        self.reply_estimate = 0
        self.estimate = 0  # tokens reserved at admission; the scheduler's cost of the request
        self.queue_position = 0  # its place in the queue when it arrived (1: next); 0: no queue
        self.queue_wait_ms = 0.0  # waiting for a scheduler slot, all attempts together
        self.load_ms: float | None = None  # the model's load before this call, as the backend said
        # Tenants with store_content only: the request body as the client sent it, and the
        # reply's text once known (None for every other call: nothing is kept or parsed).
        self.content: bytes | None = None
        self.reply_text: str | None = None

    def queued(self, position: int, waited: float) -> None:
        if not self.queue_wait_ms:
            self.queue_position = position
        self.queue_wait_ms += waited * 1000

    @property
    def ttft_ms(self) -> float | None:
        return self._ttft

    @property
    def started_at(self) -> float:
        """When the call started, epoch seconds."""
        return self._ts

    def first_byte(self) -> None:
        if self._ttft is None:
            self._ttft = (time.perf_counter() - self._t0) * 1000

    def finish(
        self,
        status: int,
        error: str | None = None,
        tokens: tuple[int | None, int | None] = (None, None),
    ) -> None:
        if self.done:
            return
        self.done = True
        if self.reservation is not None:
            if tokens == (None, None):
                # No count from the backend: charge the estimate if it ran, nothing if it never did.
                self.reservation.settle(None if status in (200, 499) else 0)
            else:
                self.reservation.settle((tokens[0] or 0) + (tokens[1] or 0))
        duration = time.perf_counter() - self._t0
        metrics = self._log.metrics
        if metrics is not None:
            metrics.observe(self, status, error, tokens, duration)
        reported = tokens
        estimated = False
        if tokens == (None, None) and status == 200 and error is None and self.backend is not None:
            # Reached a backend, succeeded, no counts: the request log gets an estimate.
            reply = 0 if self.endpoint == "embed" else self.reply_estimate
            tokens = (estimate_tokens(self.request_bytes), reply)
            estimated = True
        content = None
        if self.content is not None:
            answer = None if self.endpoint == "embed" else self.reply_text
            content = (self._ts, self.tenant, self.content.decode("utf-8", "replace"), answer)
        # In REQUEST_COLUMNS order (store/schema.py).
        self._log.add(
            (
                self._ts,
                self.dialect,
                self.endpoint,
                self.model,
                self.served_model,
                self.backend,
                status,
                self.stream,
                self.attempts,
                duration * 1000,
                self._ttft,
                tokens[0],
                tokens[1],
                error,
                self.tenant,
                self.key_id,
                self.queue_wait_ms,
                estimated,
                self.load_ms,
                None,  # content_id: set by the store when ``content`` is written
            ),
            content,
        )
        exporter = self._log.exporter
        if exporter is not None:
            exporter(self, status, error, reported, duration)

    def finish_usage(self, usage: Usage | None, status: int = 200, error: str | None = None) -> None:
        tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (None, None)
        self.finish(status, error, tokens)


# Called with (trace, status, error, the backend's token counts, seconds) as each call ends.
Exporter = Callable[["Trace", int, str | None, tuple[int | None, int | None], float], None]


class RequestLog:
    # Fold the SQLite WAL back into the database after this many rows.
    CHECKPOINT_ROWS = 20_000

    def __init__(
        self,
        store: Store | None,
        flush_interval: float,
        max_pending: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        # Prometheus counters: every call is counted there, whether or not rows are stored.
        self.metrics = metrics
        self.flush_interval = flush_interval
        self.max_pending = max_pending
        self.pending: list[tuple[Any, ...]] = []
        # (index in pending, trace_contents row) for the calls of tenants with store_content.
        self.pending_contents: list[tuple[int, tuple[Any, ...]]] = []
        self.exporter: Exporter | None = None
        self._since_checkpoint = 0
        self.dropped = 0
        self.written = 0
        self._task: asyncio.Task[None] | None = None

    def trace(
        self,
        dialect: str,
        endpoint: str,
        model: str,
        stream: bool,
        tenant: str = "anonymous",
        key_id: str | None = None,
    ) -> Trace:
        return Trace(self, dialect, endpoint, model, stream, tenant, key_id)

    def add(self, row: tuple[Any, ...], content: tuple[Any, ...] | None = None) -> None:
        """``row`` in REQUEST_COLUMNS order; ``content`` (ts, tenant, request, response) for a
        tenant with store_content."""
        if self.store is None:
            return
        if len(self.pending) >= self.max_pending:
            self.dropped += 1
            return
        if content is not None:
            self.pending_contents.append((len(self.pending), content))
        self.pending.append(row)

    async def flush(self) -> None:
        if not self.pending or self.store is None:
            return
        batch, self.pending = self.pending, []
        contents, self.pending_contents = self.pending_contents, []
        store = self.store
        try:
            if store.inline_writes:
                store.insert_requests(batch, contents)
            else:
                await asyncio.to_thread(store.insert_requests, batch, contents)
        except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error) as exc:
            self.dropped += len(batch)
            log.error("could not write %d request records: %s", len(batch), exc)
            return
        self.written += len(batch)
        self._since_checkpoint += len(batch)
        if self._since_checkpoint >= self.CHECKPOINT_ROWS:
            self._since_checkpoint = 0
            await asyncio.to_thread(store.checkpoint)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            await self.flush()

    def start(self) -> None:
        if self.store is not None:
            self._task = asyncio.create_task(self._loop(), name="hearth-request-log")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
        await self.flush()
