"""Per-tenant limits: 429 with Retry-After in each dialect, and token quotas that stay exact
when many requests race for the last tokens."""

from __future__ import annotations

import concurrent.futures
import time
from typing import Any

import httpx
import msgspec
import ollama
import openai
import pytest
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, count_words

MODEL = "llama3.1:8b"
MSG = [{"role": "user", "content": "hi"}]


def settings_for(fake: FakeOllama, tenant: dict[str, Any], **extra: Any) -> Any:
    # num_parallel: these tests hold every admitted request at the backend at once.
    return make_settings(
        [{"name": "o", "kind": "ollama", "url": fake.url, "num_parallel": 256}],
        tenants={"tests": {"admin": True, **tenant}},
        **extra,
    )


def test_requests_per_minute_answer_429_with_retry_after_in_both_dialects(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o, {"rpm": 2}))
        client = oc(hearth.url)
        client.chat(model=MODEL, messages=MSG, stream=False)
        client.chat(model=MODEL, messages=MSG, stream=False)
        r = httpx.post(hearth.url + "/api/chat", json={"model": MODEL, "messages": MSG})
        assert r.status_code == 429
        assert 1 <= int(r.headers["retry-after"]) <= 60
        assert "2 requests per minute" in r.json()["error"]
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x", max_retries=0) as oa:
            with pytest.raises(openai.RateLimitError) as err:
                oa.chat.completions.create(model=MODEL, messages=MSG)  # type: ignore[arg-type]
        assert err.value.response.headers["retry-after"]
        assert isinstance(err.value.body, dict)
        assert err.value.body["type"] == "rate_limit_error"
        assert len(o.requests_to("/api/chat")) == 2


def test_max_concurrent_refuses_a_request_beyond_the_limit(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o, {"max_concurrent": 1}))
        o.hold()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(oc(hearth.url).chat, model=MODEL, messages=MSG, stream=False)
            assert o.wait_in_flight(1)
            with pytest.raises(ollama.ResponseError) as err:
                oc(hearth.url).chat(model=MODEL, messages=MSG, stream=False)
            assert err.value.status_code == 429
            o.release()
            assert first.result(10).done
        oc(hearth.url).chat(model=MODEL, messages=MSG, stream=False)  # free again


def race(hearth: LiveHearth, fake: FakeOllama, body: bytes, n: int, admitted: int) -> list[int]:
    """Send ``n`` identical requests at once while the backend holds every admitted one, and
    release it only once each request was either admitted or refused."""
    fake.hold()
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    with httpx.Client(base_url=hearth.url, limits=limits, timeout=30) as http:

        def one() -> int:
            return http.post(
                "/api/chat", content=body, headers={"content-type": "application/json"}
            ).status_code

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(one) for _ in range(n)]
            assert fake.wait_in_flight(admitted, timeout=20)
            deadline = time.monotonic() + 20
            while sum(f.done() for f in futures) < n - admitted and time.monotonic() < deadline:
                concurrent.futures.wait(futures, timeout=0.05, return_when=concurrent.futures.FIRST_COMPLETED)
            fake.release()
            return [f.result(30) for f in futures]


def used_tokens(hearth: LiveHearth) -> int:
    rows = httpx.get(hearth.url + "/admin/requests", params={"limit": 1000}).json()["requests"]
    return sum((r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0) for r in rows if r["status"] == 200)


@pytest.mark.parametrize(
    ("bytes_per_token", "case"),
    [(4.0, "estimates above the real counts"), (1000.0, "estimates below the real counts")],
)
def test_a_daily_token_quota_is_exact_under_200_concurrent_requests(
    live: Any, bytes_per_token: float, case: str
) -> None:
    quota = 700
    content = "a b c d e f g h"
    num_predict = 5
    body = msgspec.json.encode(
        {
            "model": MODEL,
            "stream": False,
            "messages": [{"role": "user", "content": content}],
            "options": {"num_predict": num_predict},
        }
    )
    estimate = int(len(body) / bytes_per_token) + 1 + num_predict  # the documented estimate
    actual = count_words([content]) + num_predict  # what the fake backend reports
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o, {"tokens_per_day": quota}, limits={"bytes_per_token": bytes_per_token}))
        statuses = race(hearth, o, body, 200, quota // estimate)
        admitted = statuses.count(200)
        # Every reservation fitted when it was taken, and no more were taken than fit.
        assert admitted == quota // estimate
        assert statuses.count(429) == 200 - admitted
        used = used_tokens(hearth)
        assert used == admitted * actual
        # Overspend, if any, is bounded by how far the admitted requests outran their estimates
        # (completion is capped by num_predict, so only a low prompt estimate can do that).
        assert used - quota <= admitted * max(0, actual - estimate)
        if actual <= estimate:
            assert used <= quota
        # Once settled, the quota refuses what no longer fits.
        r = httpx.post(hearth.url + "/api/chat", content=body, headers={"content-type": "application/json"})
        assert (r.status_code == 429) == (used + estimate > quota)
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) <= 86400


