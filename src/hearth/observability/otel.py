"""OpenTelemetry export: each model call becomes one span, sent over OTLP/HTTP (protobuf) to
whatever receives it (Grafana Tempo, Jaeger, Langfuse, an OpenTelemetry Collector).

Spans follow the GenAI semantic conventions: named "{gen_ai.operation.name} {gen_ai.request.model}",
kind CLIENT, with the real start and end of the call, ``gen_ai.operation.name`` (chat,
text_completion, embeddings), ``gen_ai.provider.name`` (and the older ``gen_ai.system``) from the
backend's kind, the requested and served model, token usage, ``server.address``/``server.port``
and, on failure, ``error.type`` (the HTTP status, or ``stream_error`` for a stream that broke
after it started) with an error status. Hearth's own figures are ``hearth.*``: tenant, key id,
backend, dialect, stream, attempts, queue wait and time to first byte.

Prompts and replies go into a span only for tenants with ``store_content`` on, as the
conventions' opt-in ``gen_ai.input.messages``, ``gen_ai.system_instructions`` and
``gen_ai.output.messages`` attributes; every other span holds metadata only.

The request log calls ``export`` as each call ends (``RequestLog.exporter``): it builds the span
and hands it to a BatchSpanProcessor, whose own thread sends batches, so the request path never
waits on the network. With ``otlp.endpoint`` unset nothing here is built at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from hearth.settings import BackendSettings, OtlpSettings

if TYPE_CHECKING:
    from hearth.gateway.records import Trace

# The request log's endpoint -> gen_ai.operation.name.
OPERATIONS = {"chat": "chat", "completion": "text_completion", "embed": "embeddings"}


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else base + "/v1/traces"


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: the text ones
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": text}]}


def input_messages(raw: bytes) -> tuple[list[dict[str, Any]], str | None]:
    """(gen_ai.input.messages, gen_ai.system_instructions) of a request body, either dialect."""
    try:
        body = json.loads(raw)
    except ValueError:
        return [], None
    if not isinstance(body, dict):
        return [], None
    messages = body.get("messages")
    if isinstance(messages, list):
        out = [
            _message(str(m.get("role") or "user"), _text(m.get("content")))
            for m in messages
            if isinstance(m, dict)
        ]
        return out, None
    prompt = body.get("prompt")
    system = body.get("system")  # Ollama's generate
    if isinstance(prompt, str):
        return [_message("user", prompt)], system if isinstance(system, str) else None
    return [], None


class OtelExporter:
    def __init__(self, settings: OtlpSettings, backends: Sequence[BackendSettings]) -> None:
        assert settings.endpoint is not None
        self.provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}))
        exporter = OTLPSpanExporter(
            endpoint=traces_url(settings.endpoint), headers=dict(settings.headers), timeout=settings.timeout
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("hearth")
        # backend name -> (kind, host, port), for gen_ai.provider.name and server.*
        self._servers: dict[str, tuple[str, str | None, int | None]] = {}
        for b in backends:
            url = urlsplit(b.url)
            port = url.port or (443 if url.scheme == "https" else 80)
            self._servers[b.name] = (b.kind, url.hostname, port)

    def export(
        self,
        trace: Trace,
        status: int,
        error: str | None,
        tokens: tuple[int | None, int | None],
        duration: float,
    ) -> None:
        """One span for a finished call (``RequestLog.exporter``)."""
        operation = OPERATIONS.get(trace.endpoint, trace.endpoint)
        kind, host, port = self._servers.get(trace.backend or "", (trace.dialect, None, None))
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": kind,
            "gen_ai.system": kind,
            "gen_ai.request.model": trace.model,
            "http.response.status_code": status,
            "hearth.tenant": trace.tenant,
            "hearth.dialect": trace.dialect,
            "hearth.stream": trace.stream,
            "hearth.attempts": trace.attempts,
            "hearth.queue_wait_ms": trace.queue_wait_ms,
        }
        if trace.served_model is not None:
            attrs["gen_ai.response.model"] = trace.served_model
        if trace.backend is not None:
            attrs["hearth.backend"] = trace.backend
        if host is not None and port is not None:
            attrs["server.address"] = host
            attrs["server.port"] = port
        if trace.key_id is not None:
            attrs["hearth.key_id"] = trace.key_id
        if trace.ttft_ms is not None:
            attrs["hearth.ttft_ms"] = trace.ttft_ms
        if trace.load_ms is not None:
            attrs["hearth.load_ms"] = trace.load_ms
        if tokens[0] is not None:
            attrs["gen_ai.usage.input_tokens"] = tokens[0]
        if tokens[1] is not None:
            attrs["gen_ai.usage.output_tokens"] = tokens[1]
        failed = status >= 400 or error is not None
        if failed:
            attrs["error.type"] = str(status) if status >= 400 else "stream_error"
        if trace.content is not None:  # the tenant opted in to stored content: spans carry it too
            messages, system = input_messages(trace.content)
            if messages:
                attrs["gen_ai.input.messages"] = json.dumps(messages, ensure_ascii=False)
            if system:
                attrs["gen_ai.system_instructions"] = json.dumps(
                    [{"type": "text", "content": system}], ensure_ascii=False
                )
            if trace.endpoint != "embed" and trace.reply_text is not None:
                reply = {
                    **_message("assistant", trace.reply_text),
                    "finish_reason": "error" if failed else "stop",
                }
                attrs["gen_ai.output.messages"] = json.dumps([reply], ensure_ascii=False)
        start = int(trace.started_at * 1e9)
        span = self.tracer.start_span(
            f"{operation} {trace.model}", kind=SpanKind.CLIENT, attributes=attrs, start_time=start
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, error or f"HTTP {status}"))
        span.end(end_time=start + int(duration * 1e9))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Send every span ended so far (blocks: call it in a thread)."""
        return self.provider.force_flush(timeout_millis)

    async def shutdown(self) -> None:
        """Send what is queued and stop the exporter's thread."""
        await asyncio.to_thread(self.provider.shutdown)
