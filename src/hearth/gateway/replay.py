"""Replay: a stored request run again against another model, as the tenant that sent it.

The stored body takes the path the client's own call took: its dialect's decoder makes the
canonical request and ``Gateway.dispatch`` routes it under the tenant's policy, so its model
list, its limits and ``local_only`` all apply (a local-only tenant's prompt never reaches a cloud
backend, whoever asks for the replay). It runs non-streaming and is recorded as a new trace of
that tenant (with its content, since only a tenant that stores content has a prompt to replay).
``POST /admin/traces/{id}/replay`` and the hub both call ``replay``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import msgspec

from hearth.errors import BadRequest, ModelNotFound, NoStoredContent, TraceNotFound
from hearth.gateway.auth import Principal
from hearth.gateway.content import reply_text
from hearth.gateway.dispatch import Call, ChunkStream, Embedding, Gateway, Outcome, Passthrough
from hearth.gateway.tenants import within
from hearth.protocol import ollama, openai
from hearth.protocol.canonical import Endpoint, merge_chunks
from hearth.settings import TenantSettings
from hearth.store.db import Store

# (dialect, endpoint as logged) -> the client path and the decoder of its body, as in api/.
_ROUTES: dict[tuple[str, str], tuple[str, Callable[[Any], Any]]] = {
    ("ollama", "chat"): ("/api/chat", ollama.decode_chat),
    ("ollama", "completion"): ("/api/generate", ollama.decode_generate),
    ("ollama", "embed"): ("/api/embed", ollama.decode_embed),
    ("openai", "chat"): ("/v1/chat/completions", openai.decode_chat),
    ("openai", "completion"): ("/v1/completions", openai.decode_completion),
    ("openai", "embed"): ("/v1/embeddings", openai.decode_embeddings),
}


@dataclass(frozen=True, slots=True)
class Replayed:
    """What a replay did."""

    trace_id: int  # the original call's
    tenant: str  # as the request log names it: the tenant or "<tenant>/<person>"
    model: str  # as asked for the replay
    backend: str
    response: str | None  # the reply's text; None for embeddings
    status: int
    duration_ms: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _route(dialect: str, endpoint: str, body: dict[str, Any]) -> tuple[str, Callable[[Any], Any]]:
    if (dialect, endpoint) == ("ollama", "embed") and "input" not in body and "prompt" in body:
        return "/api/embeddings", ollama.decode_embeddings  # the legacy endpoint's body
    found = _ROUTES.get((dialect, endpoint))
    if found is None:
        raise NoStoredContent(f"cannot replay a {dialect} {endpoint} call")
    return found


async def _reply(out: Outcome) -> tuple[str, str | None]:
    """(backend, reply text) of a non-streaming outcome."""
    if isinstance(out, Passthrough):
        return out.backend, reply_text(await out.read())
    if isinstance(out, Embedding):
        return out.backend, None
    assert isinstance(out, ChunkStream)
    merged = merge_chunks([c async for c in out.chunks])
    return out.meta.backend, merged.content


async def replay(
    gateway: Gateway,
    store: Store,
    policy_of: Callable[[str], TenantSettings],
    trace_id: int,
    model: str,
    *,
    scope: str | None = None,
) -> Replayed:
    """Run trace ``trace_id``'s stored request again on ``model`` as the tenant that sent it
    (``policy_of(tenant)`` gives its policy). ``scope``: a tenant that may replay only its own
    and its sub-tenants' calls (None: any call, for admins).

    Raises TraceNotFound (404), NoStoredContent (409) when the call's request is not stored (or
    its tenant no longer stores content), BadRequest (400) for a model the tenant may not or
    cannot use (missing, unknown, not in its list, or only on a cloud backend for a local-only
    tenant), and whatever the gateway raises for the call itself (429, 502, 503 ...)."""
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("model: name the model to replay the call on", "model")
    await gateway.records.flush()  # the call may still wait in the log's batch
    row = await asyncio.to_thread(store.get_trace, trace_id)
    name = row.get("tenant") if row is not None else None
    if row is None or (scope is not None and not within(name, scope)):
        raise TraceNotFound(trace_id)
    name = name or "anonymous"
    tenant = name.split("/", 1)[0]
    policy = policy_of(tenant)
    content = row["content"]
    if content is None or not isinstance(content["request"], dict):
        raise NoStoredContent(f"trace {trace_id} has no stored request to replay")
    if not policy.store_content:
        raise NoStoredContent(f"tenant '{tenant}' no longer stores content: its calls cannot be replayed")
    body = {**content["request"], "model": model, "stream": False}
    body.pop("stream_options", None)  # OpenAI refuses it without stream
    path, decode = _route(row["dialect"], row["endpoint"], body)
    request = decode(body)
    who = Principal(tenant, name, None, policy)
    refused = BadRequest(f"model '{model}' is not available to tenant '{tenant}'", "model")
    if not who.may_use(model):
        raise refused
    call = Call(
        row["dialect"], Endpoint(row["endpoint"]), path, body, msgspec.json.encode(body), request, who
    )
    started = time.perf_counter()
    try:
        backend, text = await _reply(await gateway.dispatch(call))
    except ModelNotFound as exc:
        raise refused from exc
    return Replayed(trace_id, name, model, backend, text, 200, (time.perf_counter() - started) * 1000)
