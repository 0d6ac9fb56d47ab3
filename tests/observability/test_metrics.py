"""Prometheus metrics at GET /metrics: per-call counters, bounded labels, backend gauges."""

from __future__ import annotations

import secrets
import threading
from typing import Any

import httpx
import openai
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import LiveHearth, eventually, hang_up_mid_stream, make_settings
from tests.fakes import FakeOllama, FakeOpenAI, count_words, plan_chat, plan_completion

from hearth.backends.pool import Pool
from hearth.gateway.records import RequestLog
from hearth.gateway.scheduler import Scheduler
from hearth.observability.metrics import Metrics

PROMPT = "how warm is the living room"
MSGS = [{"role": "user", "content": PROMPT}]
IN = count_words([PROMPT])
OUT = len(plan_chat(MSGS).pieces)

Labels = dict[str, str]


def scrape(hearth: LiveHearth, **headers: str) -> list[tuple[str, Labels, float]]:
    """Every sample of the exposition as (sample name, labels, value)."""
    resp = httpx.get(hearth.url + "/metrics", headers=headers)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(resp.text)


def parse(text: str) -> list[tuple[str, Labels, float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def pick(samples: list[tuple[str, Labels, float]], name: str, **match: str) -> dict[tuple[str, ...], float]:
    """Samples called ``name`` whose labels include ``match``, keyed by their other label values."""
    out = {}
    for n, labels, value in samples:
        if n == name and all(labels.get(k) == v for k, v in match.items()):
            rest = tuple(v for k, v in sorted(labels.items()) if k not in match)
            out[rest] = value
    return out


def total(samples: list[tuple[str, Labels, float]], name: str, **match: str) -> float:
    return sum(pick(samples, name, **match).values())


def test_counters_move_by_the_calls_made_with_the_backends_token_counts(live: Any, oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b", "phi4:14b"]) as o, FakeOpenAI(models=["gpt-x"]) as c:
        hearth: LiveHearth = live(
            make_settings(
                [
                    {"name": "o", "kind": "ollama", "url": o.url},
                    {"name": "c", "kind": "openai", "url": c.url + "/v1"},
                ],
                aliases={"coder": "phi4:14b"},
            )
        )
        before = scrape(hearth)
        assert pick(before, "hearth_requests_total") == {}
        client = oc(hearth.url)
        for _ in range(2):
            client.chat(model="llama3.1:8b", messages=MSGS, stream=False)
        list(client.chat(model="llama3.1:8b", messages=MSGS, stream=True))  # passthrough, streamed
        client.generate(model="coder", prompt=PROMPT, stream=False)  # an alias keeps its name
        list(client.chat(model="gpt-x", messages=MSGS, stream=True))  # translated to OpenAI
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x", max_retries=0) as oa:
            oa.chat.completions.create(model="gpt-x", messages=MSGS)
        assert (
            httpx.post(hearth.url + "/api/chat", json={"model": "nope", "messages": MSGS}).status_code == 404
        )

        s = scrape(hearth)
        tenants = {labels["tenant"] for n, labels, _ in s if n == "hearth_requests_total"}
        assert len(tenants) == 1  # every call came from the same caller
        tenant = tenants.pop()
        requests = pick(s, "hearth_requests_total", tenant=tenant)
        # keys: backend, dialect, endpoint, model, status (label names sorted)
        assert requests == {
            ("o", "ollama", "chat", "llama3.1:8b", "200"): 3,
            ("o", "ollama", "completion", "coder", "200"): 1,
            ("c", "ollama", "chat", "gpt-x", "200"): 1,
            ("c", "openai", "chat", "gpt-x", "200"): 1,
            ("none", "ollama", "chat", "other", "404"): 1,
        }
        # keys: backend, dialect, endpoint, model, reason
        assert pick(s, "hearth_request_errors_total", tenant=tenant) == {
            ("none", "ollama", "chat", "other", "client_error"): 1
        }

        assert total(s, "hearth_tokens_total", model="llama3.1:8b", backend="o", direction="in") == 3 * IN
        assert total(s, "hearth_tokens_total", model="llama3.1:8b", backend="o", direction="out") == 3 * OUT
        gen_out = len(plan_completion(PROMPT).pieces)
        assert total(s, "hearth_tokens_total", model="coder", direction="in") == IN
        assert total(s, "hearth_tokens_total", model="coder", direction="out") == gen_out
        assert total(s, "hearth_tokens_total", model="gpt-x", backend="c", direction="in") == 2 * IN
        assert total(s, "hearth_tokens_total", model="gpt-x", backend="c", direction="out") == 2 * OUT
        assert total(s, "hearth_tokens_total", model="other") == 0

        # Histograms: one observation per call; time to first byte only where a byte came.
        assert total(s, "hearth_request_duration_seconds_count", model="llama3.1:8b", backend="o") == 3
        assert total(s, "hearth_ttft_seconds_count", model="llama3.1:8b", backend="o") == 3
        assert total(s, "hearth_request_duration_seconds_count") == 7
        assert total(s, "hearth_ttft_seconds_count") == 6
        assert total(s, "hearth_ttft_seconds_count", model="other") == 0
        sums = pick(s, "hearth_request_duration_seconds_sum", model="llama3.1:8b", backend="o")
        ttft = pick(s, "hearth_ttft_seconds_sum", model="llama3.1:8b", backend="o")
        assert sum(sums.values()) >= sum(ttft.values()) > 0
        inf = pick(s, "hearth_ttft_seconds_bucket", model="llama3.1:8b", le="+Inf")
        low = pick(s, "hearth_ttft_seconds_bucket", model="llama3.1:8b", le="0.005")
        assert sum(inf.values()) == 3 and sum(low.values()) <= 3
        assert pick(s, "hearth_ttft_seconds_bucket", model="llama3.1:8b", le="120.0")

        # A second scrape sees the same numbers: scraping changes nothing.
        assert pick(scrape(hearth), "hearth_requests_total") == pick(s, "hearth_requests_total")


def test_unknown_model_names_fold_into_other_and_never_make_a_series(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b", "phi4"]) as o:
        hearth: LiveHearth = live(make_settings([{"name": "o", "kind": "ollama", "url": o.url}]))
        with httpx.Client(base_url=hearth.url) as http:
            # One unknown name per dialect first, so the "other" series exist.
            assert http.post("/api/chat", json={"model": "warmup", "messages": MSGS}).status_code == 404
            resp = http.post("/v1/chat/completions", json={"model": "warmup", "messages": MSGS})
            assert resp.status_code == 404
            first = scrape(hearth)
            names = [f"evil-{secrets.token_hex(6)}:{i}" for i in range(20)]
            for i, name in enumerate(names):
                path = "/api/chat" if i % 2 else "/v1/chat/completions"
                assert http.post(path, json={"model": name, "messages": MSGS}).status_code == 404
            # Ollama's "phi4" is "phi4:latest": one series, whichever spelling the client used.
            http.post("/api/generate", json={"model": "phi4", "prompt": "x", "stream": False})
            http.post("/api/generate", json={"model": "phi4:latest", "prompt": "x", "stream": False})
            text = http.get("/metrics").text
        after = parse(text)
        assert not any(name in text for name in names)
        assert total(after, "hearth_requests_total", model="other") == 22
        assert total(after, "hearth_request_errors_total", model="other", reason="client_error") == 22
        assert pick(after, "hearth_requests_total", model="phi4:latest", status="200") != {}
        assert total(after, "hearth_requests_total", model="phi4:latest") == 2

        def series(samples: list[tuple[str, Labels, float]]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
            return {(n, tuple(sorted(labels.items()))) for n, labels, _ in samples}

        new = series(after) - series(first)
        # The only new series are those of the phi4:latest calls.
        assert new and all(dict(labels).get("model") == "phi4:latest" for _, labels in new)


def test_backend_gauges_are_read_from_the_pool_at_scrape_time(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"], loaded=["llama3.1:8b"]) as a, FakeOllama(models=["qwen:7b"]) as b:
        hearth: LiveHearth = live(
            make_settings(
                [
                    {"name": "a", "kind": "ollama", "url": a.url},
                    {"name": "b", "kind": "ollama", "url": b.url},
                ],
                routing={"breaker": {"failures": 1, "cooldown": 3600}},
            )
        )
        s = scrape(hearth)
        assert pick(s, "hearth_backend_up") == {("a",): 1, ("b",): 1}
        assert pick(s, "hearth_backend_models_loaded") == {("a",): 1, ("b",): 0}
        size = hearth.pool.by_name["a"].loaded["llama3.1:8b"].size
        assert size > 0
        assert pick(s, "hearth_backend_loaded_model_bytes") == {("a", "llama3.1:8b"): size}
        assert pick(s, "hearth_backend_in_flight") == {("a",): 0, ("b",): 0}
        assert pick(s, "hearth_backend_breaker_open") == {("a",): 0, ("b",): 0}
        assert pick(s, "hearth_queue_depth") == {}  # by model, only while some wait
        assert pick(s, "hearth_model_loads_total") == {("a",): 0, ("b",): 0}
        assert pick(s, "hearth_request_log_dropped_total") == {(): 0}
        assert total(s, "process_resident_memory_bytes") > 0  # the process collector is there

        # A call in flight shows while it waits for its first byte.
        a.hold()
        result: list[int] = []
        body = {"model": "llama3.1:8b", "messages": MSGS, "stream": False}
        t = threading.Thread(
            target=lambda: result.append(
                httpx.post(hearth.url + "/api/chat", json=body, timeout=10).status_code
            )
        )
        t.start()
        try:
            assert a.wait_in_flight(1)
            assert pick(scrape(hearth), "hearth_backend_in_flight") == {("a",): 1, ("b",): 0}
        finally:
            a.release()
            t.join(10)
        assert result == [200]
        assert pick(scrape(hearth), "hearth_backend_in_flight") == {("a",): 0, ("b",): 0}

        # A backend error opens b's breaker (failures: 1); then b goes down.
        b.fail_next(500)
        resp = httpx.post(
            hearth.url + "/api/chat", json={"model": "qwen:7b", "messages": MSGS, "stream": False}
        )
        assert resp.status_code == 500
        s = scrape(hearth)
        assert pick(s, "hearth_backend_breaker_open") == {("a",): 0, ("b",): 1}
        assert total(s, "hearth_request_errors_total", backend="b", reason="server_error") == 1
        assert total(s, "hearth_requests_total", backend="b", status="500") == 1
        b.stop()
        hearth.refresh()
        a.unload("llama3.1:8b")
        hearth.refresh()
        s = scrape(hearth)
        assert pick(s, "hearth_backend_up") == {("a",): 1, ("b",): 0}
        assert pick(s, "hearth_backend_models_loaded") == {("a",): 0, ("b",): 0}
        assert pick(s, "hearth_backend_loaded_model_bytes") == {}


def test_a_client_that_hangs_up_is_counted_as_499(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o:
        hearth: LiveHearth = live(make_settings([{"name": "o", "kind": "ollama", "url": o.url}]))
        hang_up_mid_stream(hearth.url, o)
        # counted when Hearth's stream task unwinds
        counted = eventually(lambda: pick(scrape(hearth), "hearth_requests_total", status="499"))
        s = scrape(hearth)
        assert sum(counted.values()) == 1
        assert total(s, "hearth_requests_total") == 1
        assert total(s, "hearth_request_errors_total", reason="client_disconnect", backend="o") == 1
        assert total(s, "hearth_request_duration_seconds_count", model="llama3.1:8b") == 1
        assert total(s, "hearth_tokens_total") == 0  # the backend never said


def test_a_backend_that_dies_mid_stream_counts_as_a_mid_stream_error(live: Any, oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o:
        hearth: LiveHearth = live(make_settings([{"name": "o", "kind": "ollama", "url": o.url}]))
        o.die_mid_stream_next(after_chunks=2)
        with httpx.stream(
            "POST", hearth.url + "/api/chat", json={"model": "llama3.1:8b", "messages": MSGS}
        ) as resp:
            lines = list(resp.iter_lines())
        assert resp.status_code == 200 and "error" in lines[-1]
        s = scrape(hearth)
        assert pick(s, "hearth_requests_total", model="llama3.1:8b", backend="o", status="200")
        assert total(s, "hearth_requests_total") == 1
        assert total(s, "hearth_request_errors_total", reason="mid_stream", backend="o") == 1


def test_metrics_key_guards_metrics(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o:
        hearth: LiveHearth = live(
            make_settings([{"name": "o", "kind": "ollama", "url": o.url}], server={"metrics_key": "s3cret"})
        )
        with httpx.Client(base_url=hearth.url) as http:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s3cret"}):
                resp = http.get("/metrics", headers=headers)
                assert resp.status_code == 401
                assert resp.headers["www-authenticate"] == "Bearer"
                assert "hearth_" not in resp.text
            ok = http.get("/metrics", headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
            assert "hearth_backend_up" in ok.text
            om = http.get(
                "/metrics",
                headers={
                    "Authorization": "bearer s3cret",
                    "Accept": "application/openmetrics-text; version=1.0.0",
                },
            )
            assert om.status_code == 200
            assert om.headers["content-type"].startswith("application/openmetrics-text")
            assert om.text.endswith("# EOF\n")


def test_sub_tenants_count_under_their_tenant_and_apps_do_not_share_series() -> None:
    settings = make_settings([{"name": "o", "kind": "ollama", "url": "http://127.0.0.1:9"}])
    texts = []
    for tenant in ("svc/alice@example.org", "other-app"):
        registry = CollectorRegistry()
        pool = Pool(settings)
        metrics = Metrics(registry, pool, settings.aliases, Scheduler(settings, pool))
        records = RequestLog(None, 1.0, 10, metrics=metrics)
        trace = records.trace("openai", "chat", "x", False, tenant=tenant)
        trace.first_byte()
        trace.finish(200, tokens=(3, 4))
        trace.finish(500)  # a trace is finished once
        texts.append(generate_latest(registry).decode())
    first, second = (parse(t) for t in texts)
    assert pick(first, "hearth_requests_total") == {("none", "openai", "chat", "other", "200", "svc"): 1}
    assert "alice" not in texts[0]
    assert total(first, "hearth_tokens_total", direction="out") == 4
    assert pick(second, "hearth_requests_total", tenant="other-app") != {}
    assert total(second, "hearth_requests_total", tenant="svc") == 0
