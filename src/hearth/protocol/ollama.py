"""Translate Ollama's native API (/api/chat, /api/generate, /api/embed, /api/embeddings) to and from
the canonical model, in both directions: client requests and NDJSON responses, backend requests and chunks.
"""

from __future__ import annotations

import datetime as _dt
import math
import re

from hearth.errors import BadRequest, UpstreamError
from hearth.protocol._fields import (
    _bad_type,
    _bad_value,
    _body,
    _bool,
    _list,
    _obj,
    _opt_int,
    _opt_obj,
    _opt_str,
    _path,
    _req_obj,
    _req_str,
    _str_list,
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

__all__ = [
    "decode_chat",
    "decode_chat_chunk",
    "decode_embed",
    "decode_embed_result",
    "decode_embeddings",
    "decode_generate",
    "decode_generate_chunk",
    "encode_chat",
    "encode_chat_chunk",
    "encode_embed",
    "encode_embed_result",
    "encode_embeddings_result",
    "encode_generate",
    "encode_generate_chunk",
    "now_iso",
    "parse_keep_alive",
]

# Ollama's final-chunk fields in the order Ollama writes them, with the Usage attribute each carries.
_FINAL_FIELDS = (
    ("total_duration", "total_duration"),
    ("load_duration", "load_duration"),
    ("prompt_eval_count", "prompt_tokens"),
    ("prompt_eval_duration", "prompt_eval_duration"),
    ("eval_count", "completion_tokens"),
    ("eval_duration", "eval_duration"),
)


# ---------------------------------------------------------------------------------------------------------
# Field validation beyond the shared checks in _fields. A path names the field the way a client wrote it,
# e.g. "messages[1].content".


def _format(d: JSON) -> str | JSON | None:
    value = d.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return value
    raise _bad_value("format", '"json" or a JSON schema object')


def _keep_alive(d: JSON) -> str | int | float | None:
    value = d.get("keep_alive")
    if value is not None and (not isinstance(value, (str, int, float)) or isinstance(value, bool)):
        raise _bad_type("keep_alive", "a duration string or a number of seconds")
    try:
        parse_keep_alive(value)
    except ValueError:
        raise _bad_value("keep_alive", "a number of seconds or a duration like '5m' or '1h30m'") from None
    return value  # sent on as the client wrote it


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> float | None:
    """A request's keep_alive in seconds (negative: forever); None when absent. Numbers are
    seconds; strings are Go durations ("5m", "1h30m", "-1s") or numbers of seconds ("0", "-1").
    Raises ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            body = text.lstrip("+-")
            parts = _DURATION.findall(body)
            if parts and "".join(n + u for n, u in parts) == body:
                sign = -1.0 if text.startswith("-") else 1.0
                return sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
        else:
            if not math.isnan(seconds):
                return seconds
    raise ValueError(f"invalid keep_alive {value!r}: expected seconds or a duration like '5m'")


def _think(d: JSON) -> bool | str | None:
    value = d.get("think")
    if value is None or isinstance(value, (bool, str)):
        return value
    raise _bad_type("think", "a boolean or a string")


def _options(d: JSON) -> JSON:
    return dict(_opt_obj(d, "options", "") or {})


# ---------------------------------------------------------------------------------------------------------
# Client side: request decoders.


def decode_chat(body: object) -> ChatRequest:
    """Decode a /api/chat body. Raises BadRequest naming the offending field."""
    b = _body(body)
    return ChatRequest(
        model=_req_str(b, "model", ""),
        messages=[_message(v, f"messages[{i}]") for i, v in enumerate(_list(b, "messages", ""))],
        stream=_bool(b, "stream", "", True),
        tools=[_tool(v, f"tools[{i}]") for i, v in enumerate(_list(b, "tools", ""))],
        format=_format(b),
        options=_options(b),
        keep_alive=_keep_alive(b),
        think=_think(b),
    )


def _message(value: object, path: str) -> Message:
    m = _obj(value, path)
    return Message(
        role=_req_str(m, "role", path),
        content=_opt_str(m, "content", path) or "",
        images=_str_list(m, "images", path),
        tool_calls=[
            _tool_call(v, f"{path}.tool_calls[{i}]", i) for i, v in enumerate(_list(m, "tool_calls", path))
        ],
        tool_call_id=_opt_str(m, "tool_call_id", path),
        tool_name=_opt_str(m, "tool_name", path),
        thinking=_opt_str(m, "thinking", path),
    )


def _tool_call(value: object, path: str, position: int) -> ToolCall:
    tc = _obj(value, path)
    fpath = f"{path}.function"
    fn = _req_obj(tc, "function", path)
    index = _opt_int(fn, "index", fpath)
    return ToolCall(
        name=_req_str(fn, "name", fpath),
        arguments=dict(_opt_obj(fn, "arguments", fpath) or {}),
        id=_opt_str(tc, "id", path) or "",
        index=position if index is None else index,
    )


def _tool(value: object, path: str) -> Tool:
    t = _obj(value, path)
    if _opt_str(t, "type", path) not in (None, "function"):
        raise _bad_value(f"{path}.type", '"function"')
    fpath = f"{path}.function"
    fn = _req_obj(t, "function", path)
    return Tool(
        name=_req_str(fn, "name", fpath),
        description=_opt_str(fn, "description", fpath) or "",
        parameters=dict(_opt_obj(fn, "parameters", fpath) or {}),
    )


def decode_generate(body: object) -> CompletionRequest:
    """Decode a /api/generate body; a missing prompt is "" (Ollama's load/unload request)."""
    b = _body(body)
    return CompletionRequest(
        model=_req_str(b, "model", ""),
        prompt=_opt_str(b, "prompt", "") or "",
        stream=_bool(b, "stream", "", True),
        suffix=_opt_str(b, "suffix", ""),
        system=_opt_str(b, "system", ""),
        images=_str_list(b, "images", ""),
        raw=_bool(b, "raw", "", False),
        format=_format(b),
        options=_options(b),
        keep_alive=_keep_alive(b),
        think=_think(b),
    )


def decode_embed(body: object) -> EmbedRequest:
    """Decode a /api/embed body. An empty or missing input gives no inputs: Ollama's load request."""
    b = _body(body)
    value = b.get("input")
    if value is None or value == "":
        inputs: list[str] = []
    elif isinstance(value, str):
        inputs = [value]
    else:
        inputs = _str_list(b, "input", "")
    return EmbedRequest(
        model=_req_str(b, "model", ""),
        inputs=inputs,
        truncate=_bool(b, "truncate", "", True),
        dimensions=_opt_int(b, "dimensions", ""),
        options=_options(b),
        keep_alive=_keep_alive(b),
    )


def decode_embeddings(body: object) -> EmbedRequest:
    """Decode a legacy /api/embeddings body (one ``prompt``)."""
    b = _body(body)
    prompt = _opt_str(b, "prompt", "")
    return EmbedRequest(
        model=_req_str(b, "model", ""),
        inputs=[prompt] if prompt else [],
        options=_options(b),
        keep_alive=_keep_alive(b),
    )


# ---------------------------------------------------------------------------------------------------------
# Backend side: request encoders. None and empty fields are left out; keep_alive 0 and think false are
# meaningful (unload, no thinking) so only None is left out for those.


def _put_common(
    body: JSON,
    fmt: str | JSON | None,
    options: JSON,
    keep_alive: str | int | float | None,
    think: bool | str | None,
) -> None:
    if fmt is not None:
        body["format"] = fmt
    if options:
        body["options"] = options
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    if think is not None:
        body["think"] = think


def _encode_tool_call(tc: ToolCall) -> JSON:
    fn = {"index": tc.index, "name": tc.name, "arguments": tc.arguments}
    return {"id": tc.id, "function": fn} if tc.id else {"function": fn}


def _encode_message(m: Message) -> JSON:
    out: JSON = {"role": m.role, "content": m.content}
    if m.thinking:
        out["thinking"] = m.thinking
    if m.images:
        out["images"] = list(m.images)
    if m.tool_calls:
        out["tool_calls"] = [_encode_tool_call(tc) for tc in m.tool_calls]
    if m.tool_name is not None:
        out["tool_name"] = m.tool_name
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def encode_chat(req: ChatRequest) -> JSON:
    """The /api/chat body for ``req``."""
    body: JSON = {
        "model": req.model,
        "messages": [_encode_message(m) for m in req.messages],
        "stream": req.stream,
    }
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters}
                if t.description
                else {"name": t.name, "parameters": t.parameters},
            }
            for t in req.tools
        ]
    _put_common(body, req.format, req.options, req.keep_alive, req.think)
    return body


