"""Aliases and per-model defaults, seen from the backend: the fakes record every request body, so
each test checks what the backend actually received when a real client used an alias.

Runner options (num_ctx ...) and keep_alive from an alias or a ``models:`` entry are enforced over
the client's; sampling options (temperature, top_p ...) are defaults the client may override.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI, plan_chat

LLAMA = "llama3.1:8b"
QWEN = "qwen2.5:7b"
NOMIC = "nomic-embed-text:latest"
GPT = "gpt-4o-mini"

ALIASES: dict[str, Any] = {
    "healthrag": {"model": LLAMA, "options": {"num_ctx": 8192, "temperature": 0.2}, "keep_alive": "30m"},
    "qwen-creative": {"model": QWEN, "options": {"temperature": 0.9}},
    "qwen-long": {"model": QWEN, "options": {"num_ctx": 32768}, "keep_alive": "2h"},
    "embedder": {"model": NOMIC, "options": {"num_ctx": 2048}, "keep_alive": -1},
    "cloudy": {"model": GPT, "options": {"temperature": 0.1, "num_predict": 64, "num_ctx": 4096}},
}
MODELS: dict[str, Any] = {QWEN: {"options": {"num_ctx": 16384, "top_p": 0.5}, "keep_alive": "1h"}}
MSG = [{"role": "user", "content": "hello there"}]


class Env:
    def __init__(self, hearth: LiveHearth, local: FakeOllama, cloud: FakeOpenAI) -> None:
        self.hearth = hearth
        self.url = hearth.url
        self.local = local
        self.cloud = cloud

    def sent(self, path: str) -> dict[str, Any]:
        fake = self.cloud if path.startswith("/v1/") else self.local
        reqs = fake.requests_to(path)
        assert len(reqs) == 1, f"expected one request to {path}, got {len(reqs)}"
        body = reqs[0].json
        assert isinstance(body, dict)
        return body


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with FakeOllama(models=[LLAMA, QWEN, NOMIC]) as local, FakeOpenAI(models=[GPT]) as cloud:
        settings = make_settings(
            [
                {"name": "local", "kind": "ollama", "url": local.url},
                {"name": "cloud", "kind": "openai", "url": cloud.url + "/v1"},
            ],
            aliases=ALIASES,
            models=MODELS,
        )
        with LiveHearth(settings) as hearth:
            yield Env(hearth, local, cloud)


@pytest.fixture(autouse=True)
def _forget_requests(env: Env) -> None:
    env.local.reset()
    env.cloud.reset()


@pytest.fixture(scope="module")
def oc(env: Env) -> Iterator[ollama.Client]:
    with ollama.Client(host=env.url) as c:
        yield c


@pytest.fixture(scope="module")
def ai(env: Env) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=env.url + "/v1", api_key="anything", max_retries=0) as c:
        yield c


# ---------------------------------------------------------------------------------------------------------
# Ollama clients through an alias to an Ollama backend


def test_alias_reaches_the_backend_as_its_real_model(env: Env, oc: ollama.Client) -> None:
    reply = oc.chat(model="healthrag", messages=MSG, stream=False)
    assert env.sent("/api/chat")["model"] == LLAMA
    assert reply.message.content == plan_chat(MSG).text


def test_alias_options_reach_the_backend_when_the_client_sends_none(env: Env, oc: ollama.Client) -> None:
    oc.chat(model="healthrag", messages=MSG, stream=False)
    body = env.sent("/api/chat")
    assert body["options"] == {"num_ctx": 8192, "temperature": 0.2}
    assert body["keep_alive"] == "30m"


def test_alias_num_ctx_is_enforced_over_the_clients(env: Env, oc: ollama.Client) -> None:
    oc.chat(model="healthrag", messages=MSG, options={"num_ctx": 2048}, stream=False)
    assert env.sent("/api/chat")["options"]["num_ctx"] == 8192


def test_client_temperature_overrides_the_alias_default(env: Env, oc: ollama.Client) -> None:
    oc.chat(model="healthrag", messages=MSG, options={"temperature": 0.9, "num_ctx": 1024}, stream=False)
    assert env.sent("/api/chat")["options"] == {"num_ctx": 8192, "temperature": 0.9}


def test_client_options_the_alias_does_not_set_reach_the_backend(env: Env, oc: ollama.Client) -> None:
    oc.chat(model="healthrag", messages=MSG, options={"top_k": 7, "seed": 3}, stream=False)
    assert env.sent("/api/chat")["options"] == {"num_ctx": 8192, "temperature": 0.2, "top_k": 7, "seed": 3}


def test_alias_keep_alive_is_enforced_over_the_clients(env: Env, oc: ollama.Client) -> None:
    oc.chat(model="healthrag", messages=MSG, keep_alive=-1, stream=False)
    assert env.sent("/api/chat")["keep_alive"] == "30m"


def test_alias_options_apply_to_a_streamed_chat(env: Env, oc: ollama.Client) -> None:
    parts = list(oc.chat(model="healthrag", messages=MSG, options={"num_ctx": 512}, stream=True))
    assert "".join(p.message.content or "" for p in parts) == plan_chat(MSG).text
    assert env.sent("/api/chat")["options"] == {"num_ctx": 8192, "temperature": 0.2}


def test_alias_options_apply_to_generate(env: Env, oc: ollama.Client) -> None:
    oc.generate(model="healthrag", prompt="hi", options={"num_ctx": 512}, keep_alive="1m", stream=False)
    body = env.sent("/api/generate")
    assert (body["model"], body["options"], body["keep_alive"]) == (
        LLAMA,
        {"num_ctx": 8192, "temperature": 0.2},
        "30m",
    )


def test_alias_options_apply_to_embed(env: Env, oc: ollama.Client) -> None:
    oc.embed(model="embedder", input="text", options={"num_ctx": 8192})
    body = env.sent("/api/embed")
    assert (body["model"], body["options"], body["keep_alive"]) == (NOMIC, {"num_ctx": 2048}, -1)


# ---------------------------------------------------------------------------------------------------------
# models: per-model defaults, for clients using the real name


def test_per_model_num_ctx_is_enforced_for_clients_using_the_real_name(env: Env, oc: ollama.Client) -> None:
    oc.chat(model=QWEN, messages=MSG, options={"num_ctx": 4096}, stream=False)
    assert env.sent("/api/chat")["options"]["num_ctx"] == 16384


def test_per_model_defaults_reach_the_backend_when_the_client_sends_none(env: Env, oc: ollama.Client) -> None:
    oc.chat(model=QWEN, messages=MSG, stream=False)
    body = env.sent("/api/chat")
    assert (body["model"], body["options"], body["keep_alive"]) == (
        QWEN,
        {"num_ctx": 16384, "top_p": 0.5},
        "1h",
    )


def test_per_model_sampling_default_yields_to_the_client(env: Env, oc: ollama.Client) -> None:
    oc.chat(model=QWEN, messages=MSG, options={"top_p": 0.95}, stream=False)
    assert env.sent("/api/chat")["options"] == {"num_ctx": 16384, "top_p": 0.95}


def test_per_model_keep_alive_is_enforced_for_clients_using_the_real_name(
    env: Env, oc: ollama.Client
) -> None:
    oc.chat(model=QWEN, messages=MSG, keep_alive="5m", stream=False)
    assert env.sent("/api/chat")["keep_alive"] == "1h"


def test_per_model_defaults_also_apply_through_an_alias_of_that_model(env: Env, oc: ollama.Client) -> None:
    oc.chat(model="qwen-creative", messages=MSG, stream=False)
    body = env.sent("/api/chat")
    assert (body["options"], body["keep_alive"]) == (
        {"num_ctx": 16384, "top_p": 0.5, "temperature": 0.9},
        "1h",
    )


def test_alias_options_and_keep_alive_win_over_per_model_defaults(env: Env, oc: ollama.Client) -> None:
    oc.chat(model="qwen-long", messages=MSG, stream=False)
    body = env.sent("/api/chat")
    assert (body["options"], body["keep_alive"]) == ({"num_ctx": 32768, "top_p": 0.5}, "2h")


def test_a_model_without_defaults_gets_the_clients_bytes_unchanged(env: Env) -> None:
    raw = b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": false}'
    with httpx.Client(base_url=env.url, timeout=30) as http:
        r = http.post("/api/chat", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 200
    assert env.local.requests_to("/api/chat")[0].body == raw


# ---------------------------------------------------------------------------------------------------------
# OpenAI clients through an alias to an Ollama backend: num_ctx and keep_alive, which Ollama's own /v1
# cannot take


def test_openai_client_through_an_alias_gets_num_ctx_and_keep_alive(env: Env, ai: openai.OpenAI) -> None:
    out = ai.chat.completions.create(model="healthrag", messages=MSG)
    body = env.sent("/api/chat")
    assert body["model"] == LLAMA
    assert body["options"] == {"num_ctx": 8192, "temperature": 0.2}
    assert body["keep_alive"] == "30m"
    assert out.choices[0].message.content == plan_chat(MSG).text


def test_openai_client_temperature_overrides_the_alias_default(env: Env, ai: openai.OpenAI) -> None:
    ai.chat.completions.create(model="healthrag", messages=MSG, temperature=0.7, max_tokens=5)
    assert env.sent("/api/chat")["options"] == {"num_ctx": 8192, "temperature": 0.7, "num_predict": 5}


def test_openai_streaming_client_through_an_alias_gets_num_ctx(env: Env, ai: openai.OpenAI) -> None:
    with ai.chat.completions.create(model="healthrag", messages=MSG, stream=True) as stream:
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == plan_chat(MSG).text
    assert env.sent("/api/chat")["options"]["num_ctx"] == 8192


def test_openai_client_per_model_defaults_apply_with_the_real_name(env: Env, ai: openai.OpenAI) -> None:
    ai.chat.completions.create(model=QWEN, messages=MSG)
    body = env.sent("/api/chat")
    assert (body["options"], body["keep_alive"]) == ({"num_ctx": 16384, "top_p": 0.5}, "1h")


def test_openai_completions_through_an_alias_get_num_ctx(env: Env, ai: openai.OpenAI) -> None:
    ai.completions.create(model="healthrag", prompt="hi")
    body = env.sent("/api/generate")
    assert (body["model"], body["options"], body["keep_alive"]) == (
        LLAMA,
        {"num_ctx": 8192, "temperature": 0.2},
        "30m",
    )


def test_openai_embeddings_through_an_alias_get_num_ctx(env: Env, ai: openai.OpenAI) -> None:
    ai.embeddings.create(model="embedder", input=["text"])
    body = env.sent("/api/embed")
    assert (body["model"], body["options"], body["keep_alive"]) == (NOMIC, {"num_ctx": 2048}, -1)


# ---------------------------------------------------------------------------------------------------------
# Aliases to an OpenAI-compatible backend: sampling defaults become OpenAI fields; runner options,
# which such servers do not know, are not sent


def test_openai_client_through_an_alias_to_an_openai_backend_gets_sampling_defaults(
    env: Env, ai: openai.OpenAI
) -> None:
    ai.chat.completions.create(model="cloudy", messages=MSG)
    body = env.sent("/v1/chat/completions")
    assert (body["model"], body["temperature"], body["max_tokens"]) == (GPT, 0.1, 64)
    assert "num_ctx" not in body


def test_openai_client_fields_override_an_openai_backend_alias_default(env: Env, ai: openai.OpenAI) -> None:
    ai.chat.completions.create(model="cloudy", messages=MSG, temperature=0.5, max_completion_tokens=9)
    body = env.sent("/v1/chat/completions")
    assert (body["temperature"], body["max_completion_tokens"]) == (0.5, 9)
    assert "max_tokens" not in body


def test_ollama_client_through_an_alias_to_an_openai_backend_gets_sampling_defaults(
    env: Env, oc: ollama.Client
) -> None:
    reply = oc.chat(model="cloudy", messages=MSG, options={"temperature": 0.6}, stream=False)
    body = env.sent("/v1/chat/completions")
    assert (body["model"], body["temperature"], body["max_tokens"]) == (GPT, 0.6, 64)
    assert "num_ctx" not in body
    assert "options" not in body
    assert reply.message.content == plan_chat(MSG).text
