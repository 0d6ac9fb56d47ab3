"""Specification of the Ollama native API translator (hearth.protocol.ollama)."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import re
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import ollama as ollama_sdk
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hearth.errors import BadRequest, UpstreamError
from hearth.protocol import ollama as wire
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
    merge_chunks,
)

FAST = settings(max_examples=150, deadline=None)


def via_json(obj: Any) -> Any:
    return msgspec.json.decode(msgspec.json.encode(obj))


def assert_well_typed(obj: Any) -> None:
    """msgspec checks every field of the canonical dataclass against its annotation."""
    assert msgspec.convert(msgspec.to_builtins(obj), type(obj)) == obj


def bad_request(fn: Any, body: Any) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        fn(body)
    return info.value


def test_all_lists_exactly_the_public_names() -> None:
    defined = {n for n, v in vars(wire).items() if getattr(v, "__module__", None) == wire.__name__}
    assert set(wire.__all__) == {n for n in defined if not n.startswith("_")}


# --- request decoding ---------------------------------------------------------------------------------


def test_chat_streams_by_default() -> None:
    assert wire.decode_chat({"model": "m", "messages": []}).stream is True


def test_chat_stream_false_is_kept() -> None:
    assert wire.decode_chat({"model": "m", "stream": False}).stream is False


def test_chat_decodes_a_tool_round() -> None:
    req = wire.decode_chat(
        {
            "model": "qwen3:8b",
            "messages": [
                {"role": "user", "content": "weather?", "images": ["iVBORw0KGgo="]},
                {
                    "role": "assistant",
                    "content": "",
                    "thinking": "call the tool",
                    "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Oslo"}}}],
                },
                {"role": "tool", "content": "-3C", "tool_name": "weather"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}
            ],
        }
    )
    assert req.messages[0] == Message(role="user", content="weather?", images=["iVBORw0KGgo="])
    assert req.messages[1].tool_calls == [ToolCall(name="weather", arguments={"city": "Oslo"}, index=0)]
    assert req.messages[1].thinking == "call the tool"
    assert req.messages[2].tool_name == "weather"
    assert req.tools == [Tool(name="weather", parameters={"type": "object"})]


def test_chat_tool_call_index_defaults_to_its_position() -> None:
    calls = [{"function": {"name": "a"}}, {"function": {"name": "b", "index": 7}}]
    req = wire.decode_chat({"model": "m", "messages": [{"role": "assistant", "tool_calls": calls}]})
    assert [(tc.name, tc.index, tc.arguments) for tc in req.messages[0].tool_calls] == [
        ("a", 0, {}),
        ("b", 7, {}),
    ]


def test_chat_keeps_options_keep_alive_think_and_format_as_sent() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    req = wire.decode_chat(
        {
            "model": "m",
            "options": {"num_ctx": 8192, "temperature": 0.2, "whatever": [1]},
            "keep_alive": -1,
            "think": "high",
            "format": schema,
        }
    )
    assert req.options == {"num_ctx": 8192, "temperature": 0.2, "whatever": [1]}
    assert (req.keep_alive, req.think, req.format) == (-1, "high", schema)


def test_chat_format_json_and_empty() -> None:
    assert wire.decode_chat({"model": "m", "format": "json"}).format == "json"
    assert wire.decode_chat({"model": "m", "format": ""}).format is None


def test_chat_format_rejects_other_strings() -> None:
    err = bad_request(wire.decode_chat, {"model": "m", "format": "yaml"})
    assert err.message == "invalid value for 'format': expected \"json\" or a JSON schema object"


def test_missing_model_is_named() -> None:
    assert bad_request(wire.decode_chat, {"messages": []}).message == "missing field 'model'"


def test_wrong_type_names_the_message_field() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 3}]}
    err = bad_request(wire.decode_chat, body)
    assert err.message == "invalid type for 'messages[1].content': expected a string"
    assert err.param == "messages[1].content"


def test_tool_call_arguments_must_be_an_object() -> None:
    msg = {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    err = bad_request(wire.decode_chat, {"model": "m", "messages": [msg]})
    assert err.param == "messages[0].tool_calls[0].function.arguments"


def test_keep_alive_rejects_booleans() -> None:
    assert bad_request(wire.decode_chat, {"model": "m", "keep_alive": True}).param == "keep_alive"


@pytest.mark.parametrize("body", [[], "x", None, 3, [{"model": "m"}]])
def test_non_object_body_is_a_bad_request(body: Any) -> None:
    bad_request(wire.decode_chat, body)


def test_chat_accepts_the_ollama_python_client_body() -> None:
    sent = ollama_sdk._types.ChatRequest(
        model="m",
        messages=[{"role": "user", "content": "hi", "images": [b"\x89PNG"]}],
        tools=[
            ollama_sdk.Tool(
                type="function", function=ollama_sdk.Tool.Function(name="f", description="d", parameters=None)
            )
        ],
        options={"num_ctx": 4096},
        keep_alive="5m",
        stream=True,
        think=True,
    ).model_dump(exclude_none=True)
    req = wire.decode_chat(via_json(sent))
    assert req.messages[0].images == ["iVBORw=="]
    assert (req.options, req.keep_alive, req.think, req.tools[0].description) == (
        {"num_ctx": 4096},
        "5m",
        True,
        "d",
    )


def test_generate_without_prompt_is_the_load_request() -> None:
    req = wire.decode_generate({"model": "m", "keep_alive": 0})
    assert (req.prompt, req.keep_alive, req.stream) == ("", 0, True)


def test_generate_decodes_every_field() -> None:
    req = wire.decode_generate(
        {
            "model": "m",
            "prompt": "def f(",
            "suffix": "return x",
            "system": "be brief",
            "images": ["AAAA"],
            "raw": True,
            "format": "json",
            "options": {"num_predict": 5},
            "keep_alive": "1h",
            "think": False,
            "stream": False,
        }
    )
    assert req == CompletionRequest(
        model="m",
        prompt="def f(",
        stream=False,
        suffix="return x",
        system="be brief",
        images=["AAAA"],
        raw=True,
        format="json",
        options={"num_predict": 5},
        keep_alive="1h",
        think=False,
    )


def test_generate_raw_must_be_a_boolean() -> None:
    assert bad_request(wire.decode_generate, {"model": "m", "raw": "yes"}).param == "raw"


def test_embed_input_may_be_a_string_or_a_list() -> None:
    assert wire.decode_embed({"model": "m", "input": "a"}).inputs == ["a"]
    assert wire.decode_embed({"model": "m", "input": ["a", "b"]}).inputs == ["a", "b"]


def test_embed_without_input_is_the_load_request() -> None:
    assert wire.decode_embed({"model": "m"}).inputs == []


def test_embed_defaults_and_fields() -> None:
    req = wire.decode_embed(
        {"model": "m", "input": "a", "dimensions": 256, "truncate": False, "keep_alive": 0}
    )
    assert req == EmbedRequest(model="m", inputs=["a"], truncate=False, dimensions=256, keep_alive=0)
    assert wire.decode_embed({"model": "m", "input": "a"}).truncate is True


def test_embed_rejects_non_string_items() -> None:
    assert bad_request(wire.decode_embed, {"model": "m", "input": ["a", 1]}).param == "input[1]"


def test_legacy_embeddings_prompt_is_the_single_input() -> None:
    assert wire.decode_embeddings({"model": "m", "prompt": "hello"}).inputs == ["hello"]
    assert wire.decode_embeddings({"model": "m"}).inputs == []


# --- request encoding ---------------------------------------------------------------------------------


def test_encode_chat_is_minimal_but_always_says_stream() -> None:
    body = wire.encode_chat(
        ChatRequest(model="m", messages=[Message(role="user", content="hi")], stream=False)
    )
    assert body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def test_encode_keeps_keep_alive_zero_and_think_false() -> None:
    body = wire.encode_generate(CompletionRequest(model="m", prompt="", keep_alive=0, think=False))
    assert body == {"model": "m", "prompt": "", "stream": True, "keep_alive": 0, "think": False}


def test_encode_chat_tool_calls_carry_index_and_id_when_known() -> None:
    msg = Message(role="assistant", tool_calls=[ToolCall("f", {"a": 1}, id="c1", index=0), ToolCall("g", {})])
    body = wire.encode_chat(ChatRequest(model="m", messages=[msg]))
    assert body["messages"][0]["tool_calls"] == [
        {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"a": 1}}},
        {"function": {"index": 0, "name": "g", "arguments": {}}},
    ]


def test_encode_embed_sends_a_list_and_only_non_defaults() -> None:
    assert wire.encode_embed(EmbedRequest(model="m", inputs=["a"])) == {"model": "m", "input": ["a"]}
    body = wire.encode_embed(EmbedRequest(model="m", inputs=["a"], truncate=False, dimensions=8))
    assert body == {"model": "m", "input": ["a"], "truncate": False, "dimensions": 8}


# --- response decoding --------------------------------------------------------------------------------


def test_decode_chat_chunk_content_thinking_and_tool_calls() -> None:
    chunk = wire.decode_chat_chunk(
        {
            "model": "m",
            "created_at": "x",
            "message": {
                "role": "assistant",
                "content": "a",
                "thinking": "t",
                "tool_calls": [{"id": "c", "function": {"index": 0, "name": "f", "arguments": {"q": 1}}}],
            },
            "done": False,
        }
    )
    assert chunk == Chunk(content="a", thinking="t", tool_calls=[ToolCall("f", {"q": 1}, id="c")])


def test_decode_done_chunk_carries_usage_with_missing_fields_zero() -> None:
    chunk = wire.decode_chat_chunk(
        {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "total_duration": 900,
            "prompt_eval_count": 12,
            "eval_count": 7,
        }
    )
    assert (chunk.done, chunk.done_reason) == (True, "stop")
    assert chunk.usage == Usage(prompt_tokens=12, completion_tokens=7, total_duration=900)


def test_decode_not_done_chunk_has_no_usage() -> None:
    assert wire.decode_chat_chunk({"message": {"content": "x"}, "done": False}).usage is None


def test_decode_generate_chunk() -> None:
    chunk = wire.decode_generate_chunk(
        {"response": "r", "thinking": "t", "done": True, "done_reason": "load"}
    )
    assert chunk == Chunk(content="r", thinking="t", done=True, done_reason="load", usage=Usage())


def test_error_line_raises_upstream_error() -> None:
    with pytest.raises(UpstreamError, match="model runner crashed"):
        wire.decode_chat_chunk({"error": "model runner crashed"})


def test_malformed_chunk_raises_upstream_error_not_bad_request() -> None:
    with pytest.raises(UpstreamError, match=r"message\.content"):
        wire.decode_chat_chunk({"message": {"content": 5}})


def test_decode_embed_result() -> None:
    res = wire.decode_embed_result(
        {"model": "x", "embeddings": [[1, 0.5]], "total_duration": 5, "prompt_eval_count": 2}, "alias"
    )
    assert res == EmbedResult(
        model="alias", embeddings=[[1.0, 0.5]], usage=Usage(prompt_tokens=2, total_duration=5)
    )


# --- response encoding --------------------------------------------------------------------------------


def test_encode_chat_chunk_has_ollamas_exact_shape() -> None:
    out = wire.encode_chat_chunk(Chunk(content="Hi"), "m", "2026-01-01T00:00:00.000000Z")
    assert out == {
        "model": "m",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "message": {"role": "assistant", "content": "Hi"},
        "done": False,
    }


def test_encode_final_chat_chunk_omits_zero_timings() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=4, total_duration=10, eval_duration=6)
    out = wire.encode_chat_chunk(Chunk(done=True, done_reason="length", usage=usage), "m", "t")
    assert out == {
        "model": "m",
        "created_at": "t",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "length",
        "total_duration": 10,
        "prompt_eval_count": 3,
        "eval_count": 4,
        "eval_duration": 6,
    }
    assert list(out)[-4:] == ["total_duration", "prompt_eval_count", "eval_count", "eval_duration"]


def test_a_turn_ending_in_tool_calls_is_reported_as_stop() -> None:
    assert (
        wire.encode_chat_chunk(Chunk(done=True, done_reason="tool_calls"), "m", "t")["done_reason"] == "stop"
    )
    assert wire.encode_chat_chunk(Chunk(done=True), "m", "t")["done_reason"] == "stop"


def test_encode_chat_chunk_thinking_and_tool_calls() -> None:
    chunk = Chunk(thinking="t", tool_calls=[ToolCall("f", {"a": 1}, index=0)])
    msg = wire.encode_chat_chunk(chunk, "m", "t")["message"]
    assert msg == {
        "role": "assistant",
        "content": "",
        "thinking": "t",
        "tool_calls": [{"function": {"index": 0, "name": "f", "arguments": {"a": 1}}}],
    }


def test_encode_generate_chunk_shape() -> None:
    assert wire.encode_generate_chunk(Chunk(content="x"), "m", "t") == {
        "model": "m",
        "created_at": "t",
        "response": "x",
        "done": False,
    }
    out = wire.encode_generate_chunk(Chunk(thinking="hm", done=True, done_reason="stop"), "m", "t")
    assert out == {
        "model": "m",
        "created_at": "t",
        "response": "",
        "thinking": "hm",
        "done": True,
        "done_reason": "stop",
    }


def test_encoded_chunks_parse_with_the_ollama_python_client() -> None:
    chunks = [
        Chunk(thinking="t"),
        Chunk(content="a", tool_calls=[ToolCall("f", {"x": [1]}, id="c")]),
        Chunk(done=True, usage=Usage(1, 2, 3, 4, 5, 6)),
    ]
    body = b"".join(
        msgspec.json.encode(wire.encode_chat_chunk(c, "m", wire.now_iso())) + b"\n" for c in chunks
    )
    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=body))
    client = ollama_sdk.Client(host="http://h", transport=transport)
    parts = list(client.chat(model="m", messages=[{"role": "user", "content": "q"}], stream=True))
    assert parts[1].message.tool_calls is not None
    assert parts[1].message.tool_calls[0].function.arguments == {"x": [1]}
    assert (parts[2].done, parts[2].eval_count, parts[2].eval_duration) == (True, 2, 6)


def test_encode_embed_result_omits_zero_counts() -> None:
    res = EmbedResult(model="m", embeddings=[[0.1]], usage=Usage(prompt_tokens=3))
    assert wire.encode_embed_result(res) == {"model": "m", "embeddings": [[0.1]], "prompt_eval_count": 3}


def test_legacy_embeddings_result_is_the_first_vector() -> None:
    assert wire.encode_embeddings_result(EmbedResult(model="m", embeddings=[[1.0], [2.0]])) == {
        "embedding": [1.0]
    }
    assert wire.encode_embeddings_result(EmbedResult(model="m", embeddings=[])) == {"embedding": []}


def test_now_iso_is_rfc3339_utc_with_fraction() -> None:
    stamp = wire.now_iso()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp)
    assert dt.datetime.fromisoformat(stamp).tzinfo == dt.UTC


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
arguments = st.dictionaries(st.text(max_size=6), finite_json, max_size=3)
tool_calls = st.builds(
    ToolCall,
    name=st.text(min_size=1, max_size=8),
    arguments=arguments,
    id=st.sampled_from(["", "call_1", "x9"]),
    index=st.integers(0, 4),
)
images = st.lists(st.sampled_from(["iVBORw0KGgo=", "/9j/4AAQ", "R0lGODlh"]), max_size=2)
messages = st.one_of(
    st.builds(Message, role=st.sampled_from(["system", "user"]), content=text, images=images),
    st.builds(
        Message,
        role=st.just("assistant"),
        content=text,
        tool_calls=st.lists(tool_calls, max_size=2),
        thinking=st.none() | st.text(min_size=1, max_size=8),
    ),
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
        "num_ctx": st.sampled_from([2048, 8192, 32768]),
        "num_predict": st.integers(-2, 4096),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "top_k": st.integers(1, 100),
        "seed": st.integers(0, 2**31),
        "stop": st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=3),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "repeat_penalty": st.floats(0, 2),
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
    keep_alive=st.none() | st.sampled_from(["5m", "1h", 0, -1, 300, 2.5]),
    think=st.sampled_from([None, True, False, "low", "medium", "high"]),
)
usages = st.builds(Usage, *[st.integers(0, 10**12)] * 6)


# Ollama carries everything in ChatRequest except include_usage (an OpenAI notion), and an empty
# Message.thinking comes back as None; the generators produce neither.
@FAST
@given(chat_requests)
def test_chat_request_round_trips(req: ChatRequest) -> None:
    assert wire.decode_chat(via_json(wire.encode_chat(req))) == req


@FAST
@given(
    st.builds(
        CompletionRequest,
        model=st.text(min_size=1, max_size=8),
        prompt=text,
        stream=st.booleans(),
        suffix=st.none() | text,
        system=st.none() | text,
        images=images,
        raw=st.booleans(),
        format=st.none() | st.just("json") | schemas,
        options=options,
        keep_alive=st.none() | st.sampled_from(["5m", 0, -1]),
        think=st.sampled_from([None, True, False, "high"]),
    )
)
def test_generate_request_round_trips(req: CompletionRequest) -> None:
    assert wire.decode_generate(via_json(wire.encode_generate(req))) == req


@FAST
@given(
    st.builds(
        EmbedRequest,
        model=st.text(min_size=1, max_size=8),
        inputs=st.lists(st.text(min_size=1, max_size=8), max_size=3),
        truncate=st.booleans(),
        dimensions=st.none() | st.integers(1, 4096),
        options=options,
        keep_alive=st.none() | st.sampled_from(["5m", 0]),
    )
)
def test_embed_request_round_trips(req: EmbedRequest) -> None:
    assert wire.decode_embed(via_json(wire.encode_embed(req))) == req


@FAST
@given(
    st.builds(
        Chunk,
        content=text,
        thinking=text,
        tool_calls=st.lists(tool_calls, max_size=2),
        done=st.booleans(),
        done_reason=st.sampled_from(["stop", "length", "load"]),
        usage=usages,
    )
)
def test_chat_chunk_round_trips(chunk: Chunk) -> None:
    back = wire.decode_chat_chunk(via_json(wire.encode_chat_chunk(chunk, "m", "t")))
    if not chunk.done:
        chunk.done_reason = chunk.usage = None
    assert back == chunk


@FAST
@given(st.lists(st.builds(Chunk, content=text, thinking=text), max_size=4), usages)
def test_generate_stream_round_trips(chunks: list[Chunk], usage: Usage) -> None:
    chunks.append(Chunk(done=True, done_reason="stop", usage=usage))
    back = [wire.decode_generate_chunk(via_json(wire.encode_generate_chunk(c, "m", "t"))) for c in chunks]
    assert merge_chunks(back) == merge_chunks(chunks)


VALID_CHAT: dict[str, Any] = {
    "model": "m",
    "messages": [
        {"role": "user", "content": "a", "images": ["AAAA"]},
        {
            "role": "assistant",
            "thinking": "t",
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": {}}}],
        },
        {"role": "tool", "content": "r", "tool_name": "f", "tool_call_id": "c"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}],
    "format": "json",
    "options": {"num_ctx": 1},
    "keep_alive": "5m",
    "think": True,
    "stream": True,
}
VALID_GENERATE: dict[str, Any] = {
    "model": "m",
    "prompt": "p",
    "suffix": "s",
    "system": "y",
    "images": ["AAAA"],
    "raw": True,
    "format": {"type": "object"},
    "options": {},
    "keep_alive": 0,
    "think": "low",
    "stream": False,
}
VALID_EMBED: dict[str, Any] = {
    "model": "m",
    "input": ["a"],
    "truncate": True,
    "dimensions": 3,
    "options": {},
    "keep_alive": 1,
}
VALID_CHUNK: dict[str, Any] = {
    "message": {
        "role": "assistant",
        "content": "a",
        "thinking": "t",
        "tool_calls": VALID_CHAT["messages"][1]["tool_calls"],
    },
    "response": "r",
    "done": True,
    "done_reason": "stop",
    "eval_count": 3,
    "embeddings": [[1.0, 2]],
}
CASES = [
    (wire.decode_chat, VALID_CHAT),
    (wire.decode_generate, VALID_GENERATE),
    (wire.decode_embed, VALID_EMBED),
    (wire.decode_embeddings, {"model": "m", "prompt": "p", "options": {}, "keep_alive": "5m"}),
]
RESPONSE_DECODERS = [
    wire.decode_chat_chunk,
    wire.decode_generate_chunk,
    lambda obj: wire.decode_embed_result(obj, "m"),
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


WRONG_VALUES = [_DELETE, None, True, 0, -1, 1.5, "", "s", [], {}, [1], ["s"], [{}], {"a": 1}]


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


@pytest.mark.parametrize("decode", RESPONSE_DECODERS)
def test_response_decoders_raise_only_upstream_error_for_any_field_of_any_type(decode: Any) -> None:
    for path in paths(VALID_CHUNK):
        for value in WRONG_VALUES:
            with contextlib.suppress(UpstreamError):
                assert_well_typed(decode(replaced(VALID_CHUNK, path, value)))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(RESPONSE_DECODERS), json_values | mutations(VALID_CHUNK))
def test_response_decoders_raise_only_upstream_error_on_arbitrary_json(decode: Any, obj: Any) -> None:
    with contextlib.suppress(UpstreamError):
        assert_well_typed(decode(obj))
