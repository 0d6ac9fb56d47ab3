"""A fake OpenAI-compatible server (/v1/models, /v1/chat/completions, /v1/completions, /v1/embeddings)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from .base import _STATE_KEY, FakeServer, Result, Streamed, Whole, dumps
from .replies import (
    Reply,
    content_text,
    count_words,
    embedding_base64,
    fake_embedding,
    messages_prompt_tokens,
    plan_chat,
    plan_completion,
    split_in,
    tool_names_of,
)

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
DONE = b"data: [DONE]\n\n"

_ids = itertools.count(1)


def sse(obj: Any) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def openai_error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _default_openai_error(status: int, model: str | None) -> tuple[str, str, str | None]:
    if status == 400:
        return "Invalid request", "invalid_request_error", None
    if status == 401:
        return "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"
    if status == 403:
        return "You are not allowed to perform this request.", "invalid_request_error", None
    if status == 404:
        return (
            f"The model `{model or ''}` does not exist or you do not have access to it.",
            "not_found_error",
            "model_not_found",
        )
    if status == 429:
        return "Rate limit reached for requests. Please try again later.", "requests", "rate_limit_exceeded"
    if status == 503:
        return "The server is overloaded or not ready yet.", "server_error", None
    if status >= 500:
        return (
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        )
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return phrase, "api_error", None


class OpenAIRoutes(FakeServer):
    """The OpenAI dialect; FakeOpenAI serves it alone, FakeOllama under /v1 as real Ollama does."""

    owned_by = "fake"

    # hooks -------------------------------------------------------------------------------------------
    def _lookup_model(self, name: str) -> str | None:
        raise NotImplementedError

    def _model_ids(self) -> list[tuple[str, int]]:
        raise NotImplementedError

    def _on_serve(self, model: str) -> None:
        """Called when a model is used for generation (FakeOllama marks it loaded)."""

    def _add_openai_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/models", self._oai_models)
        app.router.add_get("/v1/models/{model:.+}", self._oai_model)
        app.router.add_post("/v1/chat/completions", self._oai_chat)
        app.router.add_post("/v1/completions", self._oai_completions)
        app.router.add_post("/v1/embeddings", self._oai_embeddings)

    def _openai_error(
        self,
        status: int,
        message: str | None,
        request: web.Request,
        headers: dict[str, str] | None = None,
        *,
        type_: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> web.Response:
        body = request.get(_STATE_KEY, {}).get("json")
        model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else None
        d_msg, d_type, d_code = _default_openai_error(status, model)
        payload = openai_error_body(
            message or d_msg,
            type_ or d_type,
            (code or None) if code is not None else d_code,  # "" forces null, param
        )
        return web.Response(
            status=status, body=dumps(payload), headers={"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
        )

    # endpoints ---------------------------------------------------------------------------------------
    async def _oai_models(self, request: web.Request) -> web.StreamResponse:
        data = [
            {"id": mid, "object": "model", "created": created, "owned_by": self.owned_by}
            for mid, created in self._model_ids()
        ]
        return web.Response(
            body=dumps({"object": "list", "data": data}), headers={"Content-Type": JSON_CONTENT_TYPE}
        )

    async def _oai_model(self, request: web.Request) -> web.StreamResponse:
        wanted = request.match_info["model"]
        for mid, created in self._model_ids():
            if mid == wanted or self._lookup_model(wanted) == mid:
                return web.Response(
                    body=dumps({"id": mid, "object": "model", "created": created, "owned_by": self.owned_by}),
                    headers={"Content-Type": JSON_CONTENT_TYPE},
                )
        return self._openai_error(
            404,
            f"The model `{wanted}` does not exist or you do not have access to it.",
            request,
            code="model_not_found",
        )

    async def _oai_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, self._oai_produce_chat)

    async def _oai_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, self._oai_produce_completions)

    async def _oai_embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._generation(request, self._oai_produce_embeddings)

    # producers ---------------------------------------------------------------------------------------
    async def _oai_common(self, request: web.Request) -> tuple[dict[str, Any], str] | web.Response:
        body, err = await self._parse_json(request)
        if err is not None or not isinstance(body, dict):
            return self._openai_error(
                400,
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
                "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent "
                "was not valid JSON.",
                request,
            )
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return self._openai_error(400, "you must provide a model parameter", request)
        served = self._lookup_model(model)
        if served is None:
            return self._openai_error(404, None, request)
        self._on_serve(served)
        return body, model

    async def _oai_produce_chat(self, request: web.Request) -> Result:
        common = await self._oai_common(request)
        if isinstance(common, web.Response):
            return common
        body, model = common
        messages = body.get("messages")
        if messages is None:
            return self._openai_error(
                400,
                "Missing required parameter: 'messages'.",
                request,
                param="messages",
                code="missing_required_parameter",
            )
        if not isinstance(messages, list) or not messages:
            return self._openai_error(
                400,
                "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
                "empty array instead.",
                request,
                param="messages",
                code="empty_array",
            )
        rf = body.get("response_format")
        json_mode = isinstance(rf, dict) and rf.get("type") in ("json_object", "json_schema")
        max_tokens = _int_or_none(body.get("max_completion_tokens")) or _int_or_none(body.get("max_tokens"))
        reply = plan_chat(messages, tool_names_of(body.get("tools")), json_mode, max_tokens)
        prompt_tokens = messages_prompt_tokens(messages)
        return _chat_result(body, model, reply, prompt_tokens)

    async def _oai_produce_completions(self, request: web.Request) -> Result:
        common = await self._oai_common(request)
        if isinstance(common, web.Response):
            return common
        body, model = common
        raw = body.get("prompt")
        if raw is None:
            return self._openai_error(
                400,
                "Missing required parameter: 'prompt'.",
                request,
                param="prompt",
                code="missing_required_parameter",
            )
        prompts = _inputs(raw)
        max_tokens = _int_or_none(body.get("max_tokens"))
        replies = [plan_completion(p, max_tokens=max_tokens) for p in prompts]
        return _completion_result(body, model, replies, count_words(prompts))

    async def _oai_produce_embeddings(self, request: web.Request) -> Result:
        common = await self._oai_common(request)
        if isinstance(common, web.Response):
            return common
        body, model = common
        raw = body.get("input")
        if raw is None or raw == "" or raw == []:
            return self._openai_error(
                400,
                "'$.input' is invalid. Please check the API reference: "
                "https://platform.openai.com/docs/api-reference.",
                request,
                param="input",
            )
        inputs = _inputs(raw)
        dims = _int_or_none(body.get("dimensions")) or 8
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(inputs):
            vec = fake_embedding(text, dims)
            data.append(
                {"object": "embedding", "index": i, "embedding": embedding_base64(vec) if b64 else vec}
            )
        tokens = count_words(inputs)
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return Whole(dumps(payload), JSON_CONTENT_TYPE)


class FakeOpenAI(OpenAIRoutes):
    """A fake OpenAI-compatible server on 127.0.0.1 (see module docs / the README in the report)."""

    def __init__(self, models: Iterable[str] = ("gpt-4o-mini",), api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key
        self._models: dict[str, int] = dict.fromkeys(models, 1700000000)

    @property
    def models(self) -> list[str]:
        with self._cond:
            return list(self._models)

    def add_model(self, model: str) -> None:
        with self._cond:
            self._models[model] = int(time.time())

    def remove_model(self, model: str) -> None:
        with self._cond:
            self._models.pop(model, None)

    def _lookup_model(self, name: str) -> str | None:
        with self._cond:
            return name if name in self._models else None

    def _model_ids(self) -> list[tuple[str, int]]:
        with self._cond:
            return list(self._models.items())

    def _setup_routes(self, app: web.Application) -> None:
        self._add_openai_routes(app)

    async def _gatekeeper(self, request: web.Request) -> web.StreamResponse | None:
        if self.api_key is None or not request.path.startswith("/v1"):
            return None
        auth = request.headers.get("Authorization")
        if auth is None:
            return self._openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                request,
                code=None,
            )
        if auth != f"Bearer {self.api_key}":
            shown = auth.removeprefix("Bearer ")
            return self._openai_error(
                401,
                f"Incorrect API key provided: {shown[:3]}***{shown[-4:]}.",
                request,
                code="invalid_api_key",
            )
        return None

    def _error(
        self, status: int, message: str | None, request: web.Request, headers: dict[str, str] | None = None
    ) -> web.Response:
        return self._openai_error(status, message, request, headers)

    def _not_found_route(self, request: web.Request) -> web.StreamResponse:
        return self._openai_error(
            404,
            f"Invalid URL ({request.method} {request.path})",
            request,
            type_="invalid_request_error",
            code="",
        )


# ------------------------------------------------------------------------------------------ builders
def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _inputs(raw: Any) -> list[str]:
    """str | list[str] | list[int] (tokens) | list[list[int]] -> list of texts."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        if raw and all(isinstance(x, int) for x in raw):
            return [dumps(raw).decode()]
        return [x if isinstance(x, str) else dumps(x).decode() for x in raw]
    return [content_text(raw)]


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _tool_arg_pieces(reply: Reply) -> list[str]:
    return split_in(reply.arguments_json, 3)


