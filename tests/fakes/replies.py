"""Deterministic "model" behaviour shared by the fake LLM servers.

Everything here is pure and synchronous so tests can compute the exact reply, token counts and
embeddings the fakes will produce (e.g. to compare a gateway's output with a direct call).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

_WORD_RE = re.compile(r"\s*\S+")


def split_words(text: str) -> list[str]:
    """Split text into one piece per whitespace-separated word, keeping the whitespace.

    ``"".join(split_words(t)) == t`` always holds; leading whitespace sticks to the following word and
    trailing whitespace to the last word. An empty or blank text gives a single piece.
    """
    pieces = _WORD_RE.findall(text)
    tail = text[sum(len(p) for p in pieces) :]
    if not pieces:
        return [text]
    if tail:
        pieces[-1] += tail
    return pieces


def split_in(text: str, parts: int) -> list[str]:
    """Split text into ``parts`` contiguous, non-empty (when possible) pieces."""
    n = len(text)
    if n < parts:
        return [text[i : i + 1] for i in range(n)] or [text]
    bounds = [n * i // parts for i in range(parts + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(parts)]


def content_text(content: Any) -> str:
    """The text of a message content: a string, or OpenAI-style parts (text parts joined by a space)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
        return " ".join(texts)
    return str(content)


def count_words(texts: Iterable[str]) -> int:
    """Prompt token count: whitespace-separated words across all texts, at least 1."""
    return max(1, sum(len(t.split()) for t in texts))


def messages_prompt_tokens(messages: Sequence[Any]) -> int:
    return count_words(content_text(m.get("content")) for m in messages if isinstance(m, dict))


def last_user_content(messages: Sequence[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            return content_text(m.get("content"))
    return ""


def fake_embedding(text: str, dimensions: int = 8) -> list[float]:
    """The deterministic 8-dimensional vector the fakes return for ``text``.

    sha256(text) -> 8 little-endian int32 -> value / 2**31, rounded to float32 so that a base64 float32
    encoding round-trips exactly. ``dimensions`` (<= 8) keeps the first N values.
    """
    ints = struct.unpack("<8i", hashlib.sha256(text.encode("utf-8")).digest())
    floats = [struct.unpack("<f", struct.pack("<f", v / 2**31))[0] for v in ints]
    return floats[: max(1, min(8, dimensions))]


def embedding_base64(vector: Sequence[float]) -> str:
    import base64

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def tool_call_id(name: str, arguments: dict[str, Any]) -> str:
    raw = name + "\x00" + json.dumps(arguments, sort_keys=True)
    return "call_" + hashlib.sha256(raw.encode("utf-8")).hexdigest()[:12]


@dataclass(frozen=True)
class Reply:
    """What the fake model answers.

    kind "text": ``pieces`` are the streamed content pieces (``text`` is their concatenation).
    kind "tool_call": the model calls ``tool_name`` with ``tool_args``.
    ``finish`` is "stop" or "length" (text truncated by max_tokens / num_predict).
    """

    kind: Literal["text", "tool_call"]
    pieces: list[str] = field(default_factory=list)
    tool_name: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)
    finish: Literal["stop", "length"] = "stop"

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def call_id(self) -> str:
        return tool_call_id(self.tool_name, self.tool_args)

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.tool_args, ensure_ascii=False, separators=(",", ":"))


def json_reply_pieces(content: str) -> list[str]:
    """The JSON-mode reply ``{"echo": "<content>"}`` in 3 pieces."""
    return ['{"echo": ', json.dumps(content, ensure_ascii=False), "}"]


def _truncate(pieces: list[str], max_tokens: int | None) -> tuple[list[str], Literal["stop", "length"]]:
    if max_tokens is not None and max_tokens > 0 and len(pieces) > max_tokens:
        return pieces[:max_tokens], "length"
    return pieces, "stop"


def plan_chat(
    messages: Sequence[Any],
    tool_names: Sequence[str] = (),
    json_mode: bool = False,
    max_tokens: int | None = None,
) -> Reply:
    """The deterministic chat reply.

    1. last message has role "tool"       -> "tool said: <its content>"
    2. tools given and last role "user"   -> call the first tool with {"query": <last user content>}
    3. json_mode                          -> '{"echo": "<last user content>"}' (3 pieces)
    4. otherwise                          -> "echo: <last user content>", one piece per word
    max_tokens (> 0) truncates text replies to that many pieces with finish "length".
    """
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    role = last.get("role")
    if role == "tool":
        pieces, finish = _truncate(split_words("tool said: " + content_text(last.get("content"))), max_tokens)
        return Reply("text", pieces, finish=finish)
    user = last_user_content(messages)
    if tool_names and role == "user":
        return Reply("tool_call", tool_name=tool_names[0], tool_args={"query": user})
    if json_mode:
        return Reply("text", json_reply_pieces(user))
    pieces, finish = _truncate(split_words("echo: " + user), max_tokens)
    return Reply("text", pieces, finish=finish)


def plan_completion(prompt: str, json_mode: bool = False, max_tokens: int | None = None) -> Reply:
    """Generate / completions reply: "echo: <prompt>" (or the JSON echo in JSON mode)."""
    if json_mode:
        return Reply("text", json_reply_pieces(prompt))
    pieces, finish = _truncate(split_words("echo: " + prompt), max_tokens)
    return Reply("text", pieces, finish=finish)


def tool_names_of(tools: Any) -> list[str]:
    """Function names of Ollama/OpenAI-style tools: [{"type": "function", "function": {"name": ...}}]."""
    names: list[str] = []
    if isinstance(tools, list):
        for t in tools:
            if isinstance(t, dict):
                fn = t.get("function")
                if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                    names.append(fn["name"])
                elif isinstance(t.get("name"), str):
                    names.append(t["name"])
    return names
