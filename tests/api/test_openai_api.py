"""The OpenAI API (/v1/*) through a live Hearth, driven by the official ``openai`` Python SDK.

Hearth sits in front of a fake OpenAI-compatible server ("cloud", passthrough) and a fake Ollama
("local", translation to Ollama's native /api/*). Expected values come from the fakes'
deterministic replies (tests/fakes/replies.py) or from asking a fake directly.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI, embedding_base64, fake_embedding, plan_chat, plan_completion
from tests.fakes.replies import count_words, messages_prompt_tokens

GPT = "gpt-4o-mini"  # on "cloud": passthrough
OAI_EMBED = "text-embedding-3-small"  # on "cloud"
LLAMA = "llama3.1:8b"  # on "local": translated to /api/chat
NOMIC = "nomic-embed-text:latest"  # on "local"

CHAT_MODELS = [pytest.param(GPT, id="openai-backend"), pytest.param(LLAMA, id="ollama-backend")]
EMBED_MODELS = [pytest.param(OAI_EMBED, id="openai-backend"), pytest.param(NOMIC, id="ollama-backend")]

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}},
            "required": ["query"],
            "additionalProperties": False,
        },
    },
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"echo": {"type": "string"}},
    "required": ["echo"],
    "additionalProperties": False,
}
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR").decode()


class Env:
    def __init__(self, hearth: LiveHearth, cloud: FakeOpenAI, local: FakeOllama) -> None:
        self.hearth = hearth
        self.url = hearth.url
        self.cloud = cloud
        self.local = local

    def last_body(self, fake: FakeOllama | FakeOpenAI, path: str) -> dict[str, Any]:
        reqs = fake.requests_to(path)
        assert reqs, f"the backend received no request to {path}"
        body = reqs[-1].json
        assert isinstance(body, dict)
        return body


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with FakeOpenAI(models=[GPT, OAI_EMBED]) as cloud, FakeOllama(models=[LLAMA, NOMIC]) as local:
        settings = make_settings(
            [
                {"name": "cloud", "kind": "openai", "url": cloud.url + "/v1"},
                {"name": "local", "kind": "ollama", "url": local.url},
            ],
            aliases={"smart": GPT, "homebrew": LLAMA},
        )
        with LiveHearth(settings) as hearth:
            yield Env(hearth, cloud, local)


@pytest.fixture(autouse=True)
def _forget_requests(env: Env) -> None:
    env.cloud.reset()
    env.local.reset()


@pytest.fixture(scope="module")
def client(env: Env) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=env.url + "/v1", api_key="anything", max_retries=0) as c:
        yield c


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def direct(fake: FakeOllama | FakeOpenAI, method: str, path: str, body: Any = None) -> httpx.Response:
    with httpx.Client(base_url=fake.url, timeout=30) as c:
        return c.request(method, path, json=body)


def stream_chat(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    with client.chat.completions.create(stream=True, **kwargs) as stream:
        return list(stream)


def stream_text(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    with client.completions.create(stream=True, **kwargs) as stream:
        return list(stream)


def joined(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---------------------------------------------------------------------------------------------------------
# /v1/models


def test_models_lists_the_union_of_every_backend_plus_served_aliases(env: Env, client: openai.OpenAI) -> None:
    served = {m["id"] for m in direct(env.cloud, "GET", "/v1/models").json()["data"]}
    served |= {m["model"] for m in direct(env.local, "GET", "/api/tags").json()["models"]}
    assert {m.id for m in client.models.list()} == served | {"smart", "homebrew"}


def test_models_entries_are_model_objects(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert models
    assert all(m.object == "model" and isinstance(m.created, int) and m.owned_by for m in models)


@pytest.mark.parametrize("model", [GPT, LLAMA, "smart"], ids=["openai-model", "ollama-model", "alias"])
def test_model_retrieve_finds_a_listed_model_by_id(client: openai.OpenAI, model: str) -> None:
    found = client.models.retrieve(model)
    assert (found.id, found.object) == (model, "model")


def test_model_retrieve_of_an_unknown_id_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ---------------------------------------------------------------------------------------------------------
# /v1/chat/completions


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_returns_the_backends_reply(client: openai.OpenAI, model: str) -> None:
    messages = user("hello there friend")
    out = client.chat.completions.create(model=model, messages=messages)
    assert out.object == "chat.completion"
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == plan_chat(messages).text
    assert out.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_reports_the_backends_token_usage(client: openai.OpenAI, model: str) -> None:
    messages = user("count these words")
    out = client.chat.completions.create(model=model, messages=messages)
    assert out.usage is not None
    expected = (messages_prompt_tokens(messages), len(plan_chat(messages).pieces))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == expected
    assert out.usage.total_tokens == sum(expected)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_deltas_join_to_the_backends_reply(client: openai.OpenAI, model: str) -> None:
    messages = user("stream it to me")
    chunks = stream_chat(client, model=model, messages=messages)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert joined(chunks) == plan_chat(messages).text


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_ends_with_finish_reason_stop(client: openai.OpenAI, model: str) -> None:
    chunks = stream_chat(client, model=model, messages=user("finish me"))
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] == "stop"
    assert reasons.count("stop") == 1


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_is_sse_ending_with_done(env: Env, model: str) -> None:
    with httpx.Client(base_url=env.url, timeout=30) as http:
        r = http.post("/v1/chat/completions", json={"model": model, "messages": user("sse"), "stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = r.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI, model: str) -> None:
    messages = user("one two three four five six")
    out = client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    assert out.choices[0].message.content == plan_chat(messages, max_tokens=2).text
    assert out.choices[0].finish_reason == "length"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_without_include_usage_sends_no_usage(client: openai.OpenAI, model: str) -> None:
    chunks = stream_chat(client, model=model, messages=user("no usage please"))
    assert all(c.usage is None for c in chunks)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_include_usage_puts_usage_in_a_final_chunk_without_choices(
    client: openai.OpenAI, model: str
) -> None:
    messages = user("usage at the end")
    chunks = stream_chat(client, model=model, messages=messages, stream_options={"include_usage": True})
    final = chunks[-1]
    assert final.choices == []
    assert final.usage is not None
    expected = (messages_prompt_tokens(messages), len(plan_chat(messages).pieces))
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == expected
    assert all(c.usage is None for c in chunks[:-1])
    assert joined(chunks) == plan_chat(messages).text


# -- tools


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_tool_call_has_json_string_arguments(client: openai.OpenAI, model: str) -> None:
    messages = user("Paris")
    expected = plan_chat(messages, ["get_weather"])
    out = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("function", expected.tool_name, expected.tool_args)
    ]
    assert all(c.id for c in calls)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_tool_call_deltas_reassemble_in_the_sdk(client: openai.OpenAI, model: str) -> None:
    messages = user("Berlin")
    expected = plan_chat(messages, ["get_weather"])
    with client.chat.completions.stream(model=model, messages=messages, tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (expected.tool_name, expected.tool_args)
    ]
    assert all(c.id for c in calls)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_answers_a_tool_result_turn(client: openai.OpenAI, model: str) -> None:
    messages: list[dict[str, Any]] = [
        *user("Rome"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"query": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"},
    ]
    out = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL])
    assert out.choices[0].message.content == plan_chat(messages, ["get_weather"]).text


def test_chat_tool_turn_reaches_ollama_with_object_arguments_and_tool_name(
    env: Env, client: openai.OpenAI
) -> None:
    messages: list[dict[str, Any]] = [
        *user("Rome"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"query": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 24C"},
    ]
    client.chat.completions.create(model=LLAMA, messages=messages, tools=[WEATHER_TOOL])
    sent = env.last_body(env.local, "/api/chat")["messages"]
    assert sent[1]["role"] == "assistant"
    assert [tc["function"]["name"] for tc in sent[1]["tool_calls"]] == ["get_weather"]
    assert [tc["function"]["arguments"] for tc in sent[1]["tool_calls"]] == [{"query": "Rome"}]
    assert (sent[2]["role"], sent[2]["content"], sent[2]["tool_name"]) == (
        "tool",
        "sunny, 24C",
        "get_weather",
    )


def test_chat_tools_reach_ollama_as_native_tools(env: Env, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=LLAMA, messages=user("Oslo"), tools=[WEATHER_TOOL])
    assert env.last_body(env.local, "/api/chat")["tools"] == [WEATHER_TOOL]


def test_chat_tools_reach_an_openai_backend_unchanged(env: Env, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=GPT, messages=user("Oslo"), tools=[WEATHER_TOOL])
    assert env.last_body(env.cloud, "/v1/chat/completions")["tools"] == [WEATHER_TOOL]


# -- response_format


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_response_format_json_object_returns_json(client: openai.OpenAI, model: str) -> None:
    out = client.chat.completions.create(
        model=model,
        messages=user("json please"),
        response_format={"type": "json_object"},
    )
    assert json.loads(out.choices[0].message.content or "") == {"echo": "json please"}


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_response_format_json_schema_returns_json(client: openai.OpenAI, model: str) -> None:
    out = client.chat.completions.create(
        model=model,
        messages=user("schema please"),
        response_format={"type": "json_schema", "json_schema": {"name": "echo", "schema": SCHEMA}},
    )
    assert json.loads(out.choices[0].message.content or "") == {"echo": "schema please"}


def test_chat_json_object_reaches_ollama_as_format_json(env: Env, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=LLAMA,
        messages=user("x"),
        response_format={"type": "json_object"},
    )
    assert env.last_body(env.local, "/api/chat")["format"] == "json"


def test_chat_json_schema_reaches_ollama_as_the_schema(env: Env, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=LLAMA,
        messages=user("x"),
        response_format={"type": "json_schema", "json_schema": {"name": "echo", "schema": SCHEMA}},
    )
    assert env.last_body(env.local, "/api/chat")["format"] == SCHEMA


# -- what the Ollama backend receives


def test_chat_reaches_ollama_as_native_chat_with_the_same_messages(env: Env, client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        *user("hi"),
        {"role": "assistant", "content": "hey"},
    ]
    messages.append({"role": "user", "content": "again"})
    client.chat.completions.create(model=LLAMA, messages=messages)
    body = env.last_body(env.local, "/api/chat")
    assert body["model"] == LLAMA
    assert body["messages"] == messages


def test_chat_developer_message_reaches_ollama_as_system(env: Env, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=LLAMA, messages=[{"role": "developer", "content": "be brief"}, *user("hi")]
    )
    assert env.last_body(env.local, "/api/chat")["messages"] == [
        {"role": "system", "content": "be brief"},
        *user("hi"),
    ]


def test_chat_sampling_parameters_reach_ollama_as_options(env: Env, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=LLAMA,
        messages=user("hi"),
        max_tokens=50,
        temperature=0.3,
        top_p=0.9,
        seed=42,
        stop=["\n\n"],
    )
    options = env.last_body(env.local, "/api/chat")["options"]
    assert options == {"num_predict": 50, "temperature": 0.3, "top_p": 0.9, "seed": 42, "stop": ["\n\n"]}


def test_chat_max_completion_tokens_reaches_ollama_as_num_predict(env: Env, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=LLAMA, messages=user("hi"), max_completion_tokens=9)
    assert env.last_body(env.local, "/api/chat")["options"]["num_predict"] == 9


def test_chat_image_parts_reach_ollama_as_base64_images(env: Env, client: openai.OpenAI) -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
            ],
        }
    ]
    client.chat.completions.create(model=LLAMA, messages=messages)
    sent = env.last_body(env.local, "/api/chat")["messages"]
    assert sent == [{"role": "user", "content": "what is this", "images": [PNG_B64]}]


def test_chat_request_reaches_an_openai_backend_as_sent(env: Env, client: openai.OpenAI) -> None:
    messages = [{"role": "system", "content": "be brief"}, *user("hi")]
    client.chat.completions.create(model=GPT, messages=messages, temperature=0.4, max_tokens=12)
    body = env.last_body(env.cloud, "/v1/chat/completions")
    assert (body["model"], body["messages"], body["temperature"], body["max_tokens"]) == (
        GPT,
        messages,
        0.4,
        12,
    )


# ---------------------------------------------------------------------------------------------------------
# /v1/completions


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_completion_returns_the_backends_text(client: openai.OpenAI, model: str) -> None:
    out = client.completions.create(model=model, prompt="why is the sky blue")
    assert out.object == "text_completion"
    assert out.choices[0].text == plan_completion("why is the sky blue").text
    assert out.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_completion_reports_the_backends_token_usage(client: openai.OpenAI, model: str) -> None:
    prompt = "count these prompt words"
    out = client.completions.create(model=model, prompt=prompt)
    assert out.usage is not None
    expected = (count_words([prompt]), len(plan_completion(prompt).pieces))
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == expected


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_completion_stream_joins_to_the_backends_text(client: openai.OpenAI, model: str) -> None:
    chunks = stream_text(client, model=model, prompt="stream a completion")
    assert (
        "".join(c.choices[0].text for c in chunks if c.choices) == plan_completion("stream a completion").text
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_completion_stream_include_usage_puts_usage_in_the_final_chunk(
    client: openai.OpenAI, model: str
) -> None:
    prompt = "usage for completions"
    chunks = stream_text(client, model=model, prompt=prompt, stream_options={"include_usage": True})
    assert chunks[-1].usage is not None
    expected = (count_words([prompt]), len(plan_completion(prompt).pieces))
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == expected


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_completion_max_tokens_truncates_with_finish_reason_length(client: openai.OpenAI, model: str) -> None:
    prompt = "a b c d e f g"
    out = client.completions.create(model=model, prompt=prompt, max_tokens=3)
    assert out.choices[0].text == plan_completion(prompt, max_tokens=3).text
    assert out.choices[0].finish_reason == "length"


def test_completion_reaches_ollama_as_native_generate(env: Env, client: openai.OpenAI) -> None:
    client.completions.create(model=LLAMA, prompt="complete me", max_tokens=6, temperature=0.1)
    body = env.last_body(env.local, "/api/generate")
    assert (body["model"], body["prompt"]) == (LLAMA, "complete me")
    assert body["options"] == {"num_predict": 6, "temperature": 0.1}


# ---------------------------------------------------------------------------------------------------------
# /v1/embeddings


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embeddings_default_base64_decode_to_the_backends_vectors(client: openai.OpenAI, model: str) -> None:
    texts = ["first", "second one"]
    out = client.embeddings.create(model=model, input=texts)
    assert [d.embedding for d in out.data] == [fake_embedding(t) for t in texts]
    assert [d.index for d in out.data] == [0, 1]


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embeddings_of_a_string_give_one_vector(client: openai.OpenAI, model: str) -> None:
    out = client.embeddings.create(model=model, input="just one")
    assert [d.embedding for d in out.data] == [fake_embedding("just one")]


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embeddings_as_floats_equal_the_backends_vectors(client: openai.OpenAI, model: str) -> None:
    out = client.embeddings.create(model=model, input=["as floats"], encoding_format="float")
    assert [d.embedding for d in out.data] == [fake_embedding("as floats")]


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embeddings_base64_on_the_wire_is_little_endian_float32(env: Env, model: str) -> None:
    with httpx.Client(base_url=env.url, timeout=30) as http:
        r = http.post("/v1/embeddings", json={"model": model, "input": ["wire"], "encoding_format": "base64"})
    assert [d["embedding"] for d in r.json()["data"]] == [embedding_base64(fake_embedding("wire"))]


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embeddings_dimensions_reach_the_backend(client: openai.OpenAI, model: str) -> None:
    out = client.embeddings.create(model=model, input=["short"], dimensions=4)
    assert [d.embedding for d in out.data] == [fake_embedding("short", 4)]


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embeddings_report_prompt_token_usage(client: openai.OpenAI, model: str) -> None:
    texts = ["three words here", "two more"]
    out = client.embeddings.create(model=model, input=texts)
    assert out.usage.prompt_tokens == count_words(texts)


def test_embeddings_reach_ollama_as_native_embed(env: Env, client: openai.OpenAI) -> None:
    client.embeddings.create(model=NOMIC, input=["a", "b"])
    body = env.last_body(env.local, "/api/embed")
    assert (body["model"], body["input"]) == (NOMIC, ["a", "b"])
