"""Ollama's native API (/api/*), so every Ollama client works unchanged: thin handlers that
parse, call the gateway, and shape the reply in Ollama's wire format."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from hearth.api.auth import principal_of
from hearth.api.common import (
    NDJSON_TYPE,
    cancel_on_disconnect,
    error_response,
    json_body,
    json_response,
    stream_error,
)
from hearth.errors import BadRequest, Forbidden, HearthError, ModelNotFound
from hearth.gateway.catalog import Catalog
from hearth.gateway.dispatch import Call, ChunkStream, Embedding, Gateway, Passthrough
from hearth.gateway.manage import Manager, last_status
from hearth.protocol import ollama as wire
from hearth.protocol.canonical import Chunk, Endpoint, merge_chunks
from hearth.settings import Settings

_NDJSON_HEADERS = {"Content-Type": NDJSON_TYPE}


async def ndjson_passthrough(out: Passthrough) -> AsyncIterator[bytes]:
    try:
        async for data in out.stream():
            yield data
    except HearthError as exc:
        yield stream_error(exc, "ollama")


async def ndjson_chunks(
    chunks: AsyncIterator[Chunk], encode: Callable[[Chunk, str, str], dict[str, Any]], model: str
) -> AsyncIterator[bytes]:
    enc = msgspec.json.Encoder()
    try:
        async for chunk in chunks:
            yield enc.encode(encode(chunk, model, wire.now_iso())) + b"\n"
    except HearthError as exc:
        yield stream_error(exc, "ollama")


class OllamaAPI:
    def __init__(self, settings: Settings, gateway: Gateway, catalog: Catalog, manager: Manager) -> None:
        self.limit = settings.server.max_body_bytes
        self.gateway = gateway
        self.catalog = catalog
        self.manager = manager

    def routes(self) -> list[Route]:
        return [
            Route("/", self.root, methods=["GET", "HEAD"]),
            Route("/api/version", self.version, methods=["GET", "HEAD"]),
            Route("/api/tags", self.tags, methods=["GET", "HEAD"]),
            Route("/api/ps", self.ps, methods=["GET"]),
            Route("/api/show", self.show, methods=["POST"]),
            Route("/api/chat", self.chat, methods=["POST"]),
            Route("/api/generate", self.generate, methods=["POST"]),
            Route("/api/embed", self.embed, methods=["POST"]),
            Route("/api/embeddings", self.embeddings, methods=["POST"]),
            Route("/api/pull", self.pull, methods=["POST"]),
            Route("/api/push", self.push, methods=["POST"]),
            Route("/api/create", self.create, methods=["POST"]),
            Route("/api/delete", self.delete, methods=["DELETE"]),
            Route("/api/copy", self.copy, methods=["POST"]),
            Route("/api/blobs/{digest}", self.blob, methods=["HEAD", "POST"]),
        ]

    # -- answered by Hearth ------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return json_response({"version": self.catalog.version()})

    async def tags(self, request: Request) -> Response:
        return json_response(self.catalog.tags(principal_of(request)))

    async def ps(self, request: Request) -> Response:
        return json_response(await self.catalog.ps(principal_of(request)))

    # -- model calls -----------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self._model_call(request, Endpoint.CHAT, wire.decode_chat)

    async def generate(self, request: Request) -> Response:
        return await self._model_call(request, Endpoint.COMPLETION, wire.decode_generate)

    async def embed(self, request: Request) -> Response:
        return await self._model_call(request, Endpoint.EMBED, wire.decode_embed)

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
            # scope["path"], not request.url.path: building the URL object showed in profiles.
            call = Call("ollama", endpoint, request.scope["path"], body, raw, req, who)
            stream = getattr(req, "stream", False)
            if stream:
                out = await cancel_on_disconnect(request, self.gateway.dispatch(call))
                return self._stream(out, endpoint)
            return await cancel_on_disconnect(request, self._whole(call))
        except HearthError as exc:
            return error_response(exc, "ollama")

    def _stream(self, out: Any, endpoint: Endpoint) -> Response:
        if isinstance(out, Passthrough):
            return StreamingResponse(ndjson_passthrough(out), headers={**_NDJSON_HEADERS, **out.headers})
        assert isinstance(out, ChunkStream)
        encode = wire.encode_chat_chunk if endpoint is Endpoint.CHAT else wire.encode_generate_chunk
        return StreamingResponse(
            ndjson_chunks(out.chunks, encode, out.meta.model), headers={**_NDJSON_HEADERS, **out.meta.headers}
        )

    async def _whole(self, call: Call) -> Response:
        out = await self.gateway.dispatch(call)
        if isinstance(out, Passthrough):
            return Response(await out.read(), media_type=out.raw.content_type, headers=out.headers)
        if isinstance(out, Embedding):
            if call.path == "/api/embeddings":
                return json_response(wire.encode_embeddings_result(out.result), headers=out.headers)
            return json_response(wire.encode_embed_result(out.result), headers=out.headers)
        chunks = [c async for c in out.chunks]
        merged = merge_chunks(chunks)
        encode = wire.encode_chat_chunk if call.endpoint is Endpoint.CHAT else wire.encode_generate_chunk
        return json_response(encode(merged, out.meta.model, wire.now_iso()), headers=out.meta.headers)

    # -- passed to the backend that serves the model ----------------------------------------

    async def show(self, request: Request) -> Response:
        try:
            _, body = await json_body(request, self.limit)
            model = body.get("model") or body.get("name")
            if not isinstance(model, str) or not model:
                raise BadRequest("missing field 'model'")
            if not principal_of(request).may_use(model):
                raise ModelNotFound(model)
            for target in self.gateway.router.targets(model):
                for state in self.gateway.pool.candidates(target.model):
                    if state.backend.kind != "ollama":
                        return json_response(_synthetic_show(target.model))
                    out = await state.backend.forward(
                        "POST", "/api/show", msgspec.json.encode({**body, "model": target.model})
                    )
                    return Response(await out.read(), media_type=out.content_type)
            raise ModelNotFound(model)
        except HearthError as exc:
            return error_response(exc, "ollama")

    # -- model management -------------------------------------------------------------------

    def _admin(self, request: Request) -> None:
        if not principal_of(request).is_admin:
            raise Forbidden("model management needs an admin tenant")

    def _backend_choice(self, request: Request) -> str | None:
        return request.headers.get("x-hearth-backend") or request.query_params.get("backend")

    async def _progress(self, request: Request, path: str, *, fan_out: bool, having: bool) -> Response:
        try:
            self._admin(request)
            _, body = await json_body(request, self.limit)
            model = body.get("model") or body.get("name")
            if not isinstance(model, str) or not model:
                raise BadRequest("missing field 'model'")
            states = self.manager.select(
                self._backend_choice(request), fan_out=fan_out, having=model if having else None
            )
            lines = await self.manager.progress(states, path, body)
            if body.get("stream", True) is False:
                return json_response(await last_status(lines))
            return StreamingResponse(_ndjson_lines(lines), headers=_NDJSON_HEADERS)
        except HearthError as exc:
            return error_response(exc, "ollama")

    async def pull(self, request: Request) -> Response:
        return await self._progress(request, "/api/pull", fan_out=True, having=False)

    async def push(self, request: Request) -> Response:
        return await self._progress(request, "/api/push", fan_out=False, having=True)

    async def create(self, request: Request) -> Response:
        return await self._progress(request, "/api/create", fan_out=False, having=False)

    async def delete(self, request: Request) -> Response:
        try:
            self._admin(request)
            _, body = await json_body(request, self.limit)
            model = body.get("model") or body.get("name")
            if not isinstance(model, str) or not model:
                raise BadRequest("missing field 'model'")
            states = self.manager.select(self._backend_choice(request), fan_out=True, having=model)
            await self.manager.simple(states, "DELETE", "/api/delete", body)
            return Response(status_code=200)
        except HearthError as exc:
            return error_response(exc, "ollama")

    async def copy(self, request: Request) -> Response:
        try:
            self._admin(request)
            _, body = await json_body(request, self.limit)
            source = body.get("source")
            if not isinstance(source, str) or not source or not isinstance(body.get("destination"), str):
                raise BadRequest("fields 'source' and 'destination' must be strings")
            states = self.manager.select(self._backend_choice(request), fan_out=True, having=source)
            await self.manager.simple(states, "POST", "/api/copy", body)
            return Response(status_code=200)
        except HearthError as exc:
            return error_response(exc, "ollama")

    async def blob(self, request: Request) -> Response:
        """Blobs can be gigabytes: streamed through, not held, and not bound by max_body_bytes."""
        try:
            self._admin(request)
            digest = request.path_params["digest"]
            state = self.manager.select(self._backend_choice(request), fan_out=False)[0]
            path = f"/api/blobs/{digest}"
            if request.method == "HEAD":
                out = await state.backend.forward("HEAD", path)
            else:
                out = await state.backend.forward("POST", path, request.stream())
            await out.read()
            return Response(status_code=out.status)
        except HearthError as exc:
            if request.method == "HEAD":
                return Response(status_code=exc.status)
            return error_response(exc, "ollama")


async def _ndjson_lines(lines: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for line in lines:
            yield line
    except HearthError as exc:
        yield stream_error(exc, "ollama")


def _synthetic_show(model: str) -> dict[str, Any]:
    """/api/show for a model that only an OpenAI-compatible backend serves."""
    return {
        "modelfile": f"FROM {model}\n",
        "parameters": "",
        "template": "",
        "details": {
            "parent_model": "",
            "format": "",
            "family": "",
            "families": None,
            "parameter_size": "",
            "quantization_level": "",
        },
        "model_info": {},
        "capabilities": ["completion", "tools"],
        "modified_at": "1970-01-01T00:00:00Z",
    }
