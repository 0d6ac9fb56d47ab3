"""Specification of the OpenAI API translator (hearth.protocol.openai)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import msgspec
import openai as openai_sdk
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from hearth.errors import BadRequest, UpstreamError
from hearth.protocol import openai as wire
from hearth.protocol import openai_stream
from hearth.protocol.canonical import (
    ChatRequest,
    Chunk,
    CompletionRequest,
    EmbedRequest,
    EmbedResult,
    Message,
    Tool,
    ToolCall,
    Usage,
)

FAST = settings(max_examples=150, deadline=None)
USER = {"role": "user", "content": "hi"}


def via_json(obj: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(obj))


def assert_well_typed(obj: Any) -> None:
    """msgspec checks every field of the canonical dataclass against its annotation."""
    assert msgspec.convert(msgspec.to_builtins(obj), type(obj)) == obj


def bad_request(fn: Any, body: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        fn(body)
    return info.value


def chat(**fields: Any) -> ChatRequest:
    return wire.decode_chat({"model": "m", "messages": [USER], **fields})


def decode_stream(objs: list[dict[str, Any]]) -> list[Chunk]:
    decoder = wire.ChatStreamDecoder()
    out = [c for obj in objs for c in decoder.feed(via_json(obj))]
    return out + decoder.finish()


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


def finish(reason: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}


USAGE_ONLY = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}


def public_names(module: ModuleType, *homes: ModuleType) -> set[str]:
    """The public names ``module`` holds that are defined in ``module`` itself or in one of ``homes``."""
    where = {module.__name__} | {home.__name__ for home in homes}
    return {
        n
        for n, v in vars(module).items()
        if getattr(v, "__module__", None) in where and not n.startswith("_")
    }


def test_all_lists_exactly_the_public_names() -> None:
    # The stream codecs live in openai_stream; openai re-exports exactly those as its own.
    assert set(wire.__all__) == public_names(wire, openai_stream)
    assert set(openai_stream.__all__) <= set(wire.__all__)


def test_stream_module_all_lists_exactly_the_public_names() -> None:
    assert set(openai_stream.__all__) == public_names(openai_stream)


def test_stream_codecs_are_importable_from_openai() -> None:
    assert wire.ChatStreamDecoder is openai_stream.ChatStreamDecoder
    assert wire.ChatStreamEncoder is openai_stream.ChatStreamEncoder


# --- chat request decoding ----------------------------------------------------------------------------


def test_chat_does_not_stream_by_default() -> None:
    assert chat().stream is False


def test_content_parts_become_text_and_images() -> None:
    content = [
        {"type": "text", "text": "what is"},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AAA", "detail": "low"}},
        {"type": "text", "text": "this?"},
    ]
    msg = chat(messages=[{"role": "user", "content": content}]).messages[0]
    assert msg == Message(role="user", content="what is\nthis?", images=["/9j/AAA"])


def test_null_content_is_empty() -> None:
    assert chat(messages=[{"role": "assistant", "content": None}]).messages[0].content == ""


def test_only_base64_data_urls_are_accepted_for_images() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    err = bad_request(wire.decode_chat, {"model": "m", "messages": [{"role": "user", "content": [part]}]})
    assert "only base64 data URLs are supported" in err.message
    assert err.param == "messages[0].content[0].image_url.url"


def test_unsupported_content_part_is_rejected() -> None:
    part = {"type": "input_audio", "input_audio": {}}
    err = bad_request(wire.decode_chat, {"model": "m", "messages": [{"role": "user", "content": [part]}]})
    assert err.param == "messages[0].content[0].type"


def test_developer_role_becomes_system() -> None:
    assert chat(messages=[{"role": "developer", "content": "x"}]).messages[0].role == "system"


def test_unknown_role_is_rejected() -> None:
    assert bad_request(wire.decode_chat, {"model": "m", "messages": [{"role": "function"}]}).param == (
        "messages[0].role"
    )


def test_wrong_type_names_the_openai_param() -> None:
    err = bad_request(wire.decode_chat, {"model": "m", "messages": [{"role": "user", "content": 1}]})
    assert err.param == "messages[0].content"
    assert err.message.startswith("invalid type for 'messages[0].content'")


def test_missing_messages_is_named() -> None:
    assert bad_request(wire.decode_chat, {"model": "m"}).message == "missing field 'messages'"


def test_assistant_tool_call_arguments_are_decoded() -> None:
    call = {"id": "call_a", "type": "function", "function": {"name": "f", "arguments": '{"x": [1, 2]}'}}
    msg = chat(messages=[{"role": "assistant", "content": None, "tool_calls": [call]}]).messages[0]
    assert msg.tool_calls == [ToolCall(name="f", arguments={"x": [1, 2]}, id="call_a", index=0)]


def test_empty_tool_call_arguments_mean_no_arguments() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}
    assert (
        chat(messages=[{"role": "assistant", "tool_calls": [call]}]).messages[0].tool_calls[0].arguments == {}
    )


@pytest.mark.parametrize("arguments", ["{not json", "[1]", "\ud800"])
def test_tool_call_arguments_must_be_a_json_object(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    err = bad_request(
        wire.decode_chat, {"model": "m", "messages": [{"role": "assistant", "tool_calls": [call]}]}
    )
    assert err.param == "messages[0].tool_calls[0].function.arguments"


def test_tool_results_are_named_after_the_call_they_answer() -> None:
    call = {"id": "c7", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    req = chat(
        messages=[
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c7", "content": "sunny"},
        ]
    )
    assert (req.messages[1].tool_call_id, req.messages[1].tool_name) == ("c7", "weather")


def test_assistant_reasoning_is_kept_as_thinking() -> None:
    assert chat(messages=[{"role": "assistant", "reasoning": "hm"}]).messages[0].thinking == "hm"


def test_tools_are_decoded() -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
    }
    assert chat(tools=[tool]).tools == [Tool(name="f", description="d", parameters={"type": "object"})]


def test_tools_must_be_functions() -> None:
    body = {"model": "m", "messages": [USER], "tools": [{"type": "web_search"}]}
    assert bad_request(wire.decode_chat, body).param == "tools[0].type"


@pytest.mark.parametrize(
    ("response_format", "fmt"),
    [
        ({"type": "text"}, None),
        ({"type": "json_object"}, "json"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
            {"type": "object"},
        ),
    ],
)
def test_response_format_becomes_format(response_format: dict[str, Any], fmt: Any) -> None:
    assert chat(response_format=response_format).format == fmt


def test_options_use_ollama_names() -> None:
    req = chat(
        max_tokens=10, temperature=0.5, top_p=0.9, seed=7, presence_penalty=1, frequency_penalty=-1, stop="\n"
    )
    assert req.options == {
        "num_predict": 10,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 7,
        "presence_penalty": 1,
        "frequency_penalty": -1,
        "stop": ["\n"],
    }


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=10, max_completion_tokens=20).options == {"num_predict": 20}


def test_null_parameters_are_absent() -> None:
    assert chat(temperature=None, stop=None, response_format=None, tools=None).options == {}


def test_stream_options_include_usage() -> None:
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage is True
    assert chat(stream=True).include_usage is False


@pytest.mark.parametrize(
    ("effort", "think"), [("low", "low"), ("medium", "medium"), ("high", "high"), ("none", False)]
)
def test_reasoning_effort_becomes_think(effort: str, think: bool | str) -> None:
    assert chat(reasoning_effort=effort).think == think


def test_unknown_reasoning_effort_is_rejected() -> None:
    assert bad_request(wire.decode_chat, {"model": "m", "messages": [], "reasoning_effort": "max"}).param == (
        "reasoning_effort"
    )


def test_ignored_parameters_are_accepted() -> None:
    req = chat(tool_choice="auto", user="u", logit_bias={"1": 2}, n=1, parallel_tool_calls=False)
    assert req.options == {}


def test_more_than_one_choice_is_rejected() -> None:
    assert bad_request(wire.decode_chat, {"model": "m", "messages": [USER], "n": 2}).param == "n"


# --- completion and embeddings request decoding -------------------------------------------------------


def test_completion_decodes_prompt_suffix_and_options() -> None:
    req = wire.decode_completion(
        {
            "model": "m",
            "prompt": ["def f("],
            "suffix": "x",
            "max_tokens": 3,
            "stream": True,
            "stream_options": {},
        }
    )
    assert req == CompletionRequest(
        model="m", prompt="def f(", stream=True, suffix="x", options={"num_predict": 3}
    )


@pytest.mark.parametrize("prompt", [["a", "b"], [1, 2], [[1, 2]], 5])
def test_completion_supports_only_a_single_string_prompt(prompt: Any) -> None:
    assert bad_request(wire.decode_completion, {"model": "m", "prompt": prompt}).param == "prompt"


def test_embeddings_input_may_be_a_string_or_strings() -> None:
    assert wire.decode_embeddings({"model": "m", "input": "a"}).inputs == ["a"]
    req = wire.decode_embeddings({"model": "m", "input": ["a", "b"], "dimensions": 64})
    assert req == EmbedRequest(model="m", inputs=["a", "b"], dimensions=64)


@pytest.mark.parametrize("value", [[1, 2], [[1, 2]], [], 3])
def test_embeddings_reject_token_arrays_and_empty_input(value: Any) -> None:
    assert bad_request(wire.decode_embeddings, {"model": "m", "input": value}).param == "input"


def test_embeddings_reject_unknown_encoding_format() -> None:
    body = {"model": "m", "input": "a", "encoding_format": "int8"}
    assert bad_request(wire.decode_embeddings, body).param == "encoding_format"


def test_embeddings_wants_base64() -> None:
    assert wire.embeddings_wants_base64({"encoding_format": "base64"}) is True
    assert wire.embeddings_wants_base64({"encoding_format": "float"}) is False
    assert wire.embeddings_wants_base64([]) is False


# --- request encoding for OpenAI-compatible backends --------------------------------------------------


def test_encode_chat_maps_options_and_drops_ollama_only_ones() -> None:
    options = {"num_predict": 50, "num_ctx": 8192, "top_k": 4, "temperature": 0.1, "stop": ["x"], "seed": 1}
    body = wire.encode_chat(ChatRequest(model="m", messages=[], stream=False, options=options, keep_alive=-1))
    assert body == {
        "model": "m",
        "messages": [],
        "stream": False,
        "max_tokens": 50,
        "temperature": 0.1,
        "seed": 1,
        "stop": ["x"],
    }


@pytest.mark.parametrize("num_predict", [-1, -2, 0])
def test_unlimited_num_predict_sends_no_max_tokens(num_predict: int) -> None:
    body = wire.encode_chat(ChatRequest(model="m", messages=[], options={"num_predict": num_predict}))
    assert "max_tokens" not in body


def test_streamed_requests_always_ask_for_usage() -> None:
    assert wire.encode_chat(ChatRequest(model="m", messages=[]))["stream_options"] == {"include_usage": True}
    body = wire.encode_completion(CompletionRequest(model="m", prompt="p"))
    assert body["stream_options"] == {"include_usage": True}


def test_encode_format() -> None:
    assert wire.encode_chat(ChatRequest(model="m", messages=[], format="json"))["response_format"] == {
        "type": "json_object"
    }
    schema = {"type": "object"}
    assert wire.encode_chat(ChatRequest(model="m", messages=[], format=schema))["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema, "strict": True},
    }


def test_images_become_data_urls_png_unless_recognised() -> None:
    msg = Message(role="user", content="see", images=["AAAA", "/9j/4AAQ"])
    body = wire.encode_chat(ChatRequest(model="m", messages=[msg]))
    assert body["messages"][0]["content"] == [
        {"type": "text", "text": "see"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
    ]


def test_tool_history_without_ids_gets_matching_ids() -> None:
    # What an Ollama client sends: calls without ids, results in order or naming the function.
    calls = [ToolCall("a", {"x": 1}), ToolCall("b", {}), ToolCall("c", {})]
    messages = [
        Message(role="assistant", tool_calls=calls),
        Message(role="tool", content="C", tool_name="c"),
        Message(role="tool", content="A"),
        Message(role="tool", content="B"),
    ]
    out = wire.encode_chat(ChatRequest(model="m", messages=messages))["messages"]
    sent = out[0]["tool_calls"]
    assert out[0]["content"] is None
    assert sent[0]["function"] == {"name": "a", "arguments": '{"x":1}'}
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in sent)
    assert [m["tool_call_id"] for m in out[1:]] == [sent[2]["id"], sent[0]["id"], sent[1]["id"]]


def test_think_level_becomes_reasoning_effort_and_booleans_are_dropped() -> None:
    assert wire.encode_chat(ChatRequest(model="m", messages=[], think="high"))["reasoning_effort"] == "high"
    assert "reasoning_effort" not in wire.encode_chat(ChatRequest(model="m", messages=[], think=True))


def test_encode_completion_and_embeddings() -> None:
    req = CompletionRequest(
        model="m", prompt="p", stream=False, suffix="s", system="dropped", images=["AAAA"]
    )
    assert wire.encode_completion(req) == {"model": "m", "prompt": "p", "stream": False, "suffix": "s"}
    body = wire.encode_embeddings(EmbedRequest(model="m", inputs=["a"], dimensions=3, keep_alive=0))
    assert body == {"model": "m", "input": ["a"], "encoding_format": "float", "dimensions": 3}


# --- stream and response decoding ---------------------------------------------------------------------


def test_stream_decoder_emits_content_and_reasoning_as_they_come() -> None:
    decoder = wire.ChatStreamDecoder()
    assert decoder.feed(delta(role="assistant", content="")) == []
    assert decoder.feed(delta(reasoning_content="a")) == [Chunk(thinking="a")]
    assert decoder.feed(delta(reasoning="b", content="c")) == [Chunk(content="c", thinking="b")]


def test_stream_decoder_joins_tool_call_fragments() -> None:
    first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"ci'}}
    second = {"index": 1, "id": "call_2", "function": {"name": "g", "arguments": "{}"}}
    chunks = decode_stream(
        [
            delta(tool_calls=[first]),
            delta(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}, second]),
            finish("tool_calls"),
            USAGE_ONLY,
        ]
    )
    assert chunks == [
        Chunk(tool_calls=[ToolCall("f", {"city": "Oslo"}, "call_1", 0), ToolCall("g", {}, "call_2", 1)]),
        Chunk(done=True, done_reason="tool_calls", usage=Usage(prompt_tokens=9, completion_tokens=4)),
    ]


def test_stream_decoder_without_indexes_starts_a_call_per_id() -> None:
    frags: list[dict[str, Any]] = [
        {"id": "a", "function": {"name": "f", "arguments": "{"}},
        {"function": {"arguments": "}"}},
        {"id": "b", "function": {"name": "g", "arguments": "{}"}},
    ]
    chunks = decode_stream([delta(tool_calls=[f]) for f in frags] + [finish("tool_calls")])
    assert [(tc.id, tc.name) for tc in chunks[0].tool_calls] == [("a", "f"), ("b", "g")]


def test_done_chunk_waits_for_the_usage_chunk() -> None:
    decoder = wire.ChatStreamDecoder()
    assert decoder.feed(finish("length")) == []
    assert decoder.feed(USAGE_ONLY) == [Chunk(done=True, done_reason="length", usage=Usage(9, 4))]
    assert decoder.finish() == []


def test_finish_emits_the_done_chunk_when_no_usage_came() -> None:
    assert decode_stream([delta(content="x"), finish("stop")]) == [
        Chunk(content="x"),
        Chunk(done=True, done_reason="stop"),
    ]


def test_stream_decoder_reads_completion_chunks() -> None:
    objs: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "text": "ab", "finish_reason": None}]},
        {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}], "usage": {"prompt_tokens": 1}},
    ]
    assert decode_stream(objs) == [
        Chunk(content="ab"),
        Chunk(done=True, done_reason="stop", usage=Usage(1, 0)),
    ]


def test_stream_error_object_raises_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="overloaded"):
        wire.ChatStreamDecoder().feed({"error": {"message": "overloaded", "type": "server_error"}})


def test_invalid_streamed_arguments_raise_upstream_error() -> None:
    decoder = wire.ChatStreamDecoder()
    decoder.feed(delta(tool_calls=[{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]))
    with pytest.raises(UpstreamError, match="invalid JSON"):
        decoder.feed(finish("tool_calls"))


def test_a_streamed_tool_call_without_a_name_raises_upstream_error() -> None:
    decoder = wire.ChatStreamDecoder()
    decoder.feed(delta(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))
    with pytest.raises(UpstreamError, match="name"):
        decoder.finish()


def test_decode_chat_response() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    obj = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": "t",
                    "tool_calls": [call],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5},
    }
    assert wire.decode_chat_response(obj) == Chunk(
        thinking="t",
        tool_calls=[ToolCall("f", {"a": 1}, "c", 0)],
        done=True,
        done_reason="tool_calls",
        usage=Usage(2, 3),
    )


def test_decode_completion_response() -> None:
    obj = {"choices": [{"text": "xy", "index": 0, "finish_reason": "length"}], "usage": {"prompt_tokens": 1}}
    assert wire.decode_completion_response(obj) == Chunk(
        content="xy", done=True, done_reason="length", usage=Usage(1)
    )


# --- encoding for OpenAI clients ----------------------------------------------------------------------


def test_stream_encoder_opens_with_the_assistant_role() -> None:
    enc = wire.ChatStreamEncoder("m", include_usage=False)
    first, second = enc.encode(Chunk(content="a")), enc.encode(Chunk(content="b"))
    assert first[0]["choices"] == [
        {"index": 0, "delta": {"role": "assistant", "content": "a"}, "logprobs": None, "finish_reason": None}
    ]
    assert second[0]["choices"][0]["delta"] == {"content": "b"}
    assert first[0]["id"] == second[0]["id"]
    assert first[0]["id"].startswith("chatcmpl-")
    assert first[0]["object"] == "chat.completion.chunk"


def test_stream_encoder_skips_empty_chunks_after_the_first() -> None:
    enc = wire.ChatStreamEncoder("m", include_usage=False)
    enc.encode(Chunk())
    assert enc.encode(Chunk()) == []


def test_usage_chunk_follows_done_only_when_asked() -> None:
    done = Chunk(done=True, done_reason="stop", usage=Usage(3, 4))
    with_usage = wire.ChatStreamEncoder("m", include_usage=True).encode(done)
    assert [o["choices"] for o in with_usage][1] == []
    assert with_usage[1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert len(wire.ChatStreamEncoder("m", include_usage=False).encode(done)) == 1


def test_a_stream_with_tool_calls_finishes_with_tool_calls() -> None:
    enc = wire.ChatStreamEncoder("m", include_usage=False)
    out = enc.encode(Chunk(tool_calls=[ToolCall("f", {}, index=0)])) + enc.encode(
        Chunk(tool_calls=[ToolCall("g", {})])
    )
    assert [o["choices"][0]["delta"]["tool_calls"][0]["index"] for o in out] == [0, 1]
    assert enc.encode(Chunk(done=True, done_reason="stop"))[0]["choices"][0]["finish_reason"] == "tool_calls"


def test_completion_stream_shape() -> None:
    enc = wire.ChatStreamEncoder("m", include_usage=True, kind="completion")
    out = enc.encode(Chunk(content="x")) + enc.encode(
        Chunk(done=True, done_reason="length", usage=Usage(1, 1))
    )
    assert out[0]["id"].startswith("cmpl-")
    assert [o["object"] for o in out] == ["text_completion"] * 3
    assert out[1]["choices"] == [{"text": "", "index": 0, "logprobs": None, "finish_reason": "length"}]
    for obj in out[1:]:  # the SDK types finish_reason as non-null; streamed pieces carry null
        Completion.model_validate(obj)


def test_chat_response_content_is_null_when_only_tool_calls() -> None:
    chunk = Chunk(tool_calls=[ToolCall("f", {"a": 1})], done=True, usage=None)
    out = wire.encode_chat_response(chunk, "m")
    choice = out["choices"][0]
    assert choice["message"]["content"] is None
    assert choice["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": '{"a":1}'}
    assert choice["finish_reason"] == "tool_calls"
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    ChatCompletion.model_validate(out)


def test_completion_response_shape() -> None:
    out = wire.encode_completion_response(Chunk(content="x", done=True, usage=Usage(2, 1)), "m")
    assert out["choices"] == [{"text": "x", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert out["object"] == "text_completion"
    Completion.model_validate(out)


def test_embeddings_result_floats_and_base64_decode_back() -> None:
    res = EmbedResult(model="m", embeddings=[[0.5, -2.0], [1.0, 0.25]], usage=Usage(prompt_tokens=4))
    for b64 in (False, True):
        out = via_json(wire.encode_embeddings_result(res, b64))
        if not b64:
            CreateEmbeddingResponse.model_validate(out)
        assert wire.decode_embeddings_result(out, "m") == res
    assert wire.encode_embeddings_result(res, True)["data"][0]["embedding"] == "AAAAPwAAAMA="


@pytest.mark.parametrize("embedding", ["AAA", "AAA=", "%%%%"])
def test_bad_base64_embedding_raises_upstream_error(embedding: str) -> None:
    with pytest.raises(UpstreamError):
        wire.decode_embeddings_result({"data": [{"embedding": embedding}]}, "m")


def test_the_openai_sdk_talks_to_the_translator() -> None:
    """The official SDK asks for base64 embeddings by default and parses our streams."""
    seen: list[dict[str, Any]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        body = msgspec.json.decode(request.content)
        seen.append(body)
        if request.url.path.endswith("/embeddings"):
            emb_req = wire.decode_embeddings(body)
            res = EmbedResult(
                model=emb_req.model, embeddings=[[0.5, 1.5]] * len(emb_req.inputs), usage=Usage(3)
            )
            return httpx.Response(
                200, json=wire.encode_embeddings_result(res, wire.embeddings_wants_base64(body))
            )
        req = wire.decode_chat(body)
        enc = wire.ChatStreamEncoder(req.model, req.include_usage)
        chunks = [
            Chunk(content="Hi"),
            Chunk(tool_calls=[ToolCall("f", {"q": 1})]),
            Chunk(done=True, usage=Usage(5, 6)),
        ]
        sse = b"".join(b"data: " + msgspec.json.encode(o) + b"\n\n" for c in chunks for o in enc.encode(c))
        return httpx.Response(
            200, content=sse + b"data: [DONE]\n\n", headers={"content-type": "text/event-stream"}
        )

    http = httpx.Client(transport=httpx.MockTransport(handle))
    client = openai_sdk.OpenAI(api_key="k", base_url="http://hearth/v1", http_client=http)  # type: ignore[arg-type]
    emb = client.embeddings.create(model="e", input=["a", "b"])
    assert seen[0]["encoding_format"] == "base64"
    assert [d.embedding for d in emb.data] == [[0.5, 1.5], [0.5, 1.5]]
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "q"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    parts = list(stream)
    assert parts[0].choices[0].delta.content == "Hi"
    assert parts[-2].choices[0].finish_reason == "tool_calls"
    assert parts[-1].usage is not None
    assert parts[-1].usage.total_tokens == 11


# --- properties ---------------------------------------------------------------------------------------

text = st.text(max_size=12)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
finite_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
tool_calls = st.builds(
    ToolCall,
    name=st.text(min_size=1, max_size=8),
    arguments=st.dictionaries(st.text(max_size=6), finite_json, max_size=3),
    id=st.sampled_from(["", "call_1", "x9"]),
)
images = st.lists(st.sampled_from(["iVBORw0KGgo=", "/9j/4AAQ", "R0lGODlh", "UklGRg=="]), max_size=2)
messages = st.one_of(
    st.builds(Message, role=st.just("system"), content=text),
    st.builds(Message, role=st.just("user"), content=text, images=images),
    st.builds(Message, role=st.just("assistant"), content=text, tool_calls=st.lists(tool_calls, max_size=2)),
    st.builds(
        Message,
        role=st.just("tool"),
        content=text,
        tool_call_id=st.none() | st.sampled_from(["call_1", "x9"]),
        tool_name=st.none() | st.text(min_size=1, max_size=8),
    ),
)
options = st.fixed_dictionaries(
    {},
    optional={
        "num_ctx": st.sampled_from([2048, 8192]),
        "num_predict": st.integers(-2, 4096),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(1, 100),
        "seed": st.integers(0, 2**31),
        "stop": st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=3),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
    },
)
schemas = st.builds(
    lambda props: {"type": "object", "properties": {k: {"type": "string"} for k in props}},
    st.lists(st.text(min_size=1, max_size=5), max_size=3),
)
tools = st.builds(
    Tool, name=st.text(min_size=1, max_size=8), description=text, parameters=schemas | st.just({})
)
chat_requests = st.builds(
    ChatRequest,
    model=st.text(min_size=1, max_size=10),
    messages=st.lists(messages, max_size=4),
    stream=st.booleans(),
    tools=st.lists(tools, max_size=2),
    format=st.none() | st.just("json") | schemas,
    options=options,
    keep_alive=st.none() | st.sampled_from(["5m", 0, -1]),
    think=st.sampled_from([None, True, False, "low", "medium", "high"]),
)
OPENAI_OPTIONS = {"temperature", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty"}


def carried_by_openai(req: ChatRequest) -> ChatRequest:
    """What survives a trip through the OpenAI wire: no keep_alive, no Ollama-only options (num_ctx,
    top_k, unlimited num_predict), no boolean think, no Message.thinking or tool_name; tool-call indexes
    are positions; include_usage follows stream (the encoder always asks for usage when streaming).
    """
    opts = {k: v for k, v in req.options.items() if k in OPENAI_OPTIONS}
    if req.options.get("num_predict", 0) > 0:
        opts["num_predict"] = req.options["num_predict"]
    msgs = [
        dataclasses.replace(
            m,
            thinking=None,
            tool_name=None,
            tool_calls=[dataclasses.replace(tc, index=i) for i, tc in enumerate(m.tool_calls)],
        )
        for m in req.messages
    ]
    think = req.think if isinstance(req.think, str) else None
    return dataclasses.replace(
        req, messages=msgs, options=opts, keep_alive=None, think=think, include_usage=req.stream
    )


def forget_generated_ids(back: ChatRequest, sent: ChatRequest) -> None:
    """Ids the encoder had to invent (OpenAI requires them) are checked for shape, then dropped."""
    for b, s in zip(back.messages, sent.messages, strict=True):
        b.tool_name = None
        for btc, stc in zip(b.tool_calls, s.tool_calls, strict=True):
            if not stc.id:
                assert btc.id.startswith("call_")
                btc.id = ""
        if s.tool_call_id is None:
            b.tool_call_id = None


@FAST
@given(chat_requests)
def test_chat_request_round_trips_on_what_openai_carries(req: ChatRequest) -> None:
    back = wire.decode_chat(via_json(wire.encode_chat(req)))
    forget_generated_ids(back, req)
    assert back == carried_by_openai(req)


@FAST
@given(
    st.builds(
        CompletionRequest,
        model=st.text(min_size=1, max_size=8),
        prompt=text,
        stream=st.booleans(),
        suffix=st.none() | text,
        options=options,
    )
)
def test_completion_request_round_trips_on_what_openai_carries(req: CompletionRequest) -> None:
    back = wire.decode_completion(via_json(wire.encode_completion(req)))
    expected = carried_by_openai(ChatRequest(model="m", messages=[], options=req.options)).options
    assert back == dataclasses.replace(req, options=expected, include_usage=req.stream)


usages = st.builds(Usage, st.integers(0, 10**9), st.integers(0, 10**9))
stream_chunks = st.lists(
    st.builds(Chunk, content=text, thinking=text, tool_calls=st.lists(tool_calls, max_size=2)), max_size=5
)


@FAST
@given(stream_chunks, usages, st.sampled_from(["stop", "length"]))
def test_encoded_streams_decode_back(chunks: list[Chunk], usage: Usage, reason: str) -> None:
    sent = [*chunks, Chunk(done=True, done_reason=reason, usage=usage)]
    encoder = wire.ChatStreamEncoder("m", include_usage=True)
    back = decode_stream([obj for c in sent for obj in encoder.encode(c)])
    calls = [tc for c in sent for tc in c.tool_calls]
    got = [tc for c in back for tc in c.tool_calls]
    assert "".join(c.content for c in back) == "".join(c.content for c in sent)
    assert "".join(c.thinking for c in back) == "".join(c.thinking for c in sent)
    assert [(tc.name, tc.arguments) for tc in got] == [(tc.name, tc.arguments) for tc in calls]
    assert all(g.id == (s.id or g.id) and g.id for g, s in zip(got, calls, strict=True))
    assert [c.done for c in back].count(True) == 1
    assert back[-1].usage == usage
    assert back[-1].done_reason == ("tool_calls" if calls else reason)


@FAST
@given(stream_chunks, usages, st.booleans())
def test_encoded_streams_are_valid_sdk_chunks(chunks: list[Chunk], usage: Usage, include_usage: bool) -> None:
    encoder = wire.ChatStreamEncoder("m", include_usage=include_usage)
    for chunk in [*chunks, Chunk(done=True, usage=usage)]:
        for obj in encoder.encode(chunk):
            ChatCompletionChunk.model_validate(via_json(obj))


VALID_CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "developer", "content": "s"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {"url": "data:;base64,AA"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "r"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": {}}},
    "max_tokens": 5,
    "temperature": 0.5,
    "stop": ["x"],
    "seed": 3,
    "n": 1,
    "reasoning_effort": "low",
    "stream": True,
    "stream_options": {"include_usage": True},
}
VALID_COMPLETION: dict[str, Any] = {
    "model": "m",
    "prompt": ["p"],
    "suffix": "s",
    "max_completion_tokens": 4,
    "stop": "x",
}
VALID_EMBEDDINGS: dict[str, Any] = {
    "model": "m",
    "input": ["a", "b"],
    "dimensions": 3,
    "encoding_format": "base64",
}
VALID_RESPONSE: dict[str, Any] = {
    "choices": [
        {
            "index": 0,
            "delta": {
                "content": "a",
                "reasoning_content": "t",
                "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}],
            },
            "message": {"content": "a", "tool_calls": VALID_CHAT["messages"][2]["tool_calls"]},
            "text": "t",
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2},
    "data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": "AACAPw=="}],
}
CASES = [
    (wire.decode_chat, VALID_CHAT),
    (wire.decode_completion, VALID_COMPLETION),
    (wire.decode_embeddings, VALID_EMBEDDINGS),
]
_DELETE = object()


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield from paths(child, (*prefix, key))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(value)
    parent = out
    for key in path[:-1]:
        parent = parent[key]
    if new is _DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = new
    return out


def mutations(body: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.sampled_from(list(paths(body))).flatmap(
        lambda p: (json_values | st.just(_DELETE)).map(lambda v: replaced(body, p, v))
    )


WRONG_VALUES = [_DELETE, None, True, 0, -1, 1.5, "", "s", "{", [], {}, [1], ["s"], [{}], {"a": 1}]


def decode_all_responses(objs: list[Any]) -> None:
    """Feed ``objs`` to every response decoder; each may only raise UpstreamError."""
    for decode in (
        wire.decode_chat_response,
        wire.decode_completion_response,
        lambda obj: wire.decode_embeddings_result(obj, "m"),
    ):
        with contextlib.suppress(UpstreamError):
            assert_well_typed(decode(objs[0]))
    decoder = wire.ChatStreamDecoder()
    with contextlib.suppress(UpstreamError):
        for obj in objs:
            for chunk in decoder.feed(obj):
                assert_well_typed(chunk)
        for chunk in decoder.finish():
            assert_well_typed(chunk)


@pytest.mark.parametrize(("decode", "body"), CASES)
def test_decoders_raise_only_bad_request_for_any_field_of_any_type(decode: Any, body: dict[str, Any]) -> None:
    assert_well_typed(decode(body))
    for path in paths(body):
        for value in WRONG_VALUES:
            with contextlib.suppress(BadRequest):
                assert_well_typed(decode(replaced(body, path, value)))


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(CASES).flatmap(lambda case: st.tuples(st.just(case[0]), json_values | mutations(case[1])))
)
def test_decoders_raise_only_bad_request_on_arbitrary_json(case: tuple[Any, Any]) -> None:
    decode, body = case
    with contextlib.suppress(BadRequest):
        assert_well_typed(decode(body))


def test_response_decoders_raise_only_upstream_error_for_any_field_of_any_type() -> None:
    for path in paths(VALID_RESPONSE):
        for value in WRONG_VALUES:
            decode_all_responses([replaced(VALID_RESPONSE, path, value)])


@settings(max_examples=300, deadline=None)
@given(st.lists(json_values | mutations(VALID_RESPONSE), min_size=1, max_size=3))
def test_response_decoders_raise_only_upstream_error_on_arbitrary_json(objs: list[Any]) -> None:
    decode_all_responses(objs)
