"""EmulatedOllama speaks Ollama's API well enough for the official client, with the scheduler
model's behaviour in compressed time (speed 1000: a simulated second is a real millisecond)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import ollama
import pytest

from hearth.protocol.ollama import parse_keep_alive
from hearth.sim.emulator import BUSY, EmulatedOllama
from hearth.sim.specs import ModelSpec, ServerSpec

# Loads take 2 s + size / 2 GB/s (simulated): 3 s for "a:1b", 4 s for "b:4b".
SERVER = ServerSpec(memory_gb=16.0, max_loaded_models=2, load_fixed_s=2.0, load_gbps=2.0)
MODELS = {
    "a:1b": ModelSpec("a:1b", size_gb=2.0, kv_gb=0.5, tokens_per_s=10.0, prompt_tokens_per_s=100.0),
    "b:4b": ModelSpec("b:4b", size_gb=4.0, kv_gb=0.5, tokens_per_s=10.0, prompt_tokens_per_s=100.0),
}
SPEED = 1000.0


class Served:
    """An EmulatedOllama on its own event loop in a thread, as a real server would be."""

    def __init__(self, emulator: EmulatedOllama) -> None:
        self.emulator = emulator
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(emulator.start(), self.loop).result(5)
        self.client = ollama.Client(host=self.url)

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(self.url + "/sim/stats").json()
        return result

    def close(self) -> None:
        self.client.close()
        asyncio.run_coroutine_threadsafe(self.emulator.stop(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """Factory: ``serve(**server_settings)`` starts an emulator with MODELS."""
    started: list[Served] = []

    def start(**settings: Any) -> Served:
        server = ServerSpec(**{**_fields(SERVER), **settings})
        served = Served(EmulatedOllama(server, MODELS, speed=SPEED))
        started.append(served)
        return served

    yield start
    for served in started:
        served.close()


def _fields(spec: ServerSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in spec.__dataclass_fields__}


def wait_for(probe: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll until ``probe()`` holds: the emulator's state changes on its own thread."""
    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "condition not reached in time"
        tick.wait(0.002)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ------------------------------------------------------------------------------------ discovery