def chat_completion_tokens(reply: Reply) -> int:
    """completion_tokens for a chat reply: text pieces, or 1 (tool header) + the argument pieces."""
    if reply.kind == "tool_call":
        return 1 + len(_tool_arg_pieces(reply))
    return len(reply.pieces)


def _chat_result(body: dict[str, Any], model: str, reply: Reply, prompt_tokens: int) -> Result:
    cid = f"chatcmpl-fake{next(_ids):08d}"
    created = int(time.time())
    completion_tokens = chat_completion_tokens(reply)
    finish = "tool_calls" if reply.kind == "tool_call" else reply.finish
    if body.get("stream") is not True:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text,
            "refusal": None,
            "annotations": [],
        }
        if reply.kind == "tool_call":
            message["content"] = None
            message["tool_calls"] = [
                {
                    "id": reply.call_id,
                    "type": "function",
                    "function": {"name": reply.tool_name, "arguments": reply.arguments_json},
                }
            ]
        payload = {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(prompt_tokens, completion_tokens),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        return Whole(dumps(payload), JSON_CONTENT_TYPE)

    so = body.get("stream_options")
    include_usage = isinstance(so, dict) and so.get("include_usage") is True
    base: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**base, "choices": [choice]})

    chunks: list[bytes] = []
    if reply.kind == "tool_call":
        chunks.append(
            chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": reply.call_id,
                            "type": "function",
                            "function": {"name": reply.tool_name, "arguments": ""},
                        }
                    ],
                }
            )
        )
        for piece in _tool_arg_pieces(reply):
            chunks.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    else:
        chunks.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        chunks.extend(chunk({"content": piece}) for piece in reply.pieces)
    tail = [chunk({}, finish)]
    if include_usage:
        tail.append(sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}))
    tail.append(DONE)
    return Streamed(
        chunks + tail,
        len(tail),
        SSE_CONTENT_TYPE,
        error_chunk=_sse_error,
        headers={"Cache-Control": "no-cache"},
    )


