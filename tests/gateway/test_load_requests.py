"""Ollama's load/unload requests (an empty prompt) for a model an OpenAI-compatible backend serves."""

from __future__ import annotations

from typing import Any

from tests.conftest import make_settings
from tests.fakes import FakeOpenAI


def test_open_webui_unload_request_is_answered_without_calling_the_backend(live: Any, oc: Any) -> None:
    with FakeOpenAI(models=["gpt-x"]) as c:
        hearth = live(make_settings([{"name": "c", "kind": "openai", "url": c.url + "/v1"}]))
        reply = oc(hearth.url).generate(model="gpt-x", prompt="", keep_alive=0, stream=False)
        assert reply.done
        assert reply.done_reason == "unload"
        assert c.requests_to("/v1/completions") == []


def test_empty_chat_loads_like_ollama_does(live: Any, oc: Any) -> None:
    with FakeOpenAI(models=["gpt-x"]) as c:
        hearth = live(make_settings([{"name": "c", "kind": "openai", "url": c.url + "/v1"}]))
        reply = oc(hearth.url).chat(model="gpt-x", messages=[], stream=False)
        assert reply.done_reason == "load"
        assert c.requests_to("/v1/chat/completions") == []