def test_root_and_version_answer_like_ollama(serve: Callable[..., Served]) -> None:
    s = serve()
    root = httpx.get(s.url + "/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert httpx.get(s.url + "/api/version").json() == {"version": "0.12.0"}


def test_tags_list_every_model_with_its_file_size(serve: Callable[..., Served]) -> None:
    models = serve().client.list().models
    assert [(m.model, m.size) for m in models] == [("a:1b", 2_000_000_000), ("b:4b", 4_000_000_000)]
    assert models[0].details is not None
    assert models[0].details.family == "a"
    assert models[0].details.parameter_size == "1.0B"
    assert all(m.digest and len(m.digest) == 64 for m in models)


def test_an_unknown_model_is_404(serve: Callable[..., Served]) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        serve().client.chat("nope", messages=user("hi"))
    assert err.value.status_code == 404
    assert err.value.error == "model 'nope' not found"


# ----------------------------------------------------------------------------------- generation
def test_chat_streams_num_predict_tokens_in_chunks_of_chunk_s(serve: Callable[..., Served]) -> None:
    s = serve()
    parts = list(s.client.chat("a:1b", messages=user("x" * 40), stream=True, options={"num_predict": 25}))
    *chunks, final = parts
    # 10 tokens a second, chunk_s = 1: lines of 10, 10 and 5 tokens.
    assert [len(c.message.content.split()) for c in chunks] == [10, 10, 5]
    assert all(not c.done for c in chunks)
    assert final.done and final.done_reason == "stop"
    assert final.message.role == "assistant"
    assert final.eval_count == 25
    assert final.prompt_eval_count == 10
    assert final.eval_duration == 2_500_000_000  # simulated time, in ns
    assert final.prompt_eval_duration == 100_000_000


def test_chat_without_streaming_joins_the_default_128_tokens(serve: Callable[..., Served]) -> None:
    reply = serve().client.chat("a:1b", messages=user("hello there"), stream=False)
    assert reply.done and reply.done_reason == "stop"
    assert reply.message.content.split() == ["tok"] * 128
    assert reply.eval_count == 128
    assert reply.eval_duration == 12_800_000_000


def test_generate_counts_a_token_per_four_prompt_characters(serve: Callable[..., Served]) -> None:
    reply = serve().client.generate("b:4b", prompt="y" * 30, options={"num_predict": 5})
    assert reply.response.split() == ["tok"] * 5
    assert (reply.prompt_eval_count, reply.eval_count) == (7, 5)
    streamed = list(serve().client.generate("b:4b", prompt="z", stream=True, options={"num_predict": 3}))
    assert streamed[-1].done_reason == "stop"
    assert "".join(p.response for p in streamed).split() == ["tok"] * 3
    assert streamed[-1].prompt_eval_count == 1


def test_durations_are_in_simulated_time(serve: Callable[..., Served]) -> None:
    s = serve()
    reply = s.client.chat("b:4b", messages=user("q"), options={"num_predict": 20})
    load_ns = 4_000_000_000  # 2 s + 4 GB / 2 GB/s
    assert reply.load_duration is not None and reply.total_duration is not None
    assert abs(reply.load_duration - load_ns) < 1_000
    # total: the load, then 0.01 s of prompt and 2 s of generation, plus the real time the
    # server took beyond its sleeps (scaled by 1000, so allow a generous margin)
    assert reply.total_duration >= load_ns + 2_010_000_000 - 1_000
    again = s.client.chat("b:4b", messages=user("q"), options={"num_predict": 20})
    assert again.load_duration is None  # loaded already: omitted, as zero durations are


def test_a_second_model_with_max_loaded_one_waits_for_its_own_load(serve: Callable[..., Served]) -> None:
    s = serve(max_loaded_models=1)
    first = s.client.chat("a:1b", messages=user("q"), options={"num_predict": 5})
    second = s.client.chat("b:4b", messages=user("q"), options={"num_predict": 5})
    assert first.load_duration is not None and second.load_duration is not None
    assert first.load_duration >= 3_000_000_000 - 1_000
    assert second.load_duration >= 4_000_000_000 - 1_000
    stats = s.stats()
    assert stats["loads"] == 2
    assert [name for _, name in stats["load_log"]] == ["a:1b", "b:4b"]
    assert [m.model for m in s.client.ps().models] == ["b:4b"]


# ------------------------------------------------------------------------------- load and unload
def test_ps_shows_loaded_models_with_their_memory(serve: Callable[..., Served]) -> None:
    s = serve()
    assert s.client.ps().models == []
    s.client.chat("a:1b", messages=user("q"), options={"num_predict": 1}, keep_alive="1h")
    [entry] = s.client.ps().models
    assert (entry.name, entry.model, entry.size, entry.size_vram) == ("a:1b", "a:1b", 2_500_000_000, 0)
    assert entry.context_length == 4096
    assert entry.expires_at is not None
    raw = httpx.get(s.url + "/api/ps").json()["models"][0]["expires_at"]
    assert datetime.fromisoformat(raw) == entry.expires_at
    # an hour of simulated time at speed 1000: 3.6 s of real time from now, at most
    assert 0 < (entry.expires_at.timestamp() - time.time()) <= 3.6


def test_an_empty_generate_loads_the_model(serve: Callable[..., Served]) -> None:
    s = serve()
    reply = s.client.generate("a:1b")
    assert reply.done and reply.done_reason == "load"
    assert [m.model for m in s.client.ps().models] == ["a:1b"]
    assert s.stats()["loads"] == 1


def test_keep_alive_zero_with_an_empty_prompt_unloads(serve: Callable[..., Served]) -> None:
    s = serve()
    s.client.chat("a:1b", messages=user("q"), options={"num_predict": 1}, keep_alive=-1)
    assert [m.model for m in s.client.ps().models] == ["a:1b"]
    reply = s.client.generate("a:1b", prompt="", keep_alive=0)
    assert reply.done and reply.done_reason == "unload"
    assert s.client.ps().models == []
    chat = s.client.chat("b:4b", messages=[], keep_alive=0)
    assert chat.done_reason == "unload"


def test_a_request_with_keep_alive_zero_unloads_after_it(serve: Callable[..., Served]) -> None:
    s = serve()
    s.client.chat("a:1b", messages=user("q"), options={"num_predict": 1}, keep_alive="0s")
    assert s.client.ps().models == []


# -------------------------------------------------------------------------------- busy and gone
def test_a_full_pending_queue_answers_503(serve: Callable[..., Served]) -> None:
    s = serve(max_loaded_models=1, max_queue=1)
    held = s.client.chat("a:1b", messages=user("q"), stream=True, options={"num_predict": 100_000})
    assert not next(held).done  # a:1b is generating for 10,000 simulated seconds
    with ThreadPoolExecutor(2) as pool, ollama.Client(host=s.url) as c1, ollama.Client(host=s.url) as c2:
        # The first b waits for a:1b to go idle (the head of the queue), the second takes the one place.
        waiting = [pool.submit(c1.generate, "b:4b", prompt="q", options={"num_predict": 2})]
        wait_for(lambda: s.stats()["pending"] == 1)
        waiting.append(pool.submit(c2.generate, "b:4b", prompt="q", options={"num_predict": 2}))
        wait_for(lambda: s.stats()["pending"] == 2)
        with pytest.raises(ollama.ResponseError) as err:
            s.client.generate("b:4b", prompt="q")
        assert err.value.status_code == 503
        assert err.value.error == BUSY
        held.close()  # the client leaves mid-generation: a:1b goes idle and is evicted
        assert [f.result(5).eval_count for f in waiting] == [2, 2]
    stats = s.stats()
    assert (stats["loads"], stats["requests"], stats["rejected"]) == (2, 4, 1)


def test_a_client_leaving_before_its_turn_leaves_the_queue(serve: Callable[..., Served]) -> None:
    s = serve(max_loaded_models=1)
    held = s.client.chat("a:1b", messages=user("q"), stream=True, options={"num_predict": 100_000})
    next(held)
    # A raw socket: an HTTP client would block until the response headers, which come at the start.
    body = json.dumps({"model": "b:4b", "prompt": "q"}).encode()
    port = int(s.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = f"POST /api/generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        wait_for(lambda: s.stats()["pending"] == 1)
    wait_for(lambda: s.stats()["pending"] == 0)  # the handler was cancelled and left the queue
    held.close()
    wait_for(lambda: s.stats()["running"] == 0)
    assert s.stats()["loads"] == 1  # b:4b was never loaded


# ------------------------------------------------------------------------------------ keep_alive
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        (10, 10.0),
        (0, 0.0),
        (-1, -1.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("0", 0.0),
        ("-1", -1.0),
        ("-1m", -60.0),
        ("250ms", 0.25),
        ("2.5s", 2.5),
    ],
)
def test_keep_alive_is_seconds_or_a_go_duration(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 m", "m", True, [1], "nan"])
def test_a_bad_keep_alive_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="invalid keep_alive"):
        parse_keep_alive(value)


def test_a_bad_keep_alive_is_400(serve: Callable[..., Served]) -> None:
    resp = httpx.post(serve().url + "/api/chat", json={"model": "a:1b", "messages": [], "keep_alive": "soon"})
    assert resp.status_code == 400
    assert "invalid keep_alive" in resp.json()["error"]
