"""Translate the OpenAI API (/v1/chat/completions, /v1/completions, /v1/embeddings) to and from the
canonical model, in both directions: client requests and SSE responses, backend requests and chunks.
"""

from __future__ import annotations

import os
import sys
import time
from array import array
from base64 import b64decode, b64encode
from binascii import Error as Base64Error

from hearth.errors import BadRequest
from hearth.protocol._fields import (
    _bad_type,
    _bad_value,
    _body,
    _bool,
    _list,
    _missing,
    _obj,
    _opt_int,
    _opt_num,
    _opt_obj,
    _opt_str,
    _req_obj,
    _req_str,
)
from hearth.protocol.canonical import (
    JSON,
    ChatRequest,
    Chunk,
    CompletionRequest,
    EmbedRequest,
    EmbedResult,
    Message,
    Tool,
    ToolCall,
    Usage,
)
from hearth.protocol.openai_stream import (
    ChatStreamDecoder,
    ChatStreamEncoder,
    _arguments,
    _call_id,
    _done_reason,
    _encode_function,
    _finish_reason,
    _malformed,
    _response,
    _thinking,
    _usage,
    _usage_json,
)

__all__ = [
    "ChatStreamDecoder",
    "ChatStreamEncoder",
    "decode_chat",
    "decode_chat_response",
    "decode_completion",
    "decode_completion_response",
    "decode_embeddings",
    "decode_embeddings_result",
    "embeddings_wants_base64",
    "encode_chat",
    "encode_chat_response",
    "encode_completion",
    "encode_completion_response",
    "encode_embeddings",
    "encode_embeddings_result",
]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
# Sampling options OpenAI and Ollama name alike; every other Ollama option has no OpenAI field.
_SAMPLING = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty")
# "none" and "minimal" are newer OpenAI levels; Ollama knows only false and low/medium/high.
_EFFORTS: dict[str, bool | str] = {
    "none": False,
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
}
# Base64 openings of the image formats worth sniffing; anything else is sent as png.
_MIME_BY_PREFIX = (("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


# ---------------------------------------------------------------------------------------------------------
# Field validation beyond the shared checks in _fields. A path names the parameter the way OpenAI does,
# e.g. "messages[0].content".


def _tool_call(value: object, path: str, position: int) -> ToolCall:
    tc = _obj(value, path)
    if _opt_str(tc, "type", path) not in (None, "function"):
        raise _bad_value(f"{path}.type", '"function"')
    fn = _req_obj(tc, "function", path)
    fpath = f"{path}.function"
    return ToolCall(
        name=_req_str(fn, "name", fpath),
        arguments=_arguments(fn.get("arguments"), f"{fpath}.arguments"),
        id=_opt_str(tc, "id", path) or "",
        index=position,
    )


# ---------------------------------------------------------------------------------------------------------
# Client side: request decoders.


def decode_chat(body: object) -> ChatRequest:
    """Decode a /v1/chat/completions body. Raises BadRequest naming the offending parameter."""
    b = _body(body)
    model = _req_str(b, "model", "")
    _check_n(b)
    if b.get("messages") is None:
        raise _missing("messages")
    messages = [_message(v, f"messages[{i}]") for i, v in enumerate(_list(b, "messages", ""))]
    _name_tool_results(messages)
    return ChatRequest(
        model=model,
        messages=messages,
        stream=_bool(b, "stream", "", False),
        tools=[_tool(v, f"tools[{i}]") for i, v in enumerate(_list(b, "tools", ""))],
        format=_response_format(b),
        options=_options(b),
        think=_think(b),
        include_usage=_include_usage(b),
    )


def _check_n(b: JSON) -> None:
    n = _opt_int(b, "n", "")
    if n is not None and n != 1:
        raise BadRequest("only n=1 is supported", param="n")


def _message(value: object, path: str) -> Message:
    m = _obj(value, path)
    role = _ROLES.get(_req_str(m, "role", path))
    if role is None:
        raise _bad_value(f"{path}.role", "one of system, developer, user, assistant, tool")
    content, images = _content(m.get("content"), f"{path}.content")
    msg = Message(role=role, content=content, images=images)
    if role == "assistant":
        calls = _list(m, "tool_calls", path)
        msg.tool_calls = [_tool_call(v, f"{path}.tool_calls[{i}]", i) for i, v in enumerate(calls)]
        # Ollama's own /v1 reads "reasoning"; vLLM and DeepSeek clients echo "reasoning_content".
        msg.thinking = _opt_str(m, "reasoning_content", path) or _opt_str(m, "reasoning", path) or None
    elif role == "tool":
        msg.tool_call_id = _opt_str(m, "tool_call_id", path)
    return msg


def _content(value: object, path: str) -> tuple[str, list[str]]:
    if value is None:
        return "", []
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise _bad_type(path, "a string, null or an array of content parts")
    texts: list[str] = []
    images: list[str] = []
    for i, part in enumerate(value):
        ppath = f"{path}[{i}]"
        p = _obj(part, ppath)
        kind = _req_str(p, "type", ppath)
        if kind == "text":
            texts.append(_req_str(p, "text", ppath))
        elif kind == "image_url":
            image = p.get("image_url")
            # A bare string is what some older clients send instead of {"url": ...}.
            url = image if isinstance(image, str) else _req_str(_req_obj(p, "image_url", ppath), "url", ppath)
            images.append(_data_url(url, f"{ppath}.image_url.url"))
        else:
            raise _bad_value(f"{ppath}.type", '"text" or "image_url"')
    return "\n".join(texts), images


def _data_url(url: str, path: str) -> str:
    head, sep, data = url.partition(",")
    if not (url.startswith("data:") and sep and head.endswith(";base64")):
        raise BadRequest(f"only base64 data URLs are supported for '{path}'", param=path)
    return data


def _name_tool_results(messages: list[Message]) -> None:
    # Ollama templates name a tool result by its function, which OpenAI clients only give by call id.
    names = {tc.id: tc.name for m in messages for tc in m.tool_calls if tc.id}
    for m in messages:
        if m.role == "tool" and m.tool_call_id in names:
            m.tool_name = names[m.tool_call_id]


def _tool(value: object, path: str) -> Tool:
    t = _obj(value, path)
    if _req_str(t, "type", path) != "function":
        raise _bad_value(f"{path}.type", '"function"')
    fn = _req_obj(t, "function", path)
    fpath = f"{path}.function"
    return Tool(
        name=_req_str(fn, "name", fpath),
        description=_opt_str(fn, "description", fpath) or "",
        parameters=dict(_opt_obj(fn, "parameters", fpath) or {}),
    )


def _response_format(b: JSON) -> str | JSON | None:
    rf = _opt_obj(b, "response_format", "")
    if rf is None:
        return None
    kind = _req_str(rf, "type", "response_format")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return dict(
            _req_obj(_req_obj(rf, "json_schema", "response_format"), "schema", "response_format.json_schema")
        )
    raise _bad_value("response_format.type", '"text", "json_object" or "json_schema"')


def _options(b: JSON) -> JSON:
    opts: JSON = {}
    # max_completion_tokens is the newer name; when a client sends both it is the one it means.
    for key in ("max_tokens", "max_completion_tokens"):
        n = _opt_int(b, key, "")
        if n is not None:
            opts["num_predict"] = n
    for key in _SAMPLING:
        x = _opt_int(b, key, "") if key == "seed" else _opt_num(b, key, "")
        if x is not None:
            opts[key] = x
    stop = b.get("stop")
    if isinstance(stop, str):
        opts["stop"] = [stop]
    elif stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad_type("stop", "a string or an array of strings")
        opts["stop"] = list(stop)
    return opts


def _think(b: JSON) -> bool | str | None:
    effort = _opt_str(b, "reasoning_effort", "")
    if effort is None:
        return None
    if effort not in _EFFORTS:
        raise _bad_value("reasoning_effort", '"none", "minimal", "low", "medium" or "high"')
    return _EFFORTS[effort]


def _include_usage(b: JSON) -> bool:
    so = _opt_obj(b, "stream_options", "")
    return so is not None and _bool(so, "include_usage", "stream_options", False)


def decode_completion(body: object) -> CompletionRequest:
    """Decode a /v1/completions body; only a single string prompt is supported."""
    b = _body(body)
    _check_n(b)
    prompt = b.get("prompt")
    if isinstance(prompt, list):
        if len(prompt) > 1:
            raise BadRequest("only a single prompt is supported", param="prompt")
        prompt = prompt[0] if prompt else ""
    if prompt is not None and not isinstance(prompt, str):
        raise BadRequest("only string prompts are supported (not token arrays)", param="prompt")
    return CompletionRequest(
        model=_req_str(b, "model", ""),
        prompt=prompt or "",
        stream=_bool(b, "stream", "", False),
        suffix=_opt_str(b, "suffix", ""),
        options=_options(b),
        include_usage=_include_usage(b),
    )


def decode_embeddings(body: object) -> EmbedRequest:
    """Decode a /v1/embeddings body; ``input`` must be a string or an array of strings."""
    b = _body(body)
    value = b.get("input")
    if value is None:
        raise _missing("input")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not all(isinstance(s, str) for s in inputs):
        raise BadRequest("'input' must be a string or an array of strings (not token arrays)", param="input")
    if not inputs:
        raise BadRequest("'input' must not be empty", param="input")
    if _opt_str(b, "encoding_format", "") not in (None, "float", "base64"):
        raise _bad_value("encoding_format", '"float" or "base64"')
    return EmbedRequest(
        model=_req_str(b, "model", ""), inputs=list(inputs), dimensions=_opt_int(b, "dimensions", "")
    )


def embeddings_wants_base64(body: object) -> bool:
    """Whether the client asked for base64 vectors (the openai Python SDK does by default)."""
    return isinstance(body, dict) and body.get("encoding_format") == "base64"


# ---------------------------------------------------------------------------------------------------------
# Backend side: request encoders for OpenAI-compatible servers (vLLM, llama.cpp, LM Studio, OpenAI).
# Options without an OpenAI field (num_ctx, top_k, ...) are dropped: strict servers reject unknown ones.


def _image_url(b64: str) -> JSON:
    mime = next((m for prefix, m in _MIME_BY_PREFIX if b64.startswith(prefix)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{b64}"}}


def _encode_messages(messages: list[Message]) -> list[JSON]:
    out: list[JSON] = []
    # (name, id) of the latest assistant turn's calls still unanswered: Ollama clients send tool results
    # without ids, while OpenAI servers require every result to cite its call.
    pending: list[tuple[str, str]] = []
    for m in messages:
        msg: JSON = {"role": m.role}
        if m.images:
            text = [{"type": "text", "text": m.content}] if m.content else []
            msg["content"] = text + [_image_url(img) for img in m.images]
        else:
            msg["content"] = m.content
        if m.tool_calls:
            calls = []
            pending = []
            for tc in m.tool_calls:
                cid = tc.id or _call_id()
                pending.append((tc.name, cid))
                calls.append({"id": cid, "type": "function", "function": _encode_function(tc)})
            msg["tool_calls"] = calls
            if not m.content and not m.images:
                msg["content"] = None
        if m.role == "tool":
            answers = m.tool_call_id or next(
                (c for name, c in pending if m.tool_name in (None, name)), pending[0][1] if pending else None
            )
            pending = [p for p in pending if p[1] != answers]
            if answers is not None:
                msg["tool_call_id"] = answers
        out.append(msg)
    return out


def _encode_tool(t: Tool) -> JSON:
    fn: JSON = {"name": t.name}
    if t.description:
        fn["description"] = t.description
    if t.parameters:
        fn["parameters"] = t.parameters
    return {"type": "function", "function": fn}


def _put_options(body: JSON, options: JSON, fmt: str | JSON | None, stream: bool) -> None:
    if stream:
        body["stream_options"] = {"include_usage": True}
    n = options.get("num_predict")
    # Ollama's -1 (no limit) and -2 (fill the context) have no OpenAI spelling but the default.
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        body["max_tokens"] = n
    for key in _SAMPLING:
        if options.get(key) is not None:
            body[key] = options[key]
    stop = options.get("stop")
    if stop:
        body["stop"] = [stop] if isinstance(stop, str) else stop
    if fmt == "json":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None:
        schema = {"name": "response", "schema": fmt, "strict": True}
        body["response_format"] = {"type": "json_schema", "json_schema": schema}


def encode_chat(req: ChatRequest) -> JSON:
    """The /v1/chat/completions body for ``req``; a streamed request always asks for usage."""
    body: JSON = {"model": req.model, "messages": _encode_messages(req.messages), "stream": req.stream}
    if req.tools:
        body["tools"] = [_encode_tool(t) for t in req.tools]
    _put_options(body, req.options, req.format, req.stream)
    if isinstance(req.think, str):
        body["reasoning_effort"] = req.think
    return body


def encode_completion(req: CompletionRequest) -> JSON:
    """The /v1/completions body for ``req`` (system, images and think have no field there)."""
    body: JSON = {"model": req.model, "prompt": req.prompt, "stream": req.stream}
    if req.suffix is not None:
        body["suffix"] = req.suffix
    _put_options(body, req.options, req.format, req.stream)
    return body


def encode_embeddings(req: EmbedRequest) -> JSON:
    """The /v1/embeddings body for ``req``."""
    body: JSON = {"model": req.model, "input": list(req.inputs), "encoding_format": "float"}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    return body


# ---------------------------------------------------------------------------------------------------------
# Backend side: response decoders. A malformed backend response is the backend's fault, so these raise
# UpstreamError (502), as does an in-band {"error": ...} object.


def _first_choice(d: JSON) -> JSON:
    choices = _list(d, "choices", "")
    return _obj(choices[0], "choices[0]") if choices else {}


def decode_chat_response(obj: object) -> Chunk:
    """Decode a non-stream /v1/chat/completions response into one done chunk."""
    try:
        d = _response(obj)
        choice = _first_choice(d)
        msg = _opt_obj(choice, "message", "choices[0]") or {}
        where = "choices[0].message"
        calls = _list(msg, "tool_calls", where)
        return Chunk(
            content=_opt_str(msg, "content", where) or "",
            thinking=_thinking(msg, where),
            tool_calls=[_tool_call(v, f"{where}.tool_calls[{i}]", i) for i, v in enumerate(calls)],
            done=True,
            done_reason=_done_reason(_opt_str(choice, "finish_reason", "choices[0]")),
            usage=_usage(d),
        )
    except BadRequest as exc:
        raise _malformed(exc) from exc


def decode_completion_response(obj: object) -> Chunk:
    """Decode a non-stream /v1/completions response into one done chunk."""
    try:
        d = _response(obj)
        choice = _first_choice(d)
        return Chunk(
            content=_opt_str(choice, "text", "choices[0]") or "",
            done=True,
            done_reason=_done_reason(_opt_str(choice, "finish_reason", "choices[0]")),
            usage=_usage(d),
        )
    except BadRequest as exc:
        raise _malformed(exc) from exc


# ---------------------------------------------------------------------------------------------------------
# Client side: response encoders.


def encode_chat_response(chunk: Chunk, model: str) -> JSON:
    """The non-stream /v1/chat/completions response for a merged chunk."""
    message: JSON = {"role": "assistant", "content": chunk.content or (None if chunk.tool_calls else "")}
    if chunk.thinking:
        message["reasoning_content"] = chunk.thinking
    if chunk.tool_calls:
        message["tool_calls"] = [
            {"id": tc.id or _call_id(), "type": "function", "function": _encode_function(tc)}
            for tc in chunk.tool_calls
        ]
    return {
        "id": "chatcmpl-" + os.urandom(12).hex(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(chunk, bool(chunk.tool_calls)),
            }
        ],
        "usage": _usage_json(chunk.usage),
    }


def encode_completion_response(chunk: Chunk, model: str) -> JSON:
    """The non-stream /v1/completions response for a merged chunk."""
    return {
        "id": "cmpl-" + os.urandom(12).hex(),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "text": chunk.content,
                "index": 0,
                "logprobs": None,
                "finish_reason": _finish_reason(chunk, False),
            }
        ],
        "usage": _usage_json(chunk.usage),
    }


# ---------------------------------------------------------------------------------------------------------
# Embeddings, both directions. Base64 vectors are little-endian float32, as OpenAI sends them.


def _unpack_floats(text: str, path: str) -> list[float]:
    try:
        raw = b64decode(text, validate=True)
        vec = array("f")
        vec.frombytes(raw)
    except (Base64Error, ValueError) as exc:
        raise _bad_value(path, "base64 of little-endian float32 values") from exc
    if sys.byteorder == "big":
        vec.byteswap()
    return vec.tolist()


def _pack_floats(vector: list[float]) -> str:
    vec = array("f", vector)
    if sys.byteorder == "big":
        vec.byteswap()
    return b64encode(vec.tobytes()).decode()


def decode_embeddings_result(obj: object, model: str) -> EmbedResult:
    """Decode a /v1/embeddings response (float arrays or base64), ordered by ``index``."""
    try:
        d = _response(obj)
        items: list[tuple[int, list[float]]] = []
        for i, value in enumerate(_list(d, "data", "")):
            path = f"data[{i}]"
            item = _obj(value, path)
            vec = item.get("embedding")
            if isinstance(vec, str):
                floats = _unpack_floats(vec, f"{path}.embedding")
            elif isinstance(vec, list) and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec
            ):
                floats = [float(x) for x in vec]
            else:
                raise _bad_type(f"{path}.embedding", "an array of numbers or a base64 string")
            index = _opt_int(item, "index", path)
            items.append((i if index is None else index, floats))
        items.sort(key=lambda pair: pair[0])
        return EmbedResult(model=model, embeddings=[v for _, v in items], usage=_usage(d) or Usage())
    except BadRequest as exc:
        raise _malformed(exc) from exc


def encode_embeddings_result(res: EmbedResult, base64: bool) -> JSON:
    """The /v1/embeddings response; ``base64`` packs each vector as little-endian float32."""
    data = [
        {"object": "embedding", "index": i, "embedding": _pack_floats(v) if base64 else v}
        for i, v in enumerate(res.embeddings)
    ]
    tokens = res.usage.prompt_tokens
    return {
        "object": "list",
        "data": data,
        "model": res.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
