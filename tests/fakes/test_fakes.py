"""Sanity tests: the official clients work directly against the fakes, and the scripted failures behave."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest

from . import FakeOllama, FakeOpenAI, FakeServer, fake_embedding, host_allowed, parse_keep_alive, split_words

TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the web",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    with FakeOllama(
        models=["llama3.1:8b", "qwen2.5-coder:14b", "nomic-embed-text"], loaded=["llama3.1:8b"]
    ) as fake:
        yield fake


@pytest.fixture
def oclient(fake_ollama: FakeOllama) -> Iterator[ollama.Client]:
    with ollama.Client(host=fake_ollama.url) as client:
        yield client


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(models=["gpt-4o-mini", "text-embedding-3-small"], api_key="sk-test") as fake:
        yield fake


@pytest.fixture
def aclient(fake_openai: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake_openai.url + "/v1", api_key="sk-test", max_retries=0) as client:
        yield client


def raw_request(url: str, method: str, path: str, host: str, body: bytes | None = None) -> tuple[int, bytes]:
    port = int(url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.putrequest(method, path, skip_host=True)
        conn.putheader("Host", host)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


# ----------------------------------------------------------------------------------------- lifecycle
def test_start_is_fast_and_ports_differ() -> None:
    t0 = time.perf_counter()
    fakes: list[FakeServer] = [FakeOllama(models=["m:1b"]).start() for _ in range(10)]
    fakes += [FakeOpenAI(models=["m"]).start() for _ in range(10)]
    elapsed = time.perf_counter() - t0
    try:
        assert len({f.port for f in fakes}) == 20
        assert elapsed < 1.0
    finally:
        for f in fakes:
            f.stop()
    assert not fakes[0].running


# ----------------------------------------------------------------------------------------- ollama
def test_ollama_informational(fake_ollama: FakeOllama, oclient: ollama.Client) -> None:
    r = httpx.get(fake_ollama.url + "/")
    assert (r.status_code, r.text) == (200, "Ollama is running")
    assert r.headers["content-type"].startswith("text/plain")
    assert httpx.head(fake_ollama.url + "/").status_code == 200
    assert httpx.get(fake_ollama.url + "/api/version").json() == {"version": "0.33.0"}
    assert httpx.head(fake_ollama.url + "/api/version").status_code == 200

    tags = oclient.list()
    assert [m.model for m in tags.models] == ["llama3.1:8b", "qwen2.5-coder:14b", "nomic-embed-text:latest"]
    raw = httpx.get(fake_ollama.url + "/api/tags").json()["models"][0]
    assert raw["name"] == raw["model"] == "llama3.1:8b"
    assert raw["size"] == 4_900_000_000
    assert len(raw["digest"]) == 64
    assert raw["details"]["format"] == "gguf"
    assert raw["details"]["parameter_size"] == "8.0B"

    ps = oclient.ps()
    assert [m.model for m in ps.models] == ["llama3.1:8b"]
    assert ps.models[0].expires_at is not None
    assert ps.models[0].expires_at.tzinfo is not None
    assert ps.models[0].context_length == 4096

    show = oclient.show("nomic-embed-text")
    assert show.capabilities == ["completion", "tools", "embedding"]
    assert show.modelinfo is not None
    assert show.modelinfo["general.architecture"] == "nomic-bert"
    with pytest.raises(ollama.ResponseError) as exc:
        oclient.show("nope")
    assert exc.value.status_code == 404
    assert exc.value.error == "model 'nope' not found"


def test_ollama_chat(fake_ollama: FakeOllama, oclient: ollama.Client) -> None:
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello  big world"}]
    resp = oclient.chat(model="llama3.1:8b", messages=msgs, stream=False)
    assert resp.message.content == "echo: hello  big world"
    assert resp.done_reason == "stop"
    assert resp.eval_count == 4
    assert resp.prompt_eval_count == 5

    chunks = list(oclient.chat(model="qwen2.5-coder:14b", messages=msgs, stream=True))
    assert [c.message.content for c in chunks[:-1]] == ["echo:", " hello", "  big", " world"]
    assert chunks[-1].done
    assert chunks[-1].eval_count == 4
    assert chunks[-1].load_duration
    assert not any(c.done for c in chunks[:-1])
    assert "qwen2.5-coder:14b" in fake_ollama.loaded  # serving loads

    rec = fake_ollama.requests_to("/api/chat")[-1]
    assert rec.json is not None
    assert rec.json["stream"] is True
    assert rec.headers["content-type"] == "application/json"

    # every line is a separate JSON object and separate chunk
    with httpx.stream(
        "POST", fake_ollama.url + "/api/chat", json={"model": "llama3.1:8b", "messages": msgs}
    ) as r:
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines()]
    assert "".join(x["message"]["content"] for x in lines) == "echo: hello  big world"
    assert lines[-1]["done_reason"] == "stop"
    assert "total_duration" in lines[-1]

    tool_chunks = list(oclient.chat(model="llama3.1:8b", messages=msgs, tools=TOOLS, stream=True))
    calls = tool_chunks[0].message.tool_calls
    assert calls
    assert calls[0].function.name == "search"
    assert calls[0].function.arguments == {"query": "hello  big world"}
    assert tool_chunks[-1].done
    assert tool_chunks[-1].eval_count == 1

    followup: Any = [
        *msgs,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "search", "arguments": {"query": "x"}}}],
        },
        {"role": "tool", "content": "42"},
    ]
    assert (
        oclient.chat(model="llama3.1:8b", messages=followup, tools=TOOLS).message.content == "tool said: 42"
    )

    fmt = oclient.chat(model="llama3.1:8b", messages=msgs, format={"type": "object"})
    assert json.loads(fmt.message.content or "") == {"echo": "hello  big world"}
    assert fmt.eval_count == 3

    with pytest.raises(ollama.ResponseError) as exc:
        oclient.chat(model="missing:1b", messages=msgs)
    assert exc.value.status_code == 404


def test_ollama_generate_load_unload(fake_ollama: FakeOllama, oclient: ollama.Client) -> None:
    resp = oclient.generate(model="qwen2.5-coder:14b", prompt="write code", stream=False)
    assert resp.response == "echo: write code"
    assert resp.context == [1, 2, 3]
    parts = list(oclient.generate(model="llama3.1:8b", prompt="a b", stream=True, format="json"))
    assert "".join(p.response or "" for p in parts) == '{"echo": "a b"}'
    assert len(parts) == 4
    assert parts[-1].context == [1, 2, 3]

    assert oclient.generate(model="nomic-embed-text", prompt="").done_reason == "load"
    assert "nomic-embed-text:latest" in fake_ollama.loaded
    assert oclient.generate(model="nomic-embed-text", prompt="", keep_alive=0).done_reason == "unload"
    assert "nomic-embed-text:latest" not in fake_ollama.loaded
    assert oclient.chat(model="llama3.1:8b", messages=[], keep_alive="0s").done_reason == "unload"
    assert fake_ollama.loaded == ["qwen2.5-coder:14b"]
    oclient.chat(model="llama3.1:8b", messages=[], keep_alive=-1)
    assert fake_ollama.loaded[0] == "llama3.1:8b"  # longest expiry first


def test_ollama_embed(oclient: ollama.Client) -> None:
    resp = oclient.embed(model="nomic-embed-text", input=["alpha", "beta gamma"])
    assert resp.embeddings == [fake_embedding("alpha"), fake_embedding("beta gamma")]
    assert resp.prompt_eval_count == 3
    assert resp.load_duration
    assert all(-1 <= x <= 1 for x in resp.embeddings[0])
    assert len(resp.embeddings[0]) == 8
    assert oclient.embed(model="nomic-embed-text", input="alpha").embeddings == [fake_embedding("alpha")]
    assert oclient.embeddings(model="nomic-embed-text", prompt="alpha").embedding == fake_embedding("alpha")


def test_ollama_model_management(fake_ollama: FakeOllama, oclient: ollama.Client) -> None:
    progress = list(oclient.pull("mistral:7b", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    assert statuses[-3:-1] == ["verifying sha256 digest", "writing manifest"]
    layer = [p for p in progress if p.digest]
    assert layer
    assert layer[-1].completed == layer[-1].total
    assert "mistral:7b" in fake_ollama.models
    assert oclient.pull("phi3", stream=False).status == "success"
    assert "phi3:latest" in fake_ollama.models

    assert oclient.copy("mistral:7b", "mine:v1").status == "success"
    assert "mine:v1" in fake_ollama.models
    assert [p.status for p in oclient.push("mine:v1", stream=True)][-1] == "success"
    assert oclient.delete("mine:v1").status == "success"
    assert "mine:v1" not in fake_ollama.models
    for call in (
        lambda: oclient.delete("mine:v1"),
        lambda: oclient.copy("nope", "x"),
        lambda: list(oclient.push("nope", stream=True)),
    ):
        with pytest.raises(ollama.ResponseError) as exc:
            call()
        assert exc.value.status_code == 404

    r = httpx.request("DELETE", fake_ollama.url + "/api/delete", json={"model": "phi3"})
    assert r.status_code == 200
    assert r.content == b""


def test_ollama_pull_unknown_errors_in_band() -> None:
    with FakeOllama(models=[], pullable=["llama3.2"]) as fake, ollama.Client(host=fake.url) as client:
        with pytest.raises(ollama.ResponseError, match="file does not exist"):
            list(client.pull("nope", stream=True))
        assert client.pull("llama3.2", stream=False).status == "success"
        assert fake.models == ["llama3.2:latest"]


def test_ollama_blobs_and_create(fake_ollama: FakeOllama, oclient: ollama.Client, tmp_path: Any) -> None:
    data = b"GGUF fake weights"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    url = fake_ollama.url + "/api/blobs/" + digest
    assert httpx.head(url).status_code == 404
    with pytest.raises(ollama.ResponseError) as exc:
        oclient.create("mine", files={"model.gguf": digest})
    assert exc.value.status_code == 400

    bad = httpx.post(url, content=b"other bytes")
    assert bad.status_code == 400
    assert "digest mismatch" in bad.json()["error"]
    path = tmp_path / "w.gguf"
    path.write_bytes(data)
    assert oclient.create_blob(path) == digest
    assert httpx.head(url).status_code == 200
    assert digest in fake_ollama.blobs

    statuses = [p.status for p in oclient.create("mine", files={"model.gguf": digest}, stream=True)]
    assert statuses[-1] == "success"
    assert f"using existing layer {digest}" in statuses
    assert oclient.create("derived", from_="llama3.1:8b", stream=False).status == "success"
    assert {"mine:latest", "derived:latest"} <= set(fake_ollama.models)


def test_ollama_host_check(fake_ollama: FakeOllama) -> None:
    status, _body = raw_request(fake_ollama.url, "GET", "/api/tags", "evil.example.com")
    assert status == 403
    assert raw_request(fake_ollama.url, "GET", "/", "evil.example.com:11434")[0] == 403
    assert raw_request(fake_ollama.url, "POST", "/api/chat", "evil.example.com", b"{}")[0] == 403
    for host in (
        "localhost",
        "localhost:11434",
        "127.0.0.1:1",
        "[::1]",
        "[::1]:80",
        "10.0.0.5:11434",
        "box.local",
        "ollama.internal:11434",
        "a.localhost",
    ):
        assert raw_request(fake_ollama.url, "GET", "/", host)[0] == 200, host
    assert not host_allowed("8.8.8.8")
    assert not host_allowed("example.com")
    assert len(fake_ollama.requests) == 12  # rejected requests are recorded too
    with FakeOllama(models=[], host_check=False) as open_fake:
        assert raw_request(open_fake.url, "GET", "/api/tags", "evil.example.com")[0] == 200


def test_ollama_bad_requests(fake_ollama: FakeOllama) -> None:
    r = httpx.post(fake_ollama.url + "/api/chat", content=b"{not json")
    assert r.status_code == 400
    assert "error" in r.json()
    r = httpx.post(fake_ollama.url + "/api/generate", json={"prompt": "x"})
    assert r.status_code == 400
    assert r.json() == {"error": "model is required"}
    r = httpx.post(fake_ollama.url + "/api/embed", json={"model": "zzz", "input": "x"})
    assert r.status_code == 404
    assert r.json() == {"error": "model 'zzz' not found"}


def test_keep_alive_parsing() -> None:
    assert parse_keep_alive("5m") == 300
    assert parse_keep_alive("1h30m") == 5400
    assert parse_keep_alive(0) == 0
    assert parse_keep_alive("0") == 0
    assert parse_keep_alive("-1m") == -60
    assert parse_keep_alive(None) is None
    assert parse_keep_alive("soon") is None
    assert "".join(split_words("  a  b ")) == "  a  b "


# ----------------------------------------------------------------------------------------- openai
def test_openai_models_and_auth(fake_openai: FakeOpenAI, aclient: openai.OpenAI) -> None:
    assert [m.id for m in aclient.models.list()] == ["gpt-4o-mini", "text-embedding-3-small"]
    assert aclient.models.retrieve("gpt-4o-mini").owned_by == "fake"
    with (
        openai.OpenAI(base_url=fake_openai.url + "/v1", api_key="wrong", max_retries=0) as bad,
        pytest.raises(openai.AuthenticationError) as exc,
    ):
        bad.models.list()
    assert isinstance(exc.value.body, dict)
    assert exc.value.body["code"] == "invalid_api_key"
    assert exc.value.body["type"] == "invalid_request_error"
    assert exc.value.body["param"] is None
    assert fake_openai.requests[-1].headers["authorization"] == "Bearer wrong"
    with pytest.raises(openai.NotFoundError) as nf:
        aclient.chat.completions.create(model="gpt-5", messages=[{"role": "user", "content": "x"}])
    assert isinstance(nf.value.body, dict)
    assert (nf.value.body["type"], nf.value.body["code"]) == ("not_found_error", "model_not_found")


def test_openai_chat(aclient: openai.OpenAI) -> None:
    msgs: Any = [{"role": "user", "content": "hi there"}]
    resp = aclient.chat.completions.create(model="gpt-4o-mini", messages=msgs)
    assert resp.choices[0].message.content == "echo: hi there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (2, 3)

    chunks = list(aclient.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: hi there"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)

    stream = aclient.chat.completions.create(
        model="gpt-4o-mini", messages=msgs, tools=TOOLS, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (
        chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    )
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    first = deltas[0]
    assert first.id
    assert first.type == "function"
    assert first.function is not None
    assert first.function.name == "search"
    assert first.function.arguments == ""
    arg_pieces = [d.function.arguments for d in deltas[1:] if d.function]
    assert len(arg_pieces) >= 2
    assert json.loads("".join(a or "" for a in arg_pieces)) == {"query": "hi there"}

    tool_result: Any = [
        *msgs,
        {
            "role": "assistant",
            "tool_calls": [
                {"id": first.id, "type": "function", "function": {"name": "search", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": first.id, "content": "sunny"},
    ]
    again = aclient.chat.completions.create(model="gpt-4o-mini", messages=tool_result, tools=TOOLS)
    assert again.choices[0].message.content == "tool said: sunny"

    js = aclient.chat.completions.create(
        model="gpt-4o-mini", messages=msgs, response_format={"type": "json_object"}
    )
    assert json.loads(js.choices[0].message.content or "") == {"echo": "hi there"}


def test_openai_completions_and_embeddings(fake_openai: FakeOpenAI, aclient: openai.OpenAI) -> None:
    comp = aclient.completions.create(model="gpt-4o-mini", prompt="say this")
    assert comp.choices[0].text == "echo: say this"
    assert comp.object == "text_completion"
    parts = list(aclient.completions.create(model="gpt-4o-mini", prompt="a b c", stream=True, max_tokens=2))
    assert "".join(p.choices[0].text for p in parts) == "echo: a"
    assert parts[-1].choices[0].finish_reason == "length"

    emb = aclient.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
    assert fake_openai.requests[-1].json["encoding_format"] == "base64"  # type: ignore[index]
    assert [d.embedding for d in emb.data] == [fake_embedding("one"), fake_embedding("two")]
    raw = httpx.post(
        fake_openai.url + "/v1/embeddings",
        headers={"Authorization": "Bearer sk-test"},
        json={"model": "text-embedding-3-small", "input": "one", "encoding_format": "base64"},
    )
    vec = struct.unpack("<8f", base64.b64decode(raw.json()["data"][0]["embedding"]))
    assert list(vec) == fake_embedding("one")
    floats = aclient.embeddings.create(model="text-embedding-3-small", input="one", encoding_format="float")
    assert floats.data[0].embedding == fake_embedding("one")


def test_ollama_serves_openai_compat(fake_ollama: FakeOllama) -> None:
    with openai.OpenAI(base_url=fake_ollama.url + "/v1", api_key="ollama", max_retries=0) as client:
        assert "llama3.1:8b" in [m.id for m in client.models.list()]
        resp = client.chat.completions.create(
            model="llama3.1:8b", messages=[{"role": "user", "content": "x"}]
        )
        assert resp.choices[0].message.content == "echo: x"


# ----------------------------------------------------------------------------------------- failures
def test_fail_next(
    fake_ollama: FakeOllama, oclient: ollama.Client, fake_openai: FakeOpenAI, aclient: openai.OpenAI
) -> None:
    msgs = [{"role": "user", "content": "x"}]
    fake_ollama.fail_next(503, times=2)
    for _ in range(2):
        with pytest.raises(ollama.ResponseError) as exc:
            list(oclient.chat(model="llama3.1:8b", messages=msgs, stream=True))
        assert exc.value.status_code == 503
        assert exc.value.error.startswith("server busy")
    assert oclient.chat(model="llama3.1:8b", messages=msgs).message.content == "echo: x"
    fake_ollama.fail_next(500, "boom")
    r = httpx.post(fake_ollama.url + "/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    assert (r.status_code, r.json()) == (500, {"error": "boom"})
    assert oclient.list().models  # non-generation endpoints never consume the script

    fake_openai.fail_next(429, retry_after=3)
    with pytest.raises(openai.RateLimitError) as rl:
        aclient.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True)  # type: ignore[arg-type]
    assert rl.value.response.headers["retry-after"] == "3"
    assert isinstance(rl.value.body, dict)
    assert set(rl.value.body) == {"message", "type", "param", "code"}
    fake_openai.fail_next(400, "bad thing")
    with pytest.raises(openai.BadRequestError, match="bad thing"):
        aclient.embeddings.create(model="gpt-4o-mini", input="x")
    assert fake_openai.script_pending == 0


def test_drop_next(fake_ollama: FakeOllama, fake_openai: FakeOpenAI, aclient: openai.OpenAI) -> None:
    fake_ollama.drop_next()
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "x"}]}
    with httpx.Client() as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post(fake_ollama.url + "/api/chat", json=body)
        assert client.post(fake_ollama.url + "/api/chat", json=body).status_code == 200
    fake_openai.drop_next()
    with pytest.raises(openai.APIConnectionError):
        aclient.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert fake_ollama.cancelled == 0
    assert fake_openai.cancelled == 0


def test_die_mid_stream(
    fake_ollama: FakeOllama, oclient: ollama.Client, fake_openai: FakeOpenAI, aclient: openai.OpenAI
) -> None:
    msgs = [{"role": "user", "content": "one two three four five"}]
    fake_ollama.die_mid_stream_next(after_chunks=2)
    got: list[Any] = []
    with pytest.raises(httpx.RemoteProtocolError):
        got.extend(oclient.chat(model="llama3.1:8b", messages=msgs, stream=True))
    assert [c.message.content for c in got] == ["echo:", " one"]
    assert not any(c.done for c in got)

    fake_ollama.die_mid_stream_next(after_chunks=50)  # capped: everything but the final chunk
    got = []
    with pytest.raises(httpx.RemoteProtocolError):
        got.extend(oclient.chat(model="llama3.1:8b", messages=msgs, stream=True))
    assert len(got) == 6
    assert not got[-1].done

    fake_ollama.die_mid_stream_next()  # non-streamed: headers and half a body
    with pytest.raises(httpx.RemoteProtocolError):
        oclient.chat(model="llama3.1:8b", messages=msgs, stream=False)

    fake_openai.die_mid_stream_next(after_chunks=3)
    events: list[Any] = []
    stream = aclient.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIConnectionError):
        events.extend(stream)
    assert len(events) == 3
    assert all(e.choices[0].finish_reason is None for e in events)
    assert fake_ollama.cancelled == 0
    assert fake_ollama.in_flight == 0


def test_error_mid_stream(
    fake_ollama: FakeOllama, oclient: ollama.Client, fake_openai: FakeOpenAI, aclient: openai.OpenAI
) -> None:
    fake_ollama.error_mid_stream_next(after_chunks=1, message="runner crashed")
    got: list[Any] = []
    with pytest.raises(ollama.ResponseError, match="runner crashed"):
        got.extend(oclient.generate(model="llama3.1:8b", prompt="a b c", stream=True))
    fake_openai.error_mid_stream_next(after_chunks=2, message="oops")
    with pytest.raises(openai.APIError, match="oops"):
        list(
            aclient.chat.completions.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "x y"}]
            )
        )


def test_client_disconnect_is_observed(fake_ollama: FakeOllama) -> None:
    fake_ollama.chunk_delay = 0.05
    body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "a b c d e f g h"}]}
    with httpx.Client() as client, client.stream("POST", fake_ollama.url + "/api/chat", json=body) as r:
        first = next(r.iter_lines())
        assert json.loads(first)["done"] is False
    assert fake_ollama.wait_cancelled(timeout=2)
    assert fake_ollama.wait_in_flight(0, timeout=2)
    assert fake_ollama.cancelled == 1


def test_disconnect_before_first_byte_is_observed(fake_openai: FakeOpenAI) -> None:
    fake_openai.delay_first_byte = 0.5
    with (
        openai.OpenAI(
            base_url=fake_openai.url + "/v1", api_key="sk-test", max_retries=0, timeout=0.05
        ) as client,
        pytest.raises(openai.APITimeoutError),
    ):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert fake_openai.wait_cancelled(timeout=2)


def test_hold_and_in_flight(fake_ollama: FakeOllama) -> None:
    fake_ollama.hold()
    body = {"model": "llama3.1:8b", "prompt": "x", "stream": False}
    results: list[int] = []

    def call() -> None:
        results.append(httpx.post(fake_ollama.url + "/api/generate", json=body, timeout=5).status_code)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    assert fake_ollama.wait_in_flight(3, timeout=2)
    assert fake_ollama.max_in_flight_seen == 3
    assert results == []
    fake_ollama.release()
    for t in threads:
        t.join(5)
    assert results == [200, 200, 200]
    assert fake_ollama.in_flight == 0


def test_stop_kills_streams_and_restart_keeps_port_and_state() -> None:
    fake = FakeOllama(models=["m:1b"]).start()
    try:
        fake.chunk_delay = 0.02
        body = {"model": "m:1b", "messages": [{"role": "user", "content": "a b c d e f"}]}
        with httpx.Client() as client, client.stream("POST", fake.url + "/api/chat", json=body) as r:
            lines = r.iter_lines()
            next(lines)
            port = fake.port
            fake.stop()  # like a killed backend: the open stream breaks at once
            with pytest.raises(httpx.RemoteProtocolError):
                list(lines)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/")
        fake.add_model("n:2b")
        fake.restart()
        assert fake.port == port
        assert fake.cancelled == 0
        tags = httpx.get(fake.url + "/api/tags").json()["models"]
        assert [m["name"] for m in tags] == ["m:1b", "n:2b"]
        fake.fail_next(500)
        fake.reset()  # forgets requests, script, counters and delays (not models)
        assert fake.requests == []
        assert fake.script_pending == 0
        assert fake.chunk_delay == 0
    finally:
        fake.stop()