def encode_generate(req: CompletionRequest) -> JSON:
    """The /api/generate body for ``req``."""
    body: JSON = {"model": req.model, "prompt": req.prompt, "stream": req.stream}
    if req.suffix is not None:
        body["suffix"] = req.suffix
    if req.system is not None:
        body["system"] = req.system
    if req.images:
        body["images"] = list(req.images)
    if req.raw:
        body["raw"] = True
    _put_common(body, req.format, req.options, req.keep_alive, req.think)
    return body


def encode_embed(req: EmbedRequest) -> JSON:
    """The /api/embed body for ``req``; ``input`` is always a list."""
    body: JSON = {"model": req.model, "input": list(req.inputs)}
    if not req.truncate:
        body["truncate"] = False
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    if req.options:
        body["options"] = req.options
    if req.keep_alive is not None:
        body["keep_alive"] = req.keep_alive
    return body


# ---------------------------------------------------------------------------------------------------------
# Backend side: response decoders. A malformed backend response is the backend's fault, so these raise
# UpstreamError (502), as does an in-band {"error": ...} line.


def _response(obj: object) -> JSON:
    if not isinstance(obj, dict):
        raise UpstreamError("malformed response from backend: expected a JSON object")
    if obj.get("error") is not None:
        raise UpstreamError(f"backend error: {obj['error']}")
    return obj


