"""OTLP export: each call reaches a real OTLP/HTTP listener as one span with the GenAI semantic
conventions' attributes, its real start and end, and prompt and reply only for a tenant that
stores content."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import httpx
import openai
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from tests.conftest import LiveHearth, eventually, make_settings
from tests.fakes import FakeOllama, FakeOpenAI, count_words

from hearth.app import create_app
from hearth.gateway.auth import Authenticator
from hearth.store.db import Store

SECRET = "my blood pressure is 150 over 95"
USER = [{"role": "user", "content": SECRET}]


class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1: keeps every decoded export and its headers."""

    def __init__(self) -> None:
        self.exports: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _receive(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        self.exports.append(message)
        self.headers.append(dict(request.headers))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    def __enter__(self) -> Collector:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def spans(self) -> list[Span]:
        return [s for e in self.exports for rs in e.resource_spans for ss in rs.scope_spans for s in ss.spans]


def attributes(items: Any) -> dict[str, Any]:
    def value(kv: KeyValue) -> Any:
        return getattr(kv.value, kv.value.WhichOneof("value"))

    return {kv.key: value(kv) for kv in items}


def test_each_call_becomes_one_genai_span_with_content_only_for_opted_in_tenants(live: Any, oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o, FakeOpenAI(models=["gpt-x"]) as c, Collector() as collector:
        settings = make_settings(
            [
                {"name": "o", "kind": "ollama", "url": o.url},
                {"name": "c", "kind": "openai", "url": c.url + "/v1"},
            ],
            auth={"trusted_networks": {"127.0.0.0/8": "diary"}},
            tenants={"diary": {"admin": True, "store_content": True}, "plain": {}},
            otlp={"endpoint": collector.url, "headers": {"Authorization": "Bearer otlp-token"}},
        )
        hearth: LiveHearth = live(settings)
        store = Store(settings.store_url)
        try:
            key = Authenticator(settings, store).create_key("plain")[1]
        finally:
            store.close()
        oc(hearth.url).chat(model="llama3.1:8b", messages=USER, stream=False)
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key=key) as oa:
            stream = oa.chat.completions.create(
                model="gpt-x",
                messages=USER,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            assert "".join(e.choices[0].delta.content or "" for e in stream if e.choices)
        assert (
            httpx.post(hearth.url + "/api/chat", json={"model": "nope", "messages": USER}).status_code == 404
        )
        otel = hearth.app.state.otel

        def three_spans() -> list[Span]:
            otel.force_flush()
            spans = collector.spans()
            return spans if len(spans) >= 3 else []

        spans = eventually(three_spans)
        rows = {r["model"]: r for r in httpx.get(hearth.url + "/admin/traces").json()["traces"]}
        ollama_port = o.port
    assert len(spans) == 3
    by_model = {attributes(s.attributes)["gen_ai.request.model"]: s for s in spans}
    assert collector.headers[0]["Authorization"] == "Bearer otlp-token"
    resource = attributes(collector.exports[0].resource_spans[0].resource.attributes)
    assert resource["service.name"] == "hearth"

    mine = by_model["llama3.1:8b"]
    a = attributes(mine.attributes)
    assert mine.name == "chat llama3.1:8b"
    assert mine.kind == Span.SPAN_KIND_CLIENT
    row = rows["llama3.1:8b"]
    assert mine.start_time_unix_nano == int(row["ts"] * 1e9)  # the call's real start and end
    assert abs((mine.end_time_unix_nano - mine.start_time_unix_nano) / 1e6 - row["duration_ms"]) < 1
    assert {k: v for k, v in a.items() if "messages" not in k} == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "ollama",
        "gen_ai.system": "ollama",
        "gen_ai.request.model": "llama3.1:8b",
        "gen_ai.response.model": "llama3.1:8b",
        "gen_ai.usage.input_tokens": count_words([SECRET]),
        "gen_ai.usage.output_tokens": row["completion_tokens"],
        "server.address": "127.0.0.1",
        "server.port": ollama_port,
        "http.response.status_code": 200,
        "hearth.tenant": "diary",
        "hearth.backend": "o",
        "hearth.dialect": "ollama",
        "hearth.stream": False,
        "hearth.attempts": 1,
        "hearth.queue_wait_ms": row["queue_wait_ms"],
        "hearth.ttft_ms": row["ttft_ms"],
        "hearth.load_ms": row["load_ms"],
    }
    assert json.loads(a["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "text", "content": SECRET}]}
    ]
    assert json.loads(a["gen_ai.output.messages"]) == [
        {
            "role": "assistant",
            "parts": [{"type": "text", "content": f"echo: {SECRET}"}],
            "finish_reason": "stop",
        }
    ]

    theirs = by_model["gpt-x"]
    b = attributes(theirs.attributes)
    assert theirs.name == "chat gpt-x"
    assert (b["hearth.tenant"], b["gen_ai.provider.name"], b["hearth.stream"]) == ("plain", "openai", True)
    assert b["hearth.key_id"] == key.split("_")[1]
    assert b["gen_ai.usage.input_tokens"] == count_words([SECRET])
    assert SECRET.encode() not in theirs.SerializeToString()  # not opted in: metadata only
    assert not any("messages" in k for k in b)

    failed = by_model["nope"]
    f = attributes(failed.attributes)
    assert (f["error.type"], f["http.response.status_code"]) == ("404", 404)
    assert failed.status.code == Status.STATUS_CODE_ERROR
    assert "hearth.backend" not in f and "server.address" not in f


def test_without_an_endpoint_nothing_is_exported() -> None:
    app = create_app(make_settings([{"name": "o", "kind": "ollama", "url": "http://127.0.0.1:9"}]))
    assert app.state.otel is None
    assert app.state.records.exporter is None
