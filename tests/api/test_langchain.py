"""LangChain's ChatOllama (langchain_ollama) pointed at Hearth, as an app would use it: invoke,
stream and tool binding, against an Ollama backend (passthrough) and an OpenAI-compatible one
(translation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_ollama import ChatOllama
from tests.conftest import WEATHER_TOOL, LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI, plan_chat
from tests.fakes.replies import messages_prompt_tokens

LLAMA = "llama3.1:8b"
GPT = "gpt-4o-mini"
MODELS = [pytest.param(LLAMA, id="ollama-backend"), pytest.param(GPT, id="openai-backend")]


class Env:
    def __init__(self, hearth: LiveHearth, local: FakeOllama, cloud: FakeOpenAI) -> None:
        self.hearth = hearth
        self.url = hearth.url
        self.local = local
        self.cloud = cloud


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with FakeOllama(models=[LLAMA]) as local, FakeOpenAI(models=[GPT]) as cloud:
        settings = make_settings(
            [
                {"name": "local", "kind": "ollama", "url": local.url},
                {"name": "cloud", "kind": "openai", "url": cloud.url + "/v1"},
            ],
            aliases={"assistant": LLAMA},
        )
        with LiveHearth(settings) as hearth:
            yield Env(hearth, local, cloud)


@pytest.fixture(autouse=True)
def _forget_requests(env: Env) -> None:
    env.local.reset()
    env.cloud.reset()


@pytest.fixture
def chat_model(env: Env) -> Iterator[Callable[..., ChatOllama]]:
    """Factory for ChatOllama instances on Hearth; their HTTP clients are closed after the test."""
    made: list[ChatOllama] = []

    def make(model: str, **kwargs: Any) -> ChatOllama:
        llm = ChatOllama(model=model, base_url=env.url, **kwargs)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm._client._client.close()


def as_dicts(messages: list[Any]) -> list[dict[str, Any]]:
    """The Ollama-shaped messages the fakes plan their reply from."""
    roles = {"human": "user", "system": "system", "ai": "assistant", "tool": "tool"}
    return [{"role": roles[m.type], "content": m.content} for m in messages]


@pytest.mark.parametrize("model", MODELS)
def test_invoke_returns_the_backends_reply(chat_model: Callable[..., ChatOllama], model: str) -> None:
    messages = [SystemMessage("be brief"), HumanMessage("hello there friend")]
    out = chat_model(model).invoke(messages)
    assert isinstance(out, AIMessage)
    assert out.content == plan_chat(as_dicts(messages)).text


@pytest.mark.parametrize("model", MODELS)
def test_invoke_reports_token_usage(chat_model: Callable[..., ChatOllama], model: str) -> None:
    messages = [HumanMessage("count my words")]
    out = chat_model(model).invoke(messages)
    assert out.usage_metadata is not None
    assert out.usage_metadata["input_tokens"] == messages_prompt_tokens(as_dicts(messages))
    assert out.usage_metadata["output_tokens"] == len(plan_chat(as_dicts(messages)).pieces)


@pytest.mark.parametrize("model", MODELS)
def test_stream_chunks_join_to_the_backends_reply(chat_model: Callable[..., ChatOllama], model: str) -> None:
    messages = [HumanMessage("stream me a reply")]
    chunks = list(chat_model(model).stream(messages))
    assert len(chunks) > 1
    assert "".join(str(c.content) for c in chunks) == plan_chat(as_dicts(messages)).text


@pytest.mark.parametrize("model", MODELS)
def test_bind_tools_returns_a_tool_call_with_parsed_args(
    chat_model: Callable[..., ChatOllama], model: str
) -> None:
    messages = [HumanMessage("Paris")]
    expected = plan_chat(as_dicts(messages), ["get_weather"])
    out = chat_model(model).bind_tools([WEATHER_TOOL]).invoke(messages)
    assert [(tc["name"], tc["args"]) for tc in out.tool_calls] == [(expected.tool_name, expected.tool_args)]


@pytest.mark.parametrize("model", MODELS)
def test_bind_tools_stream_yields_the_tool_call(chat_model: Callable[..., ChatOllama], model: str) -> None:
    messages = [HumanMessage("Lisbon")]
    expected = plan_chat(as_dicts(messages), ["get_weather"])
    calls = [tc for c in chat_model(model).bind_tools([WEATHER_TOOL]).stream(messages) for tc in c.tool_calls]
    assert [(tc["name"], tc["args"]) for tc in calls] == [(expected.tool_name, expected.tool_args)]


@pytest.mark.parametrize("model", MODELS)
def test_a_tool_result_round_trip_gets_the_final_answer(
    chat_model: Callable[..., ChatOllama], model: str
) -> None:
    llm = chat_model(model).bind_tools([WEATHER_TOOL])
    history: list[Any] = [HumanMessage("Vienna")]
    call = llm.invoke(history)
    assert call.tool_calls
    history += [call, ToolMessage("cloudy, 12C", tool_call_id=call.tool_calls[0]["id"] or "")]
    final = llm.invoke(history)
    assert final.content == plan_chat(as_dicts(history)).text


def test_bind_tools_reach_an_ollama_backend_as_native_tools(
    env: Env, chat_model: Callable[..., ChatOllama]
) -> None:
    chat_model(LLAMA).bind_tools([WEATHER_TOOL]).invoke([HumanMessage("Paris")])
    sent = env.local.requests_to("/api/chat")[-1].json
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather"]


def test_model_options_reach_an_ollama_backend(env: Env, chat_model: Callable[..., ChatOllama]) -> None:
    chat_model(LLAMA, num_ctx=3072, temperature=0.4).invoke([HumanMessage("hi")])
    options = env.local.requests_to("/api/chat")[-1].json["options"]
    assert (options["num_ctx"], options["temperature"]) == (3072, 0.4)


@pytest.mark.parametrize("model", [LLAMA, GPT, "assistant"], ids=["ollama-model", "openai-model", "alias"])
def test_validate_model_on_init_finds_the_model_in_hearths_tags(
    chat_model: Callable[..., ChatOllama], model: str
) -> None:
    llm = chat_model(model, validate_model_on_init=True)
    assert llm.invoke([HumanMessage("ok")]).content == plan_chat([{"role": "user", "content": "ok"}]).text


@pytest.mark.parametrize("model", MODELS)
def test_json_format_returns_json(chat_model: Callable[..., ChatOllama], model: str) -> None:
    out = chat_model(model, format="json").invoke([HumanMessage("as json")])
    assert out.content == plan_chat([{"role": "user", "content": "as json"}], json_mode=True).text