def _usage(d: JSON) -> Usage:
    return Usage(**{attr: _opt_int(d, key, "") or 0 for key, attr in _FINAL_FIELDS})


def _finish_chunk(d: JSON, chunk: Chunk, holder: JSON, where: str) -> Chunk:
    """Fill the tool calls (found in ``holder``, at ``where``) and the done fields of ``chunk``."""
    calls = _list(holder, "tool_calls", where)
    chunk.tool_calls = [_tool_call(v, f"{_path(where, 'tool_calls')}[{i}]", i) for i, v in enumerate(calls)]
    chunk.done = _bool(d, "done", "", False)
    chunk.done_reason = _opt_str(d, "done_reason", "")
    if chunk.done:
        chunk.usage = _usage(d)
    return chunk


def decode_chat_chunk(obj: object) -> Chunk:
    """Decode one /api/chat NDJSON line (or the whole non-stream response)."""
    try:
        d = _response(obj)
        msg = _opt_obj(d, "message", "") or {}
        chunk = Chunk(
            content=_opt_str(msg, "content", "message") or "",
            thinking=_opt_str(msg, "thinking", "message") or "",
        )
        return _finish_chunk(d, chunk, msg, "message")
    except BadRequest as exc:
        raise UpstreamError(f"malformed response from backend: {exc.message}") from exc


def decode_generate_chunk(obj: object) -> Chunk:
    """Decode one /api/generate NDJSON line (or the whole non-stream response)."""
    try:
        d = _response(obj)
        chunk = Chunk(content=_opt_str(d, "response", "") or "", thinking=_opt_str(d, "thinking", "") or "")
        return _finish_chunk(d, chunk, d, "")
    except BadRequest as exc:
        raise UpstreamError(f"malformed response from backend: {exc.message}") from exc


def decode_embed_result(obj: object, model: str) -> EmbedResult:
    """Decode a /api/embed response; ``model`` is what the result reports (usually the client's name)."""
    try:
        d = _response(obj)
        vectors: list[list[float]] = []
        for i, vec in enumerate(_list(d, "embeddings", "")):
            if not isinstance(vec, list):
                raise _bad_type(f"embeddings[{i}]", "an array")
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vec):
                raise _bad_type(f"embeddings[{i}]", "an array of numbers")
            vectors.append([float(x) for x in vec])
        return EmbedResult(model=model, embeddings=vectors, usage=_usage(d))
    except BadRequest as exc:
        raise UpstreamError(f"malformed response from backend: {exc.message}") from exc


# ---------------------------------------------------------------------------------------------------------
# Client side: response encoders, in the exact shape Ollama writes.


def now_iso() -> str:
    """The current UTC time as Ollama writes ``created_at`` (RFC 3339, microseconds, ``Z``)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _put_final(out: JSON, chunk: Chunk) -> None:
    # Ollama reports "stop" when a turn ends in tool calls; "tool_calls" is an OpenAI-side reason.
    reason = chunk.done_reason
    out["done_reason"] = "stop" if reason in (None, "", "tool_calls") else reason
    usage = chunk.usage or Usage()
    for key, attr in _FINAL_FIELDS:
        value = getattr(usage, attr)
        if value:
            out[key] = value


def encode_chat_chunk(chunk: Chunk, model: str, created_at: str) -> JSON:
    """One /api/chat NDJSON object (also the non-stream response when given a merged chunk)."""
    message: JSON = {"role": "assistant", "content": chunk.content}
    if chunk.thinking:
        message["thinking"] = chunk.thinking
    if chunk.tool_calls:
        message["tool_calls"] = [_encode_tool_call(tc) for tc in chunk.tool_calls]
    out: JSON = {"model": model, "created_at": created_at, "message": message, "done": chunk.done}
    if chunk.done:
        _put_final(out, chunk)
    return out


def encode_generate_chunk(chunk: Chunk, model: str, created_at: str) -> JSON:
    """One /api/generate NDJSON object (also the non-stream response when given a merged chunk)."""
    out: JSON = {"model": model, "created_at": created_at, "response": chunk.content}
    if chunk.thinking:
        out["thinking"] = chunk.thinking
    if chunk.tool_calls:
        out["tool_calls"] = [_encode_tool_call(tc) for tc in chunk.tool_calls]
    out["done"] = chunk.done
    if chunk.done:
        _put_final(out, chunk)
    return out


def encode_embed_result(res: EmbedResult) -> JSON:
    """The /api/embed response; zero timings and counts are left out, as Ollama does."""
    out: JSON = {"model": res.model, "embeddings": res.embeddings}
    for key, value in (
        ("total_duration", res.usage.total_duration),
        ("load_duration", res.usage.load_duration),
        ("prompt_eval_count", res.usage.prompt_tokens),
    ):
        if value:
            out[key] = value
    return out


def encode_embeddings_result(res: EmbedResult) -> JSON:
    """The legacy /api/embeddings response: the first vector only (empty for a load request)."""
    return {"embedding": res.embeddings[0] if res.embeddings else []}
