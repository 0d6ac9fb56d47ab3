"""Fake LLM backends for Hearth's tests: real HTTP servers on 127.0.0.1 speaking the Ollama and OpenAI
wire protocols, each in its own thread and event loop.

    with FakeOllama(models=["llama3.1:8b"], loaded=["llama3.1:8b"]) as fake:
        ...  # fake.url == "http://127.0.0.1:PORT"
"""

from __future__ import annotations

from .base import FakeServer, Recorded
from .fake_ollama import FakeOllama, host_allowed, normalize_model, parse_keep_alive
from .fake_openai import FakeOpenAI
from .replies import (
    Reply,
    count_words,
    embedding_base64,
    fake_embedding,
    json_reply_pieces,
    plan_chat,
    plan_completion,
    split_words,
)

__all__ = [
    "FakeOllama",
    "FakeOpenAI",
    "FakeServer",
    "Recorded",
    "Reply",
    "count_words",
    "embedding_base64",
    "fake_embedding",
    "host_allowed",
    "json_reply_pieces",
    "normalize_model",
    "parse_keep_alive",
    "plan_chat",
    "plan_completion",
    "split_words",
]
