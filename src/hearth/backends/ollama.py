"""Adapter for Ollama's native API (/api/*)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec

from hearth.backends.base import Backend, Discovery, LoadedModel, ModelInfo, RawResponse
from hearth.errors import UpstreamError
from hearth.protocol import ollama as wire
from hearth.protocol.canonical import ChatRequest, Chunk, CompletionRequest, EmbedRequest, EmbedResult


class OllamaBackend(Backend):
    kind = "ollama"

    async def chat(self, req: ChatRequest) -> AsyncIterator[Chunk]:
        body = wire.encode_chat(req)
        body["stream"] = True  # always stream upstream; the gateway joins for non-stream clients
        raw = await self.forward("POST", "/api/chat", msgspec.json.encode(body))
        return self._chunks(raw, wire.decode_chat_chunk)

    async def complete(self, req: CompletionRequest) -> AsyncIterator[Chunk]:
        body = wire.encode_generate(req)
        body["stream"] = True
        raw = await self.forward("POST", "/api/generate", msgspec.json.encode(body))
        return self._chunks(raw, wire.decode_generate_chunk)

    async def _chunks(
        self, raw: RawResponse, decode: Callable[[dict[str, Any]], Chunk]
    ) -> AsyncIterator[Chunk]:
        saw_done = False
        async for line in raw.iter_lines():
            try:
                obj = msgspec.json.decode(line)
            except msgspec.DecodeError as exc:
                raise UpstreamError(f"backend '{self.name}' sent an invalid line", 502, self.name) from exc
            if isinstance(obj, dict) and "error" in obj:
                raise UpstreamError(str(obj["error"]), 500, self.name)
            chunk = decode(obj)
            saw_done = saw_done or chunk.done
            yield chunk
        if not saw_done:
            raise UpstreamError(
                f"backend '{self.name}' ended the stream without a final chunk", 502, self.name
            )

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        raw = await self.forward("POST", "/api/embed", msgspec.json.encode(wire.encode_embed(req)))
        obj = msgspec.json.decode(await raw.read())
        return wire.decode_embed_result(obj, req.model)

    async def unload(self, model: str) -> None:
        """Ollama's own way: keep_alive 0 and no prompt unloads the model once it is idle."""
        body = msgspec.json.encode({"model": model, "keep_alive": 0})
        raw = await self.forward("POST", "/api/generate", body)
        await raw.read()

    async def discover(self, timeout: float) -> Discovery:
        tags = await self.get_json("/api/tags", timeout)
        models = [
            ModelInfo(
                name=str(m.get("model") or m.get("name")),
                size=int(m.get("size") or 0),
                digest=str(m.get("digest") or ""),
                modified_at=str(m.get("modified_at") or ""),
                details=m.get("details") or {},
            )
            for m in (tags.get("models") if isinstance(tags, dict) else None) or []
            if isinstance(m, dict)
        ]
        loaded = await self.discover_loaded(timeout)
        version = None
        try:
            v = await self.get_json("/api/version", timeout)
            version = str(v.get("version")) if isinstance(v, dict) else None
        except UpstreamError:
            pass
        return Discovery(models, loaded, version)

    async def discover_loaded(self, timeout: float) -> list[LoadedModel]:
        ps = await self.get_json("/api/ps", timeout)
        return [
            LoadedModel(
                name=str(m.get("model") or m.get("name")),
                size=int(m.get("size") or 0),
                size_vram=int(m.get("size_vram") or 0),
                expires_at=str(m.get("expires_at") or ""),
                context_length=int(m.get("context_length") or 0),
                raw=m,
            )
            for m in (ps.get("models") if isinstance(ps, dict) else None) or []
            if isinstance(m, dict)
        ]
