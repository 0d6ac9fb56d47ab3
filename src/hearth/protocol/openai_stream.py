"""Stream codecs for the OpenAI API: ChatStreamDecoder turns a backend's SSE data objects into canonical
chunks, and ChatStreamEncoder turns canonical chunks into the SSE data objects a client expects.
hearth.protocol.openai re-exports both and shares the helpers defined here.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from hearth.errors import BadRequest, UpstreamError
from hearth.protocol._fields import _bad_type, _bad_value, _list, _missing, _obj, _opt_int, _opt_obj, _opt_str
from hearth.protocol.canonical import JSON, Chunk, ToolCall, Usage

__all__ = ["ChatStreamDecoder", "ChatStreamEncoder"]

_FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls"}


# ---------------------------------------------------------------------------------------------------------
# Shared with the one-shot codecs in hearth.protocol.openai.


def _arguments(value: object, path: str) -> JSON:
    """Tool-call arguments: a JSON string holding an object ("" meaning none), or an object as-is."""
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    if not isinstance(value, str):
        raise _bad_type(path, "a JSON string")
    if not value.strip():
        return {}
    try:
        decoded = msgspec.json.decode(value)
    except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
        raise BadRequest(f"invalid JSON in '{path}'", param=path) from exc
    if not isinstance(decoded, dict):
        raise _bad_value(path, "a JSON object")
    return decoded


def _usage(d: JSON) -> Usage | None:
    u = _opt_obj(d, "usage", "")
    if u is None:
        return None
    return Usage(
        prompt_tokens=_opt_int(u, "prompt_tokens", "usage") or 0,
        completion_tokens=_opt_int(u, "completion_tokens", "usage") or 0,
    )


def _call_id() -> str:
    return "call_" + os.urandom(12).hex()


def _json_text(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _encode_function(tc: ToolCall) -> JSON:
    return {"name": tc.name, "arguments": _json_text(tc.arguments)}


def _malformed(exc: BadRequest) -> UpstreamError:
    return UpstreamError(f"malformed response from backend: {exc.message}")


def _response(obj: object) -> JSON:
    if not isinstance(obj, dict):
        raise UpstreamError("malformed response from backend: expected a JSON object")
    err = obj.get("error")
    if err is not None:
        message = err.get("message") if isinstance(err, dict) else err
        raise UpstreamError(f"backend error: {message}")
    return obj


def _done_reason(reason: str | None) -> str | None:
    return None if reason is None else _FINISH.get(reason, reason)


def _thinking(d: JSON, where: str) -> str:
    # vLLM sends both names during its rename; take one so the text is not doubled.
    return _opt_str(d, "reasoning_content", where) or _opt_str(d, "reasoning", where) or ""


def _usage_json(usage: Usage | None) -> JSON:
    u = usage or Usage()
    total = u.prompt_tokens + u.completion_tokens
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": total}


def _finish_reason(chunk: Chunk, saw_tools: bool) -> str:
    if saw_tools:
        return "tool_calls"
    return "length" if chunk.done_reason == "length" else "stop"


# ---------------------------------------------------------------------------------------------------------
# Backend side: the stream decoder. A malformed backend response is the backend's fault, so it raises
# UpstreamError (502), as does an in-band {"error": ...} object.


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class ChatStreamDecoder:
    """Turn the SSE data objects of a chat or completion stream into canonical chunks.

    Tool calls arrive as argument fragments, so they are emitted whole once finish_reason comes. The done
    chunk waits for the usage-only chunk that follows finish_reason, or for ``finish()``.
    """

    def __init__(self) -> None:
        self._calls: dict[int, _PartialCall] = {}
        self._finished = False
        self._done_reason: str | None = None
        self._usage: Usage | None = None
        self._closed = False

    def feed(self, obj: object) -> list[Chunk]:
        """Chunks for one SSE data object (not for the ``[DONE]`` marker: call ``finish`` then)."""
        try:
            return self._feed(_response(obj))
        except BadRequest as exc:
            raise _malformed(exc) from exc

    def finish(self) -> list[Chunk]:
        """The chunks still held back; ends with the single done chunk unless it already went out."""
        if self._closed:
            return []
        try:
            out = self._flush_calls()
        except BadRequest as exc:
            raise _malformed(exc) from exc
        out.append(self._close())
        return out

    def _feed(self, d: JSON) -> list[Chunk]:
        if self._closed:
            return []
        usage = _usage(d)
        if usage is not None:
            self._usage = usage
        out: list[Chunk] = []
        choices = _list(d, "choices", "")
        for i, value in enumerate(choices):
            path = f"choices[{i}]"
            choice = _obj(value, path)
            if not _opt_int(choice, "index", path):
                out.extend(self._choice(choice, path))
        if not choices and self._finished and self._usage is not None:
            out.append(self._close())
        return out

    def _choice(self, choice: JSON, path: str) -> list[Chunk]:
        delta = _opt_obj(choice, "delta", path)
        if delta is None:
            content, thinking = _opt_str(choice, "text", path) or "", ""
        else:
            dpath = f"{path}.delta"
            content, thinking = _opt_str(delta, "content", dpath) or "", _thinking(delta, dpath)
            for j, frag in enumerate(_list(delta, "tool_calls", dpath)):
                self._add_fragment(frag, f"{dpath}.tool_calls[{j}]")
        out = [Chunk(content=content, thinking=thinking)] if content or thinking else []
        reason = _opt_str(choice, "finish_reason", path)
        if reason is not None and not self._finished:
            self._finished = True
            self._done_reason = _done_reason(reason)
            out.extend(self._flush_calls())
        return out

    def _add_fragment(self, value: object, path: str) -> None:
        frag = _obj(value, path)
        cid = _opt_str(frag, "id", path) or ""
        index = _opt_int(frag, "index", path)
        if index is None:
            # Some servers omit the index: a new id starts a new call, anything else continues the last.
            last = max(self._calls, default=-1)
            index = last + 1 if last < 0 or (cid and cid != self._calls[last].id) else last
        call = self._calls.setdefault(index, _PartialCall())
        call.id = call.id or cid
        fn = _opt_obj(frag, "function", path)
        if fn is None:
            return
        # Servers that repeat the name on every fragment would double a concatenated one.
        call.name = call.name or _opt_str(fn, "name", f"{path}.function") or ""
        args = fn.get("arguments")
        if args is not None:
            apath = f"{path}.function.arguments"
            call.arguments.append(args if isinstance(args, str) else _json_text(_arguments(args, apath)))

    def _flush_calls(self) -> list[Chunk]:
        if not self._calls:
            return []
        calls = []
        for position, (_, c) in enumerate(sorted(self._calls.items())):
            path = f"tool_calls[{position}]"
            if not c.name:
                raise _missing(f"{path}.function.name")
            args = _arguments("".join(c.arguments), f"{path}.function.arguments")
            calls.append(ToolCall(name=c.name, arguments=args, id=c.id, index=position))
        self._calls = {}
        return [Chunk(tool_calls=calls)]

    def _close(self) -> Chunk:
        self._closed = True
        return Chunk(done=True, done_reason=self._done_reason, usage=self._usage)


# ---------------------------------------------------------------------------------------------------------
# Client side: the stream encoder.


class ChatStreamEncoder:
    """Turn canonical chunks into the SSE data objects an OpenAI client expects, one stream per instance."""

    def __init__(self, model: str, include_usage: bool, kind: Literal["chat", "completion"] = "chat") -> None:
        self.model = model
        self.include_usage = include_usage
        self.kind = kind
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + os.urandom(12).hex()
        self.created = int(time.time())
        self._started = False
        self._calls_sent = 0

    def encode(self, chunk: Chunk) -> list[JSON]:
        """The data objects for ``chunk``: none, one, or (for the done chunk with usage) two."""
        choice = self._chat_choice(chunk) if self.kind == "chat" else self._text_choice(chunk)
        out = [self._envelope([choice])] if choice is not None else []
        if chunk.done and self.include_usage:
            out.append(self._envelope([], usage=_usage_json(chunk.usage)))
        return out

    def _chat_choice(self, chunk: Chunk) -> JSON | None:
        delta: JSON = {}
        if not self._started:
            self._started = True
            delta = {"role": "assistant", "content": chunk.content}
        elif chunk.content:
            delta["content"] = chunk.content
        if chunk.thinking:
            delta["reasoning_content"] = chunk.thinking
        if chunk.tool_calls:
            # A running index, not ToolCall.index: clients merge fragments by index, so two calls that
            # both arrived as index 0 in separate chunks would be glued together.
            delta["tool_calls"] = [
                {
                    "index": self._calls_sent + i,
                    "id": tc.id or _call_id(),
                    "type": "function",
                    "function": _encode_function(tc),
                }
                for i, tc in enumerate(chunk.tool_calls)
            ]
            self._calls_sent += len(chunk.tool_calls)
        if not delta and not chunk.done:
            return None
        finish = _finish_reason(chunk, self._calls_sent > 0) if chunk.done else None
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def _text_choice(self, chunk: Chunk) -> JSON | None:
        if not chunk.content and not chunk.done:
            return None
        finish = _finish_reason(chunk, False) if chunk.done else None
        return {"text": chunk.content, "index": 0, "logprobs": None, "finish_reason": finish}

    def _envelope(self, choices: list[JSON], usage: JSON | None = None) -> JSON:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        out: JSON = {"id": self.id, "object": obj, "created": self.created, "model": self.model}
        out["choices"] = choices
        if usage is not None:
            out["usage"] = usage
        return out
