"""A client that hangs up cancels the upstream request, in every mode and dialect."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from tests.conftest import LiveHearth, eventually, hang_up_mid_stream, make_settings
from tests.fakes import FakeOllama, FakeOpenAI

MODEL = "llama3.1:8b"


@pytest.fixture
def setup(live: Any) -> Iterator[tuple[LiveHearth, FakeOllama, FakeOpenAI]]:
    with FakeOllama(models=[MODEL]) as o, FakeOpenAI(models=["gpt-4o-mini"]) as c:
        hearth = live(
            make_settings(
                [
                    {"name": "o", "kind": "ollama", "url": o.url},
                    {"name": "c", "kind": "openai", "url": c.url + "/v1"},
                ]
            )
        )
        yield hearth, o, c


def raw_post(hearth: LiveHearth, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a request on a bare socket, so the test decides exactly when the client goes away."""
    data = msgspec.json.encode(body)
    host, port = hearth.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    sock.sendall(head.encode() + data)
    return sock


def in_flight(hearth: LiveHearth) -> int:
    return sum(b["in_flight"] for b in httpx.get(hearth.url + "/admin/backends").json()["backends"])


def test_closing_an_ollama_stream_cancels_generation(
    setup: tuple[LiveHearth, FakeOllama, FakeOpenAI],
) -> None:
    hearth, o, _ = setup
    hang_up_mid_stream(hearth.url, o)


def test_disconnect_while_waiting_for_the_first_byte_cancels(
    setup: tuple[LiveHearth, FakeOllama, FakeOpenAI],
) -> None:
    hearth, o, _ = setup
    o.hold()  # a model still loading
    sock = raw_post(hearth, "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert o.wait_in_flight(1)
    sock.close()
    assert o.wait_cancelled()


def test_disconnect_during_a_non_streaming_request_cancels(
    setup: tuple[LiveHearth, FakeOllama, FakeOpenAI],
) -> None:
    hearth, o, _ = setup
    o.hold()
    body = {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "hi"}]}
    sock = raw_post(hearth, "/api/chat", body)
    assert o.wait_in_flight(1)
    sock.close()
    assert o.wait_cancelled()


def test_disconnect_from_an_openai_client_on_an_ollama_backend_cancels(
    setup: tuple[LiveHearth, FakeOllama, FakeOpenAI],
) -> None:
    hearth, o, _ = setup
    hang_up_mid_stream(hearth.url, o, "/v1/chat/completions")


def test_disconnect_from_an_ollama_client_on_an_openai_backend_cancels(
    setup: tuple[LiveHearth, FakeOllama, FakeOpenAI],
) -> None:
    hearth, _, c = setup
    hang_up_mid_stream(hearth.url, c, model="gpt-4o-mini")


def test_a_cancelled_request_no_longer_counts_as_in_flight(
    setup: tuple[LiveHearth, FakeOllama, FakeOpenAI],
) -> None:
    hearth, o, _ = setup
    o.hold()
    sock = raw_post(hearth, "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert o.wait_in_flight(1)
    assert in_flight(hearth) == 1
    sock.close()
    assert o.wait_cancelled()
    # Hearth settles its count in its own task; the backend noticing first is no guarantee.
    assert eventually(lambda: in_flight(hearth) == 0)
