"""Every Ollama endpoint through a live Hearth, driven by the official ``ollama`` Python client.

Hearth sits in front of two fake Ollama servers ("big" and "gpu") and one fake OpenAI-compatible
server ("cloud"). A model served by an Ollama backend goes through as passthrough; one served only
by the OpenAI backend is translated. Expected values come from the fakes' deterministic replies
(tests/fakes/replies.py) or from asking a fake directly, never from Hearth's own output.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from tests.conftest import WEATHER_TOOL, LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI, fake_embedding, json_reply_pieces, plan_chat, plan_completion
from tests.fakes.replies import count_words, messages_prompt_tokens

LLAMA = "llama3.1:8b"  # on "big" only
QWEN = "qwen2.5:7b"  # on "gpu" only
NOMIC = "nomic-embed-text:latest"  # on "big" only
GPT = "gpt-4o-mini"  # on "cloud" only
OAI_EMBED = "text-embedding-3-small"  # on "cloud" only

# Passthrough (an Ollama backend) and translation (an OpenAI-compatible backend).
CHAT_MODELS = [pytest.param(LLAMA, id="ollama-backend"), pytest.param(GPT, id="openai-backend")]
EMBED_MODELS = [pytest.param(NOMIC, id="ollama-backend"), pytest.param(OAI_EMBED, id="openai-backend")]

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"echo": {"type": "string"}},
    "required": ["echo"],
}
# The 8-byte PNG signature plus a few bytes: enough to be recognised as a PNG, never decoded.
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"
PNG_B64 = base64.b64encode(PNG).decode()


class Env:
    def __init__(self, hearth: LiveHearth, big: FakeOllama, gpu: FakeOllama, cloud: FakeOpenAI) -> None:
        self.hearth = hearth
        self.url = hearth.url
        self.big = big
        self.gpu = gpu
        self.cloud = cloud

    def fake_for(self, model: str) -> FakeOllama | FakeOpenAI:
        return {LLAMA: self.big, NOMIC: self.big, QWEN: self.gpu, GPT: self.cloud, OAI_EMBED: self.cloud}[
            model
        ]

    def last_body(self, model: str, path: str) -> dict[str, Any]:
        reqs = self.fake_for(model).requests_to(path)
        assert reqs, f"the backend serving {model} received no request to {path}"
        body = reqs[-1].json
        assert isinstance(body, dict)
        return body


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with (
        FakeOllama(models=[LLAMA, NOMIC], version="0.9.6") as big,
        FakeOllama(models=[QWEN], version="0.12.3") as gpu,
        FakeOpenAI(models=[GPT, OAI_EMBED]) as cloud,
    ):
        settings = make_settings(
            [
                {"name": "big", "kind": "ollama", "url": big.url},
                {"name": "gpu", "kind": "ollama", "url": gpu.url},
                {"name": "cloud", "kind": "openai", "url": cloud.url + "/v1"},
            ],
            aliases={"healthrag": {"model": LLAMA}, "cloudy": GPT, "ghost": "not-served:1b"},
        )
        with LiveHearth(settings) as hearth:
            yield Env(hearth, big, gpu, cloud)


@pytest.fixture(autouse=True)
def _forget_requests(env: Env) -> None:
    for fake in (env.big, env.gpu, env.cloud):
        fake.reset()


@pytest.fixture(scope="module")
def client(env: Env) -> Iterator[ollama.Client]:
    with ollama.Client(host=env.url) as c:
        yield c


@pytest.fixture
def http(env: Env) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env.url, timeout=30) as c:
        yield c


def direct(fake: FakeOllama | FakeOpenAI, method: str, path: str, body: Any = None) -> httpx.Response:
    """Ask a fake backend itself, for the value Hearth should reproduce."""
    with httpx.Client(base_url=fake.url, timeout=30) as c:
        return c.request(method, path, json=body)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def ndjson_lines(body: bytes) -> list[dict[str, Any]]:
    """Parse a whole NDJSON body strictly: newline-terminated, no blank lines, every line an object."""
    assert body.endswith(b"\n"), "an NDJSON body ends with a newline"
    lines = body.split(b"\n")[:-1]
    assert all(line.strip() for line in lines), f"blank line in NDJSON body: {body!r}"
    objs = [json.loads(line) for line in lines]
    assert all(isinstance(o, dict) for o in objs)
    return objs


# ---------------------------------------------------------------------------------------------------------
# Answered by Hearth: /, /api/version, /api/tags, /api/ps


def test_root_says_ollama_is_running(http: httpx.Client) -> None:
    r = http.get("/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert r.headers["content-type"].startswith("text/plain")


def test_head_root_answers_200_without_a_body(http: httpx.Client) -> None:
    r = http.head("/")
    assert r.status_code == 200
    assert r.content == b""


def test_version_is_the_oldest_backend_version_compared_numerically(env: Env, http: httpx.Client) -> None:
    versions = [direct(f, "GET", "/api/version").json()["version"] for f in (env.big, env.gpu)]
    oldest = min(versions, key=lambda v: tuple(int(p) for p in v.split(".")))
    r = http.get("/api/version")
    assert r.status_code == 200
    assert r.json() == {"version": oldest}


def test_version_is_numeric_semver(http: httpx.Client) -> None:
    version = http.get("/api/version").json()["version"]
    parts = version.split(".")
    assert len(parts) == 3
    assert all(p.isdigit() for p in parts)


def test_head_version_answers_200(http: httpx.Client) -> None:
    assert http.head("/api/version").status_code == 200


def test_tags_lists_the_union_of_every_backend_plus_served_aliases(env: Env, client: ollama.Client) -> None:
    served: set[str] = set()
    for fake in (env.big, env.gpu):
        served |= {m["model"] for m in direct(fake, "GET", "/api/tags").json()["models"]}
    served |= {m["id"] for m in direct(env.cloud, "GET", "/v1/models").json()["data"]}
    listed = {m.model for m in client.list().models}
    assert listed == served | {"healthrag", "cloudy"}


def test_tags_entries_carry_both_name_and_model(http: httpx.Client) -> None:
    models = http.get("/api/tags").json()["models"]
    assert models
    assert all(m["name"] == m["model"] for m in models)


def test_tags_passes_an_ollama_backends_model_details_through(env: Env, http: httpx.Client) -> None:
    upstream = {m["model"]: m for m in direct(env.gpu, "GET", "/api/tags").json()["models"]}[QWEN]
    entry = {m["model"]: m for m in http.get("/api/tags").json()["models"]}[QWEN]
    assert (entry["digest"], entry["size"], entry["details"]) == (
        upstream["digest"],
        upstream["size"],
        upstream["details"],
    )


def test_tags_shows_an_alias_like_the_model_it_points_to(http: httpx.Client) -> None:
    models = {m["model"]: m for m in http.get("/api/tags").json()["models"]}
    assert models["healthrag"]["digest"] == models[LLAMA]["digest"]
    assert models["healthrag"]["details"] == models[LLAMA]["details"]


def test_tags_omits_an_alias_whose_model_no_backend_serves(http: httpx.Client) -> None:
    names = {m["model"] for m in http.get("/api/tags").json()["models"]}
    assert "ghost" not in names


def test_head_tags_answers_200(http: httpx.Client) -> None:
    assert http.head("/api/tags").status_code == 200


def test_ps_merges_loaded_models_of_every_ollama_backend_longest_expiry_first(
    env: Env, client: ollama.Client, http: httpx.Client
) -> None:
    env.big.load(LLAMA, keep_alive=-1)
    env.gpu.load(QWEN, keep_alive=120)
    expected = [m for f in (env.big, env.gpu) for m in direct(f, "GET", "/api/ps").json()["models"]]
    expected.sort(key=lambda m: datetime.fromisoformat(m["expires_at"]), reverse=True)
    assert http.get("/api/ps").json() == {"models": expected}
    assert [m.model for m in client.ps().models] == [m["model"] for m in expected]


def test_a_model_two_backends_serve_is_listed_once(env: Env, client: ollama.Client) -> None:
    env.big.add_model("shared:1b")
    env.gpu.add_model("shared:1b")
    env.hearth.refresh()
    assert [m.model for m in client.list().models].count("shared:1b") == 1


# ---------------------------------------------------------------------------------------------------------
# /api/show


def test_show_passes_an_ollama_backends_answer_through(env: Env, client: ollama.Client) -> None:
    upstream = direct(env.big, "POST", "/api/show", {"model": LLAMA}).json()
    shown = client.show(LLAMA)
    assert shown.modelfile == upstream["modelfile"]
    assert shown.modelinfo == upstream["model_info"]
    assert shown.capabilities == upstream["capabilities"]


def test_show_of_an_alias_describes_the_model_it_points_to(env: Env, http: httpx.Client) -> None:
    upstream = direct(env.big, "POST", "/api/show", {"model": LLAMA}).json()
    r = http.post("/api/show", json={"model": "healthrag"})
    assert r.status_code == 200
    assert r.json() == upstream


def test_show_answers_for_a_model_only_an_openai_backend_serves(client: ollama.Client) -> None:
    shown = client.show(GPT)
    assert shown.capabilities is not None
    assert "completion" in shown.capabilities
    assert shown.details is not None


# ---------------------------------------------------------------------------------------------------------
# /api/chat


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_content_is_the_backends_reply(client: ollama.Client, model: str) -> None:
    messages = user("hello there friend")
    parts = list(client.chat(model=model, messages=messages, stream=True))
    assert "".join(p.message.content or "" for p in parts) == plan_chat(messages).text


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_ends_with_one_done_chunk_with_reason_and_counts(
    client: ollama.Client, model: str
) -> None:
    messages = user("count my words please")
    parts = list(client.chat(model=model, messages=messages, stream=True))
    assert [p.done for p in parts].count(True) == 1
    final = parts[-1]
    assert final.done is True
    assert final.done_reason == "stop"
    assert final.prompt_eval_count == messages_prompt_tokens(messages)
    assert final.eval_count == len(plan_chat(messages).pieces)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_without_stream_returns_one_object_with_the_whole_reply(
    client: ollama.Client, model: str
) -> None:
    messages = user("one whole answer")
    reply = client.chat(model=model, messages=messages, stream=False)
    assert reply.message.role == "assistant"
    assert reply.message.content == plan_chat(messages).text
    assert reply.done is True
    assert reply.done_reason == "stop"
    assert reply.prompt_eval_count == messages_prompt_tokens(messages)
    assert reply.eval_count == len(plan_chat(messages).pieces)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_is_ndjson_without_blank_lines(http: httpx.Client, model: str) -> None:
    messages = user("raw bytes please")
    r = http.post("/api/chat", json={"model": model, "messages": messages, "stream": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    objs = ndjson_lines(r.content)
    assert "".join(o["message"]["content"] for o in objs) == plan_chat(messages).text
    assert [o["done"] for o in objs] == [False] * (len(objs) - 1) + [True]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_is_the_default_when_stream_is_absent(http: httpx.Client, model: str) -> None:
    messages = user("default mode")
    r = http.post("/api/chat", json={"model": model, "messages": messages})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert "".join(o["message"]["content"] for o in ndjson_lines(r.content)) == plan_chat(messages).text


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_without_stream_is_a_single_json_object(http: httpx.Client, model: str) -> None:
    messages = user("single object")
    r = http.post("/api/chat", json={"model": model, "messages": messages, "stream": False})
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["message"]["content"] == plan_chat(messages).text


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_with_num_predict_stops_with_reason_length(client: ollama.Client, model: str) -> None:
    messages = user("one two three four five six")
    expected = plan_chat(messages, max_tokens=2)
    reply = client.chat(model=model, messages=messages, options={"num_predict": 2}, stream=False)
    assert reply.message.content == expected.text
    assert reply.done_reason == "length"


def _tool_calls(parts: list[ollama.ChatResponse]) -> list[Any]:
    return [tc for p in parts for tc in (p.message.tool_calls or [])]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_tool_call_comes_back_with_arguments_as_an_object(client: ollama.Client, model: str) -> None:
    messages = user("Paris")
    expected = plan_chat(messages, ["get_weather"])
    reply = client.chat(model=model, messages=messages, tools=[WEATHER_TOOL], stream=False)
    calls = reply.message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        (expected.tool_name, expected.tool_args)
    ]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_stream_tool_call_comes_in_a_chunk_before_done(client: ollama.Client, model: str) -> None:
    messages = user("Berlin")
    expected = plan_chat(messages, ["get_weather"])
    parts = list(client.chat(model=model, messages=messages, tools=[WEATHER_TOOL], stream=True))
    carrying = [p for p in parts if p.message.tool_calls]
    assert carrying
    assert all(not p.done for p in carrying)
    assert [(c.function.name, dict(c.function.arguments)) for c in _tool_calls(parts)] == [
        (expected.tool_name, expected.tool_args)
    ]


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_chat_tool_call_arguments_are_a_json_object_on_the_wire(
    http: httpx.Client, model: str, stream: bool
) -> None:
    messages = user("Oslo")
    expected = plan_chat(messages, ["get_weather"])
    r = http.post(
        "/api/chat", json={"model": model, "messages": messages, "tools": [WEATHER_TOOL], "stream": stream}
    )
    objs = ndjson_lines(r.content) if stream else [r.json()]
    calls = [tc for o in objs for tc in o["message"].get("tool_calls") or []]
    assert [c["function"]["arguments"] for c in calls] == [expected.tool_args]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_answers_a_tool_result_turn(client: ollama.Client, model: str) -> None:
    messages: list[dict[str, Any]] = [
        *user("Rome"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"query": "Rome"}}}],
        },
        {"role": "tool", "content": "sunny, 24C", "tool_name": "get_weather"},
    ]
    reply = client.chat(model=model, messages=messages, tools=[WEATHER_TOOL], stream=False)
    assert reply.message.content == plan_chat(messages, ["get_weather"]).text


def test_chat_tool_result_reaches_an_openai_backend_citing_the_call_it_answers(
    env: Env, client: ollama.Client
) -> None:
    messages: list[dict[str, Any]] = [
        *user("Rome"),
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"query": "Rome"}}}],
        },
        {"role": "tool", "content": "sunny, 24C", "tool_name": "get_weather"},
    ]
    client.chat(model=GPT, messages=messages, tools=[WEATHER_TOOL], stream=False)
    sent = env.last_body(GPT, "/v1/chat/completions")["messages"]
    call = sent[1]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"query": "Rome"}
    assert sent[2]["role"] == "tool"
    assert sent[2]["tool_call_id"] == call["id"]


def test_chat_tools_reach_an_ollama_backend_unchanged(env: Env, client: ollama.Client) -> None:
    client.chat(model=LLAMA, messages=user("Madrid"), tools=[WEATHER_TOOL], stream=False)
    assert env.last_body(LLAMA, "/api/chat")["tools"] == [WEATHER_TOOL]


def test_chat_tools_reach_an_openai_backend_as_function_tools(env: Env, client: ollama.Client) -> None:
    client.chat(model=GPT, messages=user("Madrid"), tools=[WEATHER_TOOL], stream=False)
    assert env.last_body(GPT, "/v1/chat/completions")["tools"] == [WEATHER_TOOL]


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_chat_format_json_returns_json(client: ollama.Client, model: str, stream: bool) -> None:
    messages = user("structured please")
    if stream:
        content = "".join(
            p.message.content or "" for p in client.chat(model, messages, format="json", stream=True)
        )
    else:
        content = client.chat(model, messages, format="json", stream=False).message.content or ""
    assert content == "".join(json_reply_pieces("structured please"))
    assert json.loads(content) == {"echo": "structured please"}


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_chat_format_schema_returns_json(client: ollama.Client, model: str) -> None:
    messages = user("schema please")
    reply = client.chat(model=model, messages=messages, format=SCHEMA, stream=False)
    assert json.loads(reply.message.content or "") == {"echo": "schema please"}


def test_chat_format_reaches_an_ollama_backend_unchanged(env: Env, client: ollama.Client) -> None:
    client.chat(model=LLAMA, messages=user("x"), format=SCHEMA, stream=False)
    assert env.last_body(LLAMA, "/api/chat")["format"] == SCHEMA


def test_chat_format_json_reaches_an_openai_backend_as_json_object(env: Env, client: ollama.Client) -> None:
    client.chat(model=GPT, messages=user("x"), format="json", stream=False)
    assert env.last_body(GPT, "/v1/chat/completions")["response_format"] == {"type": "json_object"}


def test_chat_format_schema_reaches_an_openai_backend_as_json_schema(env: Env, client: ollama.Client) -> None:
    client.chat(model=GPT, messages=user("x"), format=SCHEMA, stream=False)
    rf = env.last_body(GPT, "/v1/chat/completions")["response_format"]
    assert rf["type"] == "json_schema"
    assert rf["json_schema"]["schema"] == SCHEMA


def test_chat_images_reach_an_ollama_backend_as_base64(env: Env, client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "what is this", "images": [PNG]}]
    client.chat(model=LLAMA, messages=messages, stream=False)
    sent = env.last_body(LLAMA, "/api/chat")["messages"]
    assert sent[0]["images"] == [PNG_B64]


def test_chat_images_reach_an_openai_backend_as_data_url_parts(env: Env, client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "what is this", "images": [PNG]}]
    reply = client.chat(model=GPT, messages=messages, stream=False)
    sent = env.last_body(GPT, "/v1/chat/completions")["messages"]
    assert sent[0]["content"] == [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
    ]
    assert reply.message.content == plan_chat(user("what is this")).text


def test_chat_through_an_alias_reaches_the_backend_with_the_real_model_name(
    env: Env, client: ollama.Client
) -> None:
    messages = user("via alias")
    reply = client.chat(model="healthrag", messages=messages, stream=False)
    assert reply.message.content == plan_chat(messages).text
    assert env.last_body(LLAMA, "/api/chat")["model"] == LLAMA


def test_chat_with_an_ollama_client_reaches_an_openai_backend_as_chat_completions(
    env: Env, client: ollama.Client
) -> None:
    messages = [{"role": "system", "content": "be brief"}, *user("hi")]
    list(
        client.chat(
            model=GPT, messages=messages, options={"temperature": 0.25, "num_predict": 7}, stream=True
        )
    )
    body = env.last_body(GPT, "/v1/chat/completions")
    assert body["model"] == GPT
    assert body["messages"] == messages
    assert (body["temperature"], body["max_tokens"]) == (0.25, 7)


def _without_created_at(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in o.items() if k != "created_at"} for o in objs]


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_passthrough_stream_relays_every_line_the_backend_sent(
    env: Env, http: httpx.Client, path: str
) -> None:
    body = {"model": LLAMA, "messages": user("relay me"), "prompt": "relay me", "stream": True}
    env.big.load(LLAMA)  # so both answers report a warm model's timings
    upstream = ndjson_lines(direct(env.big, "POST", path, body).content)
    through = ndjson_lines(http.post(path, json=body).content)
    assert _without_created_at(through) == _without_created_at(upstream)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_passthrough_whole_answer_is_the_backends(env: Env, http: httpx.Client, path: str) -> None:
    body = {"model": LLAMA, "messages": user("relay me"), "prompt": "relay me", "stream": False}
    env.big.load(LLAMA)
    upstream = direct(env.big, "POST", path, body).json()
    through = http.post(path, json=body).json()
    assert _without_created_at([through]) == _without_created_at([upstream])


@pytest.mark.parametrize("model", CHAT_MODELS)
@pytest.mark.parametrize(
    ("path", "empty"),
    [("/api/generate", {"prompt": ""}), ("/api/chat", {"messages": []})],
    ids=["generate", "chat"],
)
def test_an_empty_request_loads_the_model_without_generating(
    http: httpx.Client, model: str, path: str, empty: dict[str, Any]
) -> None:
    r = http.post(path, json={"model": model, **empty, "stream": False})
    out = r.json()
    assert (r.status_code, out["done"], out["done_reason"]) == (200, True, "load")
    assert out.get("response", "") == ""
    assert out.get("message", {}).get("content", "") == ""


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_an_empty_generate_with_keep_alive_zero_unloads_the_model(http: httpx.Client, model: str) -> None:
    r = http.post("/api/generate", json={"model": model, "prompt": "", "keep_alive": 0, "stream": False})
    assert (r.status_code, r.json()["done_reason"], r.json()["response"]) == (200, "unload", "")


def test_unloading_through_hearth_unloads_on_the_ollama_backend(env: Env, http: httpx.Client) -> None:
    env.big.load(LLAMA)
    http.post("/api/generate", json={"model": LLAMA, "prompt": "", "keep_alive": 0, "stream": False})
    assert LLAMA not in env.big.loaded
    assert env.last_body(LLAMA, "/api/generate")["keep_alive"] == 0


# ---------------------------------------------------------------------------------------------------------
# /api/generate


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_generate_stream_response_is_the_backends_completion(client: ollama.Client, model: str) -> None:
    parts = list(client.generate(model=model, prompt="why is the sky blue", stream=True))
    assert "".join(p.response for p in parts) == plan_completion("why is the sky blue").text


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_generate_stream_ends_with_one_done_chunk_with_reason_and_counts(
    client: ollama.Client, model: str
) -> None:
    prompt = "tell me a story"
    parts = list(client.generate(model=model, prompt=prompt, stream=True))
    assert [p.done for p in parts].count(True) == 1
    final = parts[-1]
    assert (final.done, final.done_reason) == (True, "stop")
    assert final.prompt_eval_count == count_words([prompt])
    assert final.eval_count == len(plan_completion(prompt).pieces)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_generate_without_stream_returns_the_whole_completion(client: ollama.Client, model: str) -> None:
    prompt = "all at once"
    reply = client.generate(model=model, prompt=prompt, stream=False)
    assert reply.response == plan_completion(prompt).text
    assert (reply.done, reply.done_reason) == (True, "stop")
    assert reply.prompt_eval_count == count_words([prompt])
    assert reply.eval_count == len(plan_completion(prompt).pieces)


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_generate_stream_is_ndjson_without_blank_lines(http: httpx.Client, model: str) -> None:
    r = http.post("/api/generate", json={"model": model, "prompt": "raw lines", "stream": True})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    objs = ndjson_lines(r.content)
    assert "".join(o["response"] for o in objs) == plan_completion("raw lines").text
    assert [o["done"] for o in objs] == [False] * (len(objs) - 1) + [True]


@pytest.mark.parametrize("model", CHAT_MODELS)
def test_generate_with_num_predict_stops_with_reason_length(client: ollama.Client, model: str) -> None:
    prompt = "a b c d e f g"
    reply = client.generate(model=model, prompt=prompt, options={"num_predict": 3}, stream=False)
    assert reply.response == plan_completion(prompt, max_tokens=3).text
    assert reply.done_reason == "length"


def test_generate_format_json_returns_json_from_an_ollama_backend(client: ollama.Client) -> None:
    reply = client.generate(model=LLAMA, prompt="as json", format="json", stream=False)
    assert reply.response == plan_completion("as json", json_mode=True).text


def test_generate_format_json_reaches_an_openai_backend_as_json_object(
    env: Env, client: ollama.Client
) -> None:
    client.generate(model=GPT, prompt="as json", format="json", stream=False)
    assert env.last_body(GPT, "/v1/completions")["response_format"] == {"type": "json_object"}


def test_generate_images_reach_an_ollama_backend_as_base64(env: Env, client: ollama.Client) -> None:
    client.generate(model=LLAMA, prompt="describe", images=[PNG], stream=False)
    assert env.last_body(LLAMA, "/api/generate")["images"] == [PNG_B64]


def test_generate_with_an_ollama_client_reaches_an_openai_backend_as_completions(
    env: Env, client: ollama.Client
) -> None:
    client.generate(model=GPT, prompt="complete me", options={"num_predict": 4}, stream=False)
    body = env.last_body(GPT, "/v1/completions")
    assert (body["model"], body["prompt"], body["max_tokens"]) == (GPT, "complete me", 4)


# ---------------------------------------------------------------------------------------------------------
# /api/embed and /api/embeddings


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embed_a_string_gives_one_vector(client: ollama.Client, model: str) -> None:
    out = client.embed(model=model, input="hello world")
    assert out.model == model
    assert out.embeddings == [fake_embedding("hello world")]


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embed_a_list_gives_one_vector_per_input_in_order(client: ollama.Client, model: str) -> None:
    texts = ["first", "second one", "third"]
    out = client.embed(model=model, input=texts)
    assert out.embeddings == [fake_embedding(t) for t in texts]


def test_embed_passes_an_ollama_backends_answer_through(env: Env, http: httpx.Client) -> None:
    r = http.post("/api/embed", json={"model": NOMIC, "input": ["a", "b"]})
    upstream = env.last_body(NOMIC, "/api/embed")
    assert upstream == {"model": NOMIC, "input": ["a", "b"]}
    assert r.json()["embeddings"] == [fake_embedding("a"), fake_embedding("b")]
    assert r.json()["prompt_eval_count"] == count_words(["a", "b"])


def test_embed_translated_vectors_equal_what_the_openai_backend_gave(env: Env, http: httpx.Client) -> None:
    texts = ["alpha", "beta"]
    r = http.post("/api/embed", json={"model": OAI_EMBED, "input": texts})
    upstream = direct(env.cloud, "POST", "/v1/embeddings", {"model": OAI_EMBED, "input": texts}).json()
    assert r.json()["embeddings"] == [d["embedding"] for d in upstream["data"]]


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_embed_without_input_loads_the_model_and_returns_no_vectors(http: httpx.Client, model: str) -> None:
    r = http.post("/api/embed", json={"model": model, "input": []})
    assert r.status_code == 200
    assert (r.json()["model"], r.json()["embeddings"]) == (model, [])


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_legacy_embeddings_gives_the_single_vector(client: ollama.Client, model: str) -> None:
    out = client.embeddings(model=model, prompt="legacy prompt")
    assert list(out.embedding) == fake_embedding("legacy prompt")


@pytest.mark.parametrize("model", EMBED_MODELS)
def test_legacy_embeddings_without_prompt_loads_the_model_and_returns_an_empty_vector(
    http: httpx.Client, model: str
) -> None:
    r = http.post("/api/embeddings", json={"model": model, "prompt": ""})
    assert (r.status_code, r.json()) == (200, {"embedding": []})


def test_legacy_embeddings_reaches_an_openai_backend_as_embeddings(env: Env, client: ollama.Client) -> None:
    client.embeddings(model=OAI_EMBED, prompt="legacy prompt")
    body = env.last_body(OAI_EMBED, "/v1/embeddings")
    assert (body["model"], body["input"]) == (OAI_EMBED, ["legacy prompt"])


# ---------------------------------------------------------------------------------------------------------
# Model management: pull, push, create + blobs, delete, copy


def _tag_names(client: ollama.Client) -> set[str]:
    return {m.model or "" for m in client.list().models}


def test_pull_stream_fans_out_to_every_ollama_backend(env: Env, client: ollama.Client) -> None:
    statuses = [p.status for p in client.pull("tinyllama:1b", stream=True)]
    assert len(env.big.requests_to("/api/pull")) == 1
    assert len(env.gpu.requests_to("/api/pull")) == 1
    assert statuses.count("pulling manifest") == 2
    assert "tinyllama:1b" in env.big.models
    assert "tinyllama:1b" in env.gpu.models


def test_pull_stream_reports_success_once_at_the_end(client: ollama.Client) -> None:
    statuses = [p.status for p in client.pull("phi3:mini", stream=True)]
    assert statuses.count("success") == 1
    assert statuses[-1] == "success"


def test_pull_stream_relays_each_backends_progress_in_turn_with_one_final_success(http: httpx.Client) -> None:
    with FakeOllama(models=[]) as solo:
        one = ndjson_lines(direct(solo, "POST", "/api/pull", {"model": "gemma3:1b"}).content)
    r = http.post("/api/pull", json={"model": "gemma3:1b"})
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert ndjson_lines(r.content) == one[:-1] + one


def test_pull_without_stream_answers_only_success(env: Env, client: ollama.Client) -> None:
    out = client.pull("smollm:135m", stream=False)
    assert out.status == "success"
    assert "smollm:135m" in env.big.models
    assert "smollm:135m" in env.gpu.models


def test_pulled_model_appears_in_tags(client: ollama.Client) -> None:
    client.pull("mistral:7b", stream=False)
    assert "mistral:7b" in _tag_names(client)


def test_pull_with_backend_header_reaches_only_that_backend(env: Env) -> None:
    with ollama.Client(host=env.url, headers={"X-Hearth-Backend": "gpu"}) as pinned:
        statuses = [p.status for p in pinned.pull("starcoder2:3b", stream=True)]
        assert statuses[-1] == "success"
        assert "starcoder2:3b" in _tag_names(pinned)
    assert env.big.requests_to("/api/pull") == []
    assert len(env.gpu.requests_to("/api/pull")) == 1
    assert "starcoder2:3b" not in env.big.models


def test_pull_with_backend_query_parameter_reaches_only_that_backend(env: Env, http: httpx.Client) -> None:
    r = http.post("/api/pull", params={"backend": "big"}, json={"model": "granite3:2b", "stream": False})
    assert r.json() == {"status": "success"}
    assert len(env.big.requests_to("/api/pull")) == 1
    assert env.gpu.requests_to("/api/pull") == []


def test_push_stream_goes_to_the_backend_that_has_the_model(env: Env, client: ollama.Client) -> None:
    statuses = [p.status for p in client.push(QWEN, stream=True)]
    assert statuses[-1] == "success"
    assert statuses.count("success") == 1
    assert len(env.gpu.requests_to("/api/push")) == 1
    assert env.big.requests_to("/api/push") == []


def test_push_without_stream_answers_only_success(env: Env, client: ollama.Client) -> None:
    out = client.push(LLAMA, stream=False)
    assert out.status == "success"
    assert len(env.big.requests_to("/api/push")) == 1


def _blob(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_blob_head_is_404_until_uploaded_then_200(http: httpx.Client) -> None:
    data = b"GGUF head check"
    digest = _blob(data)
    assert http.head(f"/api/blobs/{digest}").status_code == 404
    assert http.post(f"/api/blobs/{digest}", content=data).status_code == 201
    assert http.head(f"/api/blobs/{digest}").status_code == 200


def test_blob_upload_lands_on_the_first_ollama_backend(
    env: Env, client: ollama.Client, tmp_path: Path
) -> None:
    path = tmp_path / "weights.gguf"
    path.write_bytes(b"GGUF uploaded with the client")
    digest = client.create_blob(path)
    assert digest == _blob(path.read_bytes())
    assert digest in env.big.blobs
    assert digest not in env.gpu.blobs


def test_create_from_an_uploaded_blob_makes_the_model_available(
    env: Env, client: ollama.Client, tmp_path: Path
) -> None:
    path = tmp_path / "mine.gguf"
    path.write_bytes(b"GGUF my very own model")
    digest = client.create_blob(path)
    out = client.create(model="my-model", files={"mine.gguf": digest}, stream=False)
    assert out.status == "success"
    assert "my-model:latest" in env.big.models
    assert "my-model:latest" in _tag_names(client)


def test_create_stream_reports_progress_ending_in_success(env: Env, client: ollama.Client) -> None:
    statuses = [
        p.status for p in client.create(model="llama-tuned", from_=LLAMA, system="be nice", stream=True)
    ]
    assert statuses[-1] == "success"
    assert statuses.count("success") == 1
    assert env.big.requests_to("/api/create")[-1].json["from"] == LLAMA


def test_blob_and_create_with_backend_header_meet_on_that_backend(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "gpu.gguf"
    path.write_bytes(b"GGUF for the gpu box")
    with ollama.Client(host=env.url, headers={"X-Hearth-Backend": "gpu"}) as pinned:
        digest = pinned.create_blob(path)
        out = pinned.create(model="gpu-model", files={"gpu.gguf": digest}, stream=False)
    assert out.status == "success"
    assert digest in env.gpu.blobs
    assert "gpu-model:latest" in env.gpu.models
    assert "gpu-model:latest" not in env.big.models


def test_delete_removes_the_model_from_every_backend_that_has_it(env: Env, client: ollama.Client) -> None:
    env.big.add_model("doomed:1b")
    env.gpu.add_model("doomed:1b")
    env.hearth.refresh()
    client.delete("doomed:1b")
    assert len(env.big.requests_to("/api/delete")) == 1
    assert len(env.gpu.requests_to("/api/delete")) == 1
    assert "doomed:1b" not in env.big.models + env.gpu.models
    assert "doomed:1b" not in _tag_names(client)


def test_delete_reaches_only_the_backends_that_have_the_model(env: Env, client: ollama.Client) -> None:
    env.gpu.add_model("gpu-only:1b")
    env.hearth.refresh()
    client.delete("gpu-only:1b")
    assert env.big.requests_to("/api/delete") == []
    assert "gpu-only:1b" not in env.gpu.models


def test_delete_of_an_unknown_model_answers_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("never-heard-of:1b")
    assert err.value.status_code == 404


def test_copy_makes_the_destination_available(env: Env, client: ollama.Client) -> None:
    client.copy(LLAMA, "llama-backup:latest")
    assert "llama-backup:latest" in env.big.models
    assert "llama-backup:latest" in _tag_names(client)
    sent = env.big.requests_to("/api/copy")[-1].json
    assert sent == {"source": LLAMA, "destination": "llama-backup:latest"}
