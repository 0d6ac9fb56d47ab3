"""Routing and failover through a live Hearth: which backend gets a request, what happens when
one refuses, and the circuit breaker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI

MODEL = "llama3.1:8b"
MSG = [{"role": "user", "content": "hello there"}]


def chats(fake: FakeOllama | FakeOpenAI) -> int:
    return len(fake.requests_to("/api/chat")) + len(fake.requests_to("/v1/chat/completions"))


@pytest.fixture
def two() -> Iterator[tuple[FakeOllama, FakeOllama]]:
    with FakeOllama(models=[MODEL]) as a, FakeOllama(models=[MODEL]) as b:
        yield a, b


def backends(*fakes: FakeOllama) -> list[dict[str, Any]]:
    return [{"name": f"o{i}", "kind": "ollama", "url": f.url} for i, f in enumerate(fakes)]


def admin(hearth: LiveHearth) -> dict[str, Any]:
    return {b["name"]: b for b in httpx.get(hearth.url + "/admin/backends").json()["backends"]}


def test_prefers_the_backend_that_has_the_model_loaded(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as a, FakeOllama(models=[MODEL], loaded=[MODEL]) as b:
        hearth = live(make_settings(backends(a, b)))
        oc(hearth.url).chat(model=MODEL, messages=MSG, stream=False)
        assert (chats(a), chats(b)) == (0, 1)


def test_prefers_the_backend_with_fewest_requests_in_flight(
    live: Any, oc: Any, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    hearth = live(make_settings(backends(a, b)))
    a.hold()
    first = threading.Thread(target=lambda: oc(hearth.url).chat(model=MODEL, messages=MSG, stream=False))
    first.start()
    assert a.wait_in_flight(1)
    oc(hearth.url).chat(model=MODEL, messages=MSG, stream=False)
    assert chats(b) == 1
    a.release()
    first.join(10)
    assert chats(a) == 1


@pytest.mark.parametrize("status", [503, 429])
def test_retries_another_backend_on_busy_status(
    live: Any, oc: Any, two: tuple[FakeOllama, FakeOllama], status: int
) -> None:
    a, b = two
    hearth = live(make_settings(backends(a, b)))
    a.fail_next(status)
    reply = oc(hearth.url).chat(model=MODEL, messages=MSG, stream=False)
    assert reply.message.content == "echo: hello there"
    assert (chats(a), chats(b)) == (1, 1)


def test_retries_another_backend_when_the_connection_drops(
    live: Any, oc: Any, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    hearth = live(make_settings(backends(a, b)))
    a.drop_next()
    parts = list(oc(hearth.url).chat(model=MODEL, messages=MSG, stream=True))
    assert "".join(p.message.content for p in parts) == "echo: hello there"
    assert (chats(a), chats(b)) == (1, 1)


def test_does_not_retry_a_client_error(live: Any, oc: Any, two: tuple[FakeOllama, FakeOllama]) -> None:
    a, b = two
    hearth = live(make_settings(backends(a, b)))
    a.fail_next(400, "invalid options")
    with pytest.raises(ollama.ResponseError) as err:
        oc(hearth.url).chat(model=MODEL, messages=MSG, stream=False)
    assert err.value.status_code == 400
    assert "invalid options" in err.value.error
    assert chats(b) == 0


def test_falls_back_to_the_next_model_of_an_alias(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as a, FakeOllama(models=["llama3.2:3b"]) as b:
        settings = make_settings(
            backends(a, b), aliases={"healthrag": {"model": MODEL, "fallbacks": ["llama3.2:3b"]}}
        )
        hearth = live(settings)
        a.fail_next(503)
        oc(hearth.url).chat(model="healthrag", messages=MSG, stream=False)
        assert b.requests_to("/api/chat")[0].json["model"] == "llama3.2:3b"


def test_falls_back_to_a_cloud_backend_through_translation(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as local, FakeOpenAI(models=["gpt-4o-mini"], api_key="sk-test") as cloud:
        settings = make_settings(
            [
                {"name": "local", "kind": "ollama", "url": local.url},
                {
                    "name": "cloud",
                    "kind": "openai",
                    "url": cloud.url + "/v1",
                    "api_key": "sk-test",
                    "cloud": True,
                },
            ],
            aliases={"assistant": {"model": MODEL, "fallbacks": ["gpt-4o-mini"]}},
        )
        hearth = live(settings)
        local.drop_next()
        parts = list(oc(hearth.url).chat(model="assistant", messages=MSG, stream=True))
        assert "".join(p.message.content for p in parts) == "echo: hello there"
        assert parts[-1].done
        sent = cloud.requests_to("/v1/chat/completions")[0]
        assert sent.headers["authorization"] == "Bearer sk-test"
        assert sent.json["model"] == "gpt-4o-mini"


def test_local_backend_is_preferred_over_cloud_for_the_same_model(live: Any) -> None:
    with FakeOpenAI(models=["qwen"]) as cloud, FakeOpenAI(models=["qwen"]) as local:
        settings = make_settings(
            [
                {"name": "cloud", "kind": "openai", "url": cloud.url + "/v1", "cloud": True},
                {"name": "local", "kind": "openai", "url": local.url + "/v1"},
            ]
        )
        hearth = live(settings)
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x") as client:
            client.chat.completions.create(model="qwen", messages=MSG)  # type: ignore[arg-type]
        assert (chats(cloud), chats(local)) == (0, 1)


def test_answers_503_in_each_dialect_when_every_backend_refuses(
    live: Any, oc: Any, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    hearth = live(make_settings(backends(a, b)))
    a.fail_next(503, times=2)
    b.fail_next(503, times=2)
    with pytest.raises(ollama.ResponseError) as err:
        oc(hearth.url).chat(model=MODEL, messages=MSG, stream=True).__next__()
    assert err.value.status_code == 503
    with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as oerr:
            client.chat.completions.create(model=MODEL, messages=MSG)  # type: ignore[arg-type]
    assert oerr.value.status_code == 503
    assert isinstance(oerr.value.body, dict)
    assert oerr.value.body["type"] == "api_error"


def test_a_model_pulled_behind_hearths_back_is_found_without_waiting_for_discovery(
    live: Any, oc: Any, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    hearth = live(make_settings(backends(a, b)))
    b.add_model("phi4:14b")
    reply = oc(hearth.url).chat(model="phi4:14b", messages=MSG, stream=False)
    assert reply.message.content == "echo: hello there"


@pytest.fixture
def two_loaded() -> Iterator[tuple[FakeOllama, FakeOllama]]:
    """Both with the model loaded: the scheduler sends each request to the first, o0."""
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as a, FakeOllama(models=[MODEL], loaded=[MODEL]) as b:
        yield a, b


def test_circuit_breaker_opens_after_consecutive_failures(
    live: Any, oc: Any, two_loaded: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two_loaded
    hearth = live(make_settings(backends(a, b), routing={"breaker": {"failures": 2, "cooldown": 3600}}))
    client = oc(hearth.url)
    a.drop_next(times=2)
    for _ in range(2):
        client.chat(model=MODEL, messages=MSG, stream=False)
    assert admin(hearth)["o0"]["breaker"] == "open"
    before = chats(a)
    for _ in range(3):
        client.chat(model=MODEL, messages=MSG, stream=False)
    assert chats(a) == before  # skipped while open
    assert chats(b) == 5


def test_circuit_breaker_lets_one_probe_through_and_closes_on_success(
    live: Any, oc: Any, two_loaded: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two_loaded
    # cooldown 0: the breaker is half-open as soon as it opens, so the next request is a probe.
    hearth = live(make_settings(backends(a, b), routing={"breaker": {"failures": 1, "cooldown": 0}}))
    client = oc(hearth.url)
    a.drop_next()
    client.chat(model=MODEL, messages=MSG, stream=False)
    assert admin(hearth)["o0"]["breaker"] == "half-open"
    client.chat(model=MODEL, messages=MSG, stream=False)
    assert chats(a) == 2  # the probe went to a, and succeeded
    assert admin(hearth)["o0"]["breaker"] == "closed"


def test_mid_stream_death_ends_an_ollama_stream_with_an_error_line(
    live: Any, oc: Any, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    hearth = live(make_settings(backends(a, b)))
    a.die_mid_stream_next(after_chunks=2)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "one two three four five"}]}
    with httpx.stream("POST", hearth.url + "/api/chat", json=body) as resp:
        assert resp.status_code == 200
        raw = b"".join(resp.iter_bytes())
    lines = raw.split(b"\n")
    assert lines[-1] == b""  # ends with a newline
    assert all(lines[:-1])  # and holds no blank line
    assert b'"error"' in lines[-2]
    assert len(lines) - 2 == 2  # the two chunks that made it, then the error line
    assert chats(b) == 0  # no retry once bytes reached the client


def test_mid_stream_death_raises_in_the_ollama_client(
    live: Any, oc: Any, two: tuple[FakeOllama, FakeOllama]
) -> None:
    a, b = two
    hearth = live(make_settings(backends(a, b)))
    a.die_mid_stream_next(after_chunks=1)
    got: list[str] = []
    with pytest.raises(ollama.ResponseError):
        for part in oc(hearth.url).chat(model=MODEL, messages=MSG, stream=True):
            got.append(part.message.content)
    assert got == ["echo:"]


def test_mid_stream_death_raises_in_the_openai_client_through_translation(live: Any) -> None:
    with FakeOllama(models=[MODEL]) as a:
        hearth = live(make_settings(backends(a)))
        a.die_mid_stream_next(after_chunks=1)
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x", max_retries=0) as client:
            stream = client.chat.completions.create(model=MODEL, messages=MSG, stream=True)  # type: ignore[arg-type]
            with pytest.raises(openai.APIError):
                for _ in stream:
                    pass


def test_backend_error_line_mid_stream_reaches_the_openai_client_passthrough(live: Any) -> None:
    with FakeOpenAI(models=["gpt-4o-mini"]) as cloud:
        hearth = live(make_settings([{"name": "c", "kind": "openai", "url": cloud.url + "/v1"}]))
        cloud.die_mid_stream_next(after_chunks=2)
        with httpx.stream(
            "POST",
            hearth.url + "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MSG, "stream": True},
        ) as resp:
            raw = b"".join(resp.iter_bytes())
        events = [e for e in raw.split(b"\n\n") if e]
        assert len(events) == 3
        assert events[-1].startswith(b'data: {"error":')
