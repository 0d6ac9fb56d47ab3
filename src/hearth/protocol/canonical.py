"""The canonical request and chunk model that every client dialect and every backend maps to.

Each client dialect (Ollama, OpenAI) decodes into these types and each backend kind encodes
out of them, so N dialects x M backends cost N + M translators. Options use Ollama's names
(``num_predict``, ``num_ctx``, ``temperature`` ...) because they are the richer set; the OpenAI
translator maps ``max_tokens`` to ``num_predict`` and so on.

When a request's dialect matches its backend's kind the gateway does not build these objects
at all: the bytes pass through and only the model name and final usage are peeked at.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]


class Endpoint(enum.Enum):
    """What a request asks a model to do."""

    CHAT = "chat"
    COMPLETION = "completion"
    EMBED = "embed"


# Options that make Ollama reload a runner when they change (server/sched.go, needsReload).
# Aliases enforce these; sampling options are only defaults a client may override.
RUNNER_OPTIONS = frozenset({"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"})


@dataclass(slots=True)
class ToolCall:
    """One function call requested by the model. ``arguments`` is always a decoded object."""

    name: str
    arguments: JSON
    id: str = ""
    index: int = 0


@dataclass(slots=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str = ""
    images: list[str] = field(default_factory=list)  # base64, no data: prefix
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    tool_name: str | None = None
    thinking: str | None = None


@dataclass(slots=True)
class Tool:
    name: str
    description: str = ""
    parameters: JSON = field(default_factory=dict)


@dataclass(slots=True)
class ChatRequest:
    model: str
    messages: list[Message]
    stream: bool = True
    tools: list[Tool] = field(default_factory=list)
    # None, "json", or a JSON schema object
    format: str | JSON | None = None
    options: JSON = field(default_factory=dict)
    keep_alive: str | int | float | None = None
    think: bool | str | None = None
    # OpenAI stream_options.include_usage: a final chunk carries usage
    include_usage: bool = False


@dataclass(slots=True)
class CompletionRequest:
    model: str
    prompt: str
    stream: bool = True
    suffix: str | None = None
    system: str | None = None
    images: list[str] = field(default_factory=list)
    raw: bool = False
    format: str | JSON | None = None
    options: JSON = field(default_factory=dict)
    keep_alive: str | int | float | None = None
    think: bool | str | None = None
    include_usage: bool = False


@dataclass(slots=True)
class EmbedRequest:
    model: str
    inputs: list[str]
    truncate: bool = True
    dimensions: int | None = None
    options: JSON = field(default_factory=dict)
    keep_alive: str | int | float | None = None


@dataclass(slots=True)
class Usage:
    """Token counts and timings as reported by the backend (durations in nanoseconds)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_duration: int = 0
    load_duration: int = 0
    prompt_eval_duration: int = 0
    eval_duration: int = 0


@dataclass(slots=True)
class Chunk:
    """One streamed piece of a chat or completion. The last one has ``done`` set."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    done: bool = False
    done_reason: str | None = None  # stop | length | tool_calls | load | unload
    usage: Usage | None = None


@dataclass(slots=True)
class EmbedResult:
    model: str
    embeddings: list[list[float]]
    usage: Usage = field(default_factory=Usage)


def merge_chunks(chunks: list[Chunk]) -> Chunk:
    """Join a stream into the single object a non-streaming client expects."""
    out = Chunk(done=True)
    content: list[str] = []
    thinking: list[str] = []
    for c in chunks:
        content.append(c.content)
        thinking.append(c.thinking)
        out.tool_calls.extend(c.tool_calls)
        if c.done_reason:
            out.done_reason = c.done_reason
        if c.usage is not None:
            out.usage = c.usage
    out.content = "".join(content)
    out.thinking = "".join(thinking)
    return out
