"""The text of a reply, for the tenants who opt in to stored content (``store_content``).

Only their calls ever reach this module: the request path of everyone else neither buffers nor
parses a reply. A relayed (passthrough) stream is kept as the bytes sent on and read here once it
has ended; a translated one adds up its canonical chunks' text instead (gateway/dispatch.py).
The text is the reply's content only: no thinking, no tool calls.
"""

from __future__ import annotations

import msgspec


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message | None = None  # OpenAI, whole chat reply
    delta: _Message | None = None  # OpenAI, chat stream event
    text: str | None = None  # OpenAI completions, whole or streamed


class _Record(msgspec.Struct):
    """A whole reply, an NDJSON line or an SSE event's data, in either dialect."""

    message: _Message | None = None  # Ollama chat
    response: str | None = None  # Ollama generate
    choices: list[_Choice] = msgspec.field(default_factory=list)


_dec = msgspec.json.Decoder(_Record)


def _text(record: bytes) -> str:
    try:
        r = _dec.decode(record)
    except msgspec.DecodeError:
        return ""  # an error line, a keep-alive comment: no reply text
    parts = [r.message.content or "" if r.message else "", r.response or ""]
    for c in r.choices:
        for m in (c.message, c.delta):
            if m is not None and m.content:
                parts.append(m.content)
        parts.append(c.text or "")
    return "".join(parts)


def reply_text(body: bytes) -> str:
    """The text of a whole (non-stream) reply: Ollama chat or generate, OpenAI choices."""
    return _text(body)


def stream_text(dialect: str, data: bytes) -> str:
    """The text of a relayed stream: Ollama's NDJSON lines, or OpenAI's SSE events."""
    out: list[str] = []
    for line in data.splitlines():
        line = line.strip()
        if dialect != "ollama":
            if not line.startswith(b"data:"):
                continue  # event names, ids, comments, the blank line between events
            line = line[5:].strip()
        if line.startswith(b"{"):
            out.append(_text(line))
    return "".join(out)
