"""The OpenAI API (/v1/*): thin handlers that parse, call the gateway, and shape the reply as
OpenAI does, including server-sent events and usage in the final chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from hearth.api.auth import principal_of
from hearth.api.common import (
    SSE_TYPE,
    cancel_on_disconnect,
    error_response,
    json_body,
    json_response,
    stream_error,
)
from hearth.errors import HearthError, ModelNotFound
from hearth.gateway.catalog import Catalog
from hearth.gateway.dispatch import Call, ChunkStream, Embedding, Gateway, Passthrough
from hearth.protocol import openai as wire
from hearth.protocol.canonical import Chunk, Endpoint, merge_chunks
from hearth.settings import Settings

_SSE_HEADERS = {"Content-Type": SSE_TYPE, "Cache-Control": "no-cache"}


async def sse_passthrough(out: Passthrough) -> AsyncIterator[bytes]:
    try:
        async for data in out.stream():
            yield data
    except HearthError as exc:
        yield stream_error(exc, "openai")


async def sse_chunks(
    chunks: AsyncIterator[Chunk], model: str, include_usage: bool, kind: Literal["chat", "completion"]
) -> AsyncIterator[bytes]:
    encoder = wire.ChatStreamEncoder(model, include_usage, kind)
    enc = msgspec.json.Encoder()
    try:
        async for chunk in chunks:
            for event in encoder.encode(chunk):
                yield b"data: " + enc.encode(event) + b"\n\n"
        yield b"data: [DONE]\n\n"
    except HearthError as exc:
        yield stream_error(exc, "openai")


class OpenAIAPI:
    def __init__(self, settings: Settings, gateway: Gateway, catalog: Catalog) -> None:
        self.limit = settings.server.max_body_bytes
        self.gateway = gateway
        self.catalog = catalog

    def routes(self) -> list[Route]:
        return [
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
        ]

    async def models(self, request: Request) -> Response:
        return json_response(self.catalog.openai_models(principal_of(request)))

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        for entry in self.catalog.openai_models(principal_of(request))["data"]:
            if entry["id"] == name:
                return json_response(entry)
        return error_response(ModelNotFound(name), "openai")

    async def chat(self, request: Request) -> Response:
        return await self._model_call(request, Endpoint.CHAT, wire.decode_chat)

    async def completions(self, request: Request) -> Response:
        return await self._model_call(request, Endpoint.COMPLETION, wire.decode_completion)

    async def embeddings(self, request: Request) -> Response:
        return await self._model_call(request, Endpoint.EMBED, wire.decode_embeddings)

    async def _model_call(
        self, request: Request, endpoint: Endpoint, decode: Callable[[Any], Any]
    ) -> Response:
        try:
            who = principal_of(request)
            raw, body = await json_body(request, self.limit)
            req = decode(body)
            if not who.may_use(req.model):
                raise ModelNotFound(req.model)  # absent, as far as this tenant can tell
            call = Call("openai", endpoint, request.scope["path"], body, raw, req, who)
            if getattr(req, "stream", False):
                out = await cancel_on_disconnect(request, self.gateway.dispatch(call))
                return self._stream(out, call)
            return await cancel_on_disconnect(request, self._whole(call))
        except HearthError as exc:
            return error_response(exc, "openai")

    def _stream(self, out: Any, call: Call) -> Response:
        if isinstance(out, Passthrough):
            return StreamingResponse(sse_passthrough(out), headers={**_SSE_HEADERS, **out.headers})
        assert isinstance(out, ChunkStream)
        kind: Literal["chat", "completion"] = "chat" if call.endpoint is Endpoint.CHAT else "completion"
        include_usage = bool(getattr(call.request, "include_usage", False))
        chunks = sse_chunks(out.chunks, out.meta.model, include_usage, kind)
        return StreamingResponse(chunks, headers={**_SSE_HEADERS, **out.meta.headers})

    async def _whole(self, call: Call) -> Response:
        out = await self.gateway.dispatch(call)
        if isinstance(out, Passthrough):
            return Response(await out.read(), media_type=out.raw.content_type, headers=out.headers)
        if isinstance(out, Embedding):
            return json_response(
                wire.encode_embeddings_result(out.result, wire.embeddings_wants_base64(call.body)),
                headers=out.headers,
            )
        merged = merge_chunks([c async for c in out.chunks])
        chat = call.endpoint is Endpoint.CHAT
        encode = wire.encode_chat_response if chat else wire.encode_completion_response
        return json_response(encode(merged, out.meta.model), headers=out.meta.headers)
