"""What every HTTP surface shares: bounded body reading, JSON decoding, error shaping, and
cancelling the upstream call when the client goes away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, Literal, TypeVar

import msgspec
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from hearth.errors import BadRequest, ClientCancelled, HearthError, PayloadTooLarge, TenantNotFound

log = logging.getLogger("hearth.api")
T = TypeVar("T")

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    parts: list[bytes] = []
    size = 0
    try:
        async for part in request.stream():
            size += len(part)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            parts.append(part)
    except ClientDisconnect as exc:
        raise ClientCancelled("client disconnected while sending the body") from exc
    return b"".join(parts)


def decode_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise BadRequest("request body is empty; expected a JSON object")
    try:
        obj = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(obj, dict):
        raise BadRequest("request body must be a JSON object")
    return obj


async def json_body(request: Request, limit: int) -> tuple[bytes, dict[str, Any]]:
    raw = await read_body(request, limit)
    return raw, decode_object(raw)


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(msgspec.json.encode(obj), status, headers, media_type=JSON_TYPE)


Dialect = Literal["ollama", "openai"]


def error_body(exc: HearthError, dialect: Dialect) -> dict[str, Any]:
    if dialect == "ollama":
        return {"error": exc.message}
    return {
        "error": {
            "message": exc.message,
            "type": exc.openai_type,
            "param": getattr(exc, "param", None),
            "code": _openai_code(exc),
        }
    }


def _openai_code(exc: HearthError) -> str | None:
    if isinstance(exc, TenantNotFound):
        return "tenant_not_found"
    if exc.status == 404:
        return "model_not_found"
    if exc.status == 429:
        return "rate_limit_exceeded"
    if exc.status == 413:
        return "request_too_large"
    return None


def error_response(exc: HearthError, dialect: Dialect) -> Response:
    headers = None
    retry_after = getattr(exc, "retry_after", None)  # RateLimited, QueueTimeout
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, round(retry_after)))}
    status = exc.status if 400 <= exc.status <= 599 or exc.status == 499 else 502
    return json_response(error_body(exc, dialect), status, headers)


def stream_error(exc: BaseException, dialect: Dialect) -> bytes:
    """The in-stream error that ends a response whose status line has already gone out."""
    err = exc if isinstance(exc, HearthError) else HearthError("internal error")
    body = msgspec.json.encode(error_body(err, dialect))
    return body + b"\n" if dialect == "ollama" else b"data: " + body + b"\n\n"


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` but cancel it if the client disconnects first (the body is already read,
    so the next ASGI message can only be http.disconnect). Cancelling the upstream call closes
    its connection, which makes Ollama stop generating.

    The work runs in the caller's task and only the watcher gets a task of its own: one task
    per request instead of two plus asyncio.wait, which showed in profiles."""
    current = asyncio.current_task()
    assert current is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await request.receive())["type"] != "http.disconnect":
            pass
        gone = True
        current.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise  # cancelled from outside (shutdown): not ours to swallow
        current.uncancel()
        raise ClientCancelled("client disconnected") from None
    finally:
        watcher.cancel()
