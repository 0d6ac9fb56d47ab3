"""Bad input gets a clear error in the client's own dialect, and nothing crashes; what Hearth
sends upstream carries the right Host and never the client's credentials."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI

MODEL = "llama3.1:8b"
MSG = [{"role": "user", "content": "hi"}]
LIMIT = 4096


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[LiveHearth, FakeOllama, FakeOpenAI]]:
    with (
        FakeOllama(models=[MODEL], host_check=True) as o,
        FakeOpenAI(models=["gpt-4o-mini"], api_key="sk-up") as c,
    ):
        s = make_settings(
            [
                {"name": "o", "kind": "ollama", "url": o.url},
                {"name": "c", "kind": "openai", "url": c.url + "/v1", "api_key": "sk-up"},
            ],
            server={"max_body_bytes": LIMIT},
        )
        with LiveHearth(s) as hearth:
            yield hearth, o, c


@pytest.fixture
def http(env: tuple[LiveHearth, FakeOllama, FakeOpenAI]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=env[0].url) as client:
        yield client


OLLAMA_CALLS = ["/api/chat", "/api/generate", "/api/embed", "/api/embeddings"]
OPENAI_CALLS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]


@pytest.mark.parametrize("path", OLLAMA_CALLS)
def test_malformed_json_is_a_400_in_ollama_shape(http: httpx.Client, path: str) -> None:
    r = http.post(path, content=b'{"model": "x", ', headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert set(r.json()) == {"error"}
    assert "invalid JSON" in r.json()["error"]


@pytest.mark.parametrize("path", OPENAI_CALLS)
def test_malformed_json_is_a_400_in_openai_shape(http: httpx.Client, path: str) -> None:
    r = http.post(path, content=b"[1, 2", headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert "invalid JSON" in err["message"]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_a_json_value_that_is_not_an_object_is_a_400(http: httpx.Client, path: str) -> None:
    r = http.post(path, json=["model", MODEL])
    assert r.status_code == 400


def test_missing_model_is_named(http: httpx.Client) -> None:
    r = http.post("/api/chat", json={"messages": MSG})
    assert r.status_code == 400
    assert "model" in r.json()["error"]


def test_wrong_type_is_named_with_its_field_for_ollama(http: httpx.Client) -> None:
    r = http.post("/api/chat", json={"model": MODEL, "messages": "hello"})
    assert r.status_code == 400
    assert "messages" in r.json()["error"]


def test_wrong_type_is_named_with_its_field_for_openai(
    env: tuple[LiveHearth, FakeOllama, FakeOpenAI],
) -> None:
    with openai.OpenAI(base_url=env[0].url + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": 42}])  # type: ignore[list-item]
    assert "messages[0].content" in str(err.value)


def test_unknown_model_is_a_404_naming_it_for_ollama(
    oc: Any, env: tuple[LiveHearth, FakeOllama, FakeOpenAI]
) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oc(env[0].url).chat(model="nope:1b", messages=MSG, stream=False)
    assert err.value.status_code == 404
    assert "nope:1b" in err.value.error


def test_unknown_model_is_a_404_naming_it_for_openai(env: tuple[LiveHearth, FakeOllama, FakeOpenAI]) -> None:
    with openai.OpenAI(base_url=env[0].url + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.NotFoundError) as err:
            client.chat.completions.create(model="nope:1b", messages=MSG)  # type: ignore[arg-type]
    assert isinstance(err.value.body, dict)
    assert err.value.body["type"] == "not_found_error"
    assert "nope:1b" in err.value.body["message"]


@pytest.mark.parametrize(("path", "dialect"), [("/api/chat", "ollama"), ("/v1/chat/completions", "openai")])
def test_a_body_over_the_limit_is_a_413(http: httpx.Client, path: str, dialect: str) -> None:
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * (LIMIT * 2)}]}
    r = http.post(path, json=big)
    assert r.status_code == 413
    body = r.json()
    message = body["error"] if dialect == "ollama" else body["error"]["message"]
    assert str(LIMIT) in message


def test_a_chunked_body_over_the_limit_is_a_413(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "llama3.1:8b", "prompt": "'
        for _ in range(10):
            yield b"y" * 1024
        yield b'"}'

    r = http.post("/api/generate", content=chunks())
    assert r.status_code == 413


def test_a_backend_client_error_is_relayed_with_its_status_and_message(
    oc: Any, env: tuple[LiveHearth, FakeOllama, FakeOpenAI]
) -> None:
    hearth, o, _ = env
    o.fail_next(400, "option num_ctx must be positive")
    with pytest.raises(ollama.ResponseError) as err:
        oc(hearth.url).generate(model=MODEL, prompt="hi", stream=False)
    assert err.value.status_code == 400
    assert "num_ctx must be positive" in err.value.error


def test_host_header_is_rewritten_for_the_backend(
    http: httpx.Client, env: tuple[LiveHearth, FakeOllama, FakeOpenAI]
) -> None:
    _, o, _ = env
    before = len(o.requests_to("/api/chat"))
    # The fake answers 403 to a foreign Host, as Ollama does when bound to loopback.
    r = http.post(
        "/api/chat",
        json={"model": MODEL, "messages": MSG, "stream": False},
        headers={"Host": "hearth.example.com"},
    )
    assert r.status_code == 200
    sent = o.requests_to("/api/chat")[before]
    assert sent.headers["host"] == o.url.removeprefix("http://")


def test_client_credentials_never_reach_the_backend(
    http: httpx.Client, env: tuple[LiveHearth, FakeOllama, FakeOpenAI]
) -> None:
    _, o, c = env
    secret = "sk-some-other-service-key"
    http.post(
        "/api/chat",
        json={"model": MODEL, "messages": MSG, "stream": False},
        headers={"Authorization": f"Bearer {secret}"},
    ).raise_for_status()
    http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MSG},
        headers={"Authorization": f"Bearer {secret}"},
    ).raise_for_status()
    assert "authorization" not in o.requests[-1].headers
    assert c.requests[-1].headers["authorization"] == "Bearer sk-up"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
    max_leaves=8,
)
chat_like = st.fixed_dictionaries(
    {"model": st.sampled_from([MODEL, "gpt-4o-mini", "nope"]) | json_values},
    optional={
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "tool", "x"]) | json_values},
                optional={"content": json_values, "images": json_values, "tool_calls": json_values},
            ),
            max_size=2,
        )
        | json_values,
        "stream": st.booleans() | json_values,
        "options": json_values,
        "format": json_values,
        "tools": json_values,
    },
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=chat_like,
    path=st.sampled_from(["/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"]),
)
def test_arbitrary_bodies_never_cause_a_server_error(
    http: httpx.Client, body: dict[str, Any], path: str
) -> None:
    r = http.post(path, json=body)
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        assert r.json()["error"]