def test_token_usage_survives_a_restart(oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        settings = settings_for(o, {"tokens_per_month": 40})
        with LiveHearth(settings) as hearth:
            client = oc(hearth.url)
            while True:
                try:
                    client.chat(model=MODEL, messages=MSG, stream=False, options={"num_predict": 1})
                except ollama.ResponseError as exc:
                    assert exc.status_code == 429
                    break
        with LiveHearth(settings) as again:
            with pytest.raises(ollama.ResponseError) as err:
                oc(again.url).chat(model=MODEL, messages=MSG, stream=False, options={"num_predict": 1})
            assert err.value.status_code == 429
            assert "tokens per month" in err.value.error


def test_each_person_behind_a_shared_key_has_their_own_limits(live: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o, {"rpm": 1, "user_header": "X-OpenWebUI-User-Email"}))
        body = {"model": MODEL, "messages": MSG, "stream": False}
        alice = {"X-OpenWebUI-User-Email": "alice@home"}
        bob = {"X-OpenWebUI-User-Email": "bob@home"}
        assert httpx.post(hearth.url + "/api/chat", json=body, headers=alice).status_code == 200
        assert httpx.post(hearth.url + "/api/chat", json=body, headers=alice).status_code == 429
        assert httpx.post(hearth.url + "/api/chat", json=body, headers=bob).status_code == 200


def test_tokens_per_minute_refuses_once_the_window_is_spent(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o, {"tpm": 100}, limits={"default_completion_tokens": 40}))
        client = oc(hearth.url)
        refused = 0
        for _ in range(5):
            try:
                client.chat(model=MODEL, messages=MSG, stream=False)
            except ollama.ResponseError as exc:
                assert exc.status_code == 429
                assert "tokens per minute" in exc.error
                refused += 1
        assert refused >= 3  # each request reserves at least 40 tokens of the 100
        assert len(o.requests_to("/api/chat")) == 5 - refused


LIMIT_CASES = {
    # limit: (tenant policy, requests that succeed first, words in the 429 message)
    "rpm": ({"rpm": 1}, 1, "requests per minute"),
    "tpm": ({"tpm": 100}, 1, "tokens per minute"),
    "tokens_per_day": ({"tokens_per_day": 50}, 0, "tokens per day"),
    "tokens_per_month": ({"tokens_per_month": 50}, 0, "tokens per month"),
}


@pytest.mark.parametrize("dialect", ["ollama", "openai"])
@pytest.mark.parametrize("limit", sorted(LIMIT_CASES))
def test_every_limit_answers_429_with_retry_after_in_the_clients_dialect(
    live: Any, limit: str, dialect: str
) -> None:
    policy, ok_first, words = LIMIT_CASES[limit]
    with FakeOllama(models=[MODEL]) as o:
        # Each request reserves about 60 tokens: 40 for the completion plus the prompt's bytes / 4.
        hearth = live(settings_for(o, policy, limits={"default_completion_tokens": 40}))
        path = "/api/chat" if dialect == "ollama" else "/v1/chat/completions"
        body = {"model": MODEL, "messages": MSG, "stream": False}
        for _ in range(ok_first):
            assert httpx.post(hearth.url + path, json=body).status_code == 200
        r = httpx.post(hearth.url + path, json=body)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        error = r.json()["error"]
        if dialect == "ollama":
            assert words in error
        else:
            assert words in error["message"]
            assert error["type"] == "rate_limit_error"
            assert error["code"] == "rate_limit_exceeded"
