"""Adapter for any OpenAI-compatible server: vLLM, llama.cpp server, LM Studio, OpenAI and other clouds.

The configured URL is the API root including ``/v1`` (as for the openai SDK's ``base_url``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec

from hearth.backends.base import Backend, Discovery, ModelInfo, RawResponse
from hearth.errors import UpstreamError
from hearth.protocol import openai as wire
from hearth.protocol.canonical import ChatRequest, Chunk, CompletionRequest, EmbedRequest, EmbedResult


class OpenAIBackend(Backend):
    kind = "openai"

    def native_path(self, client_path: str) -> str:
        # Clients call /v1/chat/completions; our base URL already ends in /v1.
        return client_path.removeprefix("/v1")

    async def chat(self, req: ChatRequest) -> AsyncIterator[Chunk]:
        if not req.messages:
            return _load_reply(req.keep_alive)
        body = wire.encode_chat(req)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        raw = await self.forward("POST", "/chat/completions", msgspec.json.encode(body))
        return self._chunks(raw)

    async def complete(self, req: CompletionRequest) -> AsyncIterator[Chunk]:
        if not req.prompt and not req.images:
            return _load_reply(req.keep_alive)
        body = wire.encode_completion(req)
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        raw = await self.forward("POST", "/completions", msgspec.json.encode(body))
        return self._chunks(raw)

    async def _chunks(self, raw: RawResponse) -> AsyncIterator[Chunk]:
        decoder = wire.ChatStreamDecoder()
        finished = False
        async for line in raw.iter_lines():
            if not line.startswith(b"data:"):
                continue  # comments (": keep-alive") and event names carry nothing for us
            data = line[5:].strip()
            if data == b"[DONE]":
                finished = True
                break
            try:
                obj = msgspec.json.decode(data)
            except msgspec.DecodeError as exc:
                raise UpstreamError(f"backend '{self.name}' sent an invalid event", 502, self.name) from exc
            if isinstance(obj, dict) and obj.get("error"):
                err = obj["error"]
                msg = err.get("message") if isinstance(err, dict) else err
                raise UpstreamError(str(msg), 500, self.name)
            for chunk in decoder.feed(obj):
                yield chunk
        if not finished:
            raise UpstreamError(f"backend '{self.name}' ended the stream early", 502, self.name)
        for chunk in decoder.finish():
            yield chunk

    async def embed(self, req: EmbedRequest) -> EmbedResult:
        if not req.inputs:
            return EmbedResult(model=req.model, embeddings=[])  # Ollama's "load the model" request
        raw = await self.forward("POST", "/embeddings", msgspec.json.encode(wire.encode_embeddings(req)))
        obj = msgspec.json.decode(await raw.read())
        return wire.decode_embeddings_result(obj, req.model)

    async def discover(self, timeout: float) -> Discovery:
        if self.cfg.models:
            # A static list (a cloud whose catalogue is huge) still needs one call to prove it is up.
            await self.get_json("/models", timeout)
            return Discovery([ModelInfo(name=m) for m in self.cfg.models], [])
        data = await self.get_json("/models", timeout)
        items = data.get("data") if isinstance(data, dict) else None
        models = [ModelInfo(name=str(m["id"])) for m in items or [] if isinstance(m, dict) and "id" in m]
        return Discovery(models, [])


async def _load_reply(keep_alive: str | int | float | None) -> AsyncIterator[Chunk]:
    """Ollama clients load or unload a model with an empty prompt (Open WebUI unloads with
    keep_alive 0). An OpenAI-compatible server has no such notion: answer as Ollama would."""
    unload = keep_alive in (0, "0", "0s", "0m")
    yield Chunk(done=True, done_reason="unload" if unload else "load")