def _completion_result(body: dict[str, Any], model: str, replies: list[Reply], prompt_tokens: int) -> Result:
    cid = f"cmpl-fake{next(_ids):08d}"
    created = int(time.time())
    completion_tokens = sum(len(r.pieces) for r in replies)
    if body.get("stream") is not True:
        payload = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {"text": r.text, "index": i, "logprobs": None, "finish_reason": r.finish}
                for i, r in enumerate(replies)
            ],
            "usage": _usage(prompt_tokens, completion_tokens),
            "system_fingerprint": "fp_fake",
        }
        return Whole(dumps(payload), JSON_CONTENT_TYPE)
    so = body.get("stream_options")
    include_usage = isinstance(so, dict) and so.get("include_usage") is True
    base: dict[str, Any] = {
        "id": cid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": "fp_fake",
    }
    if include_usage:
        base["usage"] = None

    def chunk(index: int, text: str, finish: str | None) -> bytes:
        return sse(
            {**base, "choices": [{"text": text, "index": index, "logprobs": None, "finish_reason": finish}]}
        )

    chunks = [chunk(i, piece, None) for i, r in enumerate(replies) for piece in r.pieces]
    tail = [chunk(i, "", r.finish) for i, r in enumerate(replies)]
    if include_usage:
        tail.append(sse({**base, "choices": [], "usage": _usage(prompt_tokens, completion_tokens)}))
    tail.append(DONE)
    return Streamed(
        chunks + tail,
        len(tail),
        SSE_CONTENT_TYPE,
        error_chunk=_sse_error,
        headers={"Cache-Control": "no-cache"},
    )


def _sse_error(message: str) -> bytes:
    return sse(openai_error_body(message, "server_error"))
