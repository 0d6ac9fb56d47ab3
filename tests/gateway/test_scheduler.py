"""The scheduler through a live Hearth (gateway/policy.py states the policy): slots per model,
who goes first, bounded queues, clients leaving while queued, and model switches."""

from __future__ import annotations

import concurrent.futures
import math
import socket
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import LiveHearth, eventually, make_settings
from tests.fakes import FakeOllama, Recorded

from hearth.gateway.scheduler import seconds_left
from hearth.settings import Settings

MODEL = "llama3.1:8b"
OTHER = "qwen2.5:7b"


# ---- helpers -----------------------------------------------------------------------------------


def settings_for(
    *fakes: FakeOllama, tenants: dict[str, Any] | None = None, extra: dict[str, Any] | None = None, **cfg: Any
) -> Settings:
    """One Ollama backend per fake, named o1, o2...; ``cfg`` is each backend's scheduler settings."""
    backends = [{"name": f"o{i}", "kind": "ollama", "url": f.url, **cfg} for i, f in enumerate(fakes, 1)]
    return make_settings(backends, tenants={"tests": {"admin": True}, **(tenants or {})}, **(extra or {}))


def chat_body(prompt: str, model: str = MODEL) -> dict[str, Any]:
    messages = [{"role": "user", "content": prompt}]
    return {"model": model, "stream": False, "messages": messages, "options": {"num_predict": 2}}


def chat(url: str, prompt: str, key: str | None = None, model: str = MODEL) -> httpx.Response:
    """An Ollama chat through Hearth; the prompt names the request in what the backend saw."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/api/chat", json=chat_body(prompt, model), headers=headers, timeout=30)


def body_of(r: Recorded) -> dict[str, Any]:
    assert isinstance(r.json, dict), r.body
    return r.json


def prompts_seen(fake: FakeOllama) -> list[str]:
    """The chats the backend received, in arrival order, by prompt."""
    return [body_of(r)["messages"][-1]["content"] for r in fake.requests_to("/api/chat")]


def queue(hearth: LiveHearth) -> dict[str, Any]:
    r = httpx.get(hearth.url + "/admin/queue")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def waiting(hearth: LiveHearth) -> list[dict[str, Any]]:
    return queue(hearth)["waiting"]  # type: ignore[no-any-return]


def queued(hearth: LiveHearth, count: int) -> bool:
    """Wait until exactly ``count`` requests wait in Hearth's queue."""
    return bool(eventually(lambda: len(waiting(hearth)) == count))


def metric(hearth: LiveHearth, name: str, **labels: str) -> float | None:
    text = httpx.get(hearth.url + "/metrics").text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def new_key(hearth: LiveHearth, tenant: str) -> str:
    r = httpx.post(hearth.url + "/admin/keys", json={"tenant": tenant})
    assert r.status_code == 201, r.text
    return r.json()["key"]  # type: ignore[no-any-return]


def raw_post(hearth: LiveHearth, path: str, body: dict[str, Any]) -> socket.socket:
    """Send a request on a bare socket, so the test decides exactly when the client leaves."""
    data = msgspec.json.encode(body)
    host, port = hearth.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    sock.sendall(head.encode() + data)
    return sock


@pytest.fixture
def bg() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    """Threads for the clients that wait while the test looks on."""
    pool = concurrent.futures.ThreadPoolExecutor(16)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def keyed() -> Iterator[Callable[[LiveHearth, str], ollama.Client]]:
    """Factory: an official ollama client acting as a tenant (with a new key of its own)."""
    made: list[ollama.Client] = []

    def make(hearth: LiveHearth, tenant: str) -> ollama.Client:
        c = ollama.Client(host=hearth.url, headers={"Authorization": f"Bearer {new_key(hearth, tenant)}"})
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()  # type: ignore[no-untyped-call]


def ask(client: ollama.Client, prompt: str) -> ollama.ChatResponse:
    return client.chat(
        model=MODEL, messages=[{"role": "user", "content": prompt}], options={"num_predict": 2}
    )


# ---- slots -------------------------------------------------------------------------------------


def test_with_one_slot_the_next_request_waits_in_hearth_until_the_first_ends(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor
) -> None:
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(settings_for(o, num_parallel=1))
        o.hold()
        first = bg.submit(chat, hearth.url, "first")
        assert o.wait_in_flight(1)
        second = bg.submit(chat, hearth.url, "second")
        assert queued(hearth, 1)
        third = bg.submit(chat, hearth.url, "third")
        assert queued(hearth, 2)
        assert prompts_seen(o) == ["first"]
        o.release()
        replies = [f.result(10) for f in (first, second, third)]
        assert [r.status_code for r in replies] == [200, 200, 200]
        assert prompts_seen(o) == ["first", "second", "third"]
        assert o.max_in_flight_seen == 1
    # The place in the model's queue on arrival: 0 for the first (it did not queue), then 1, 2.
    assert [r.headers["x-hearth-queue-position"] for r in replies] == ["0", "1", "2"]
    waits = [int(r.headers["x-hearth-queue-wait-ms"]) for r in replies]
    assert waits[0] == 0
    assert waits[1] > 0
    assert waits[2] > 0


def test_with_two_slots_two_requests_reach_the_backend_at_once_and_the_third_waits(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor
) -> None:
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(settings_for(o, num_parallel=2))
        o.hold()
        both = [bg.submit(chat, hearth.url, p) for p in ("a", "b")]
        assert o.wait_in_flight(2)
        third = bg.submit(chat, hearth.url, "c")
        assert queued(hearth, 1)
        assert o.in_flight == 2
        assert sorted(prompts_seen(o)) == ["a", "b"]
        o.release()
        assert [f.result(10).status_code for f in [*both, third]] == [200, 200, 200]
        assert prompts_seen(o)[2] == "c"
        assert o.max_in_flight_seen == 2


def test_admin_queue_and_queue_depth_show_a_waiting_request_until_it_is_served(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor
) -> None:
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(settings_for(o))
        o.hold()
        first = bg.submit(chat, hearth.url, "first")
        assert o.wait_in_flight(1)
        assert metric(hearth, "hearth_queue_depth", model=MODEL) is None
        second = bg.submit(chat, hearth.url, "second")
        assert queued(hearth, 1)
        snap = queue(hearth)
        [entry] = snap["waiting"]
        assert {k: entry[k] for k in ("tenant", "model", "position", "priority")} == {
            "tenant": "tests",
            "model": MODEL,
            "position": 1,  # 1-based, in the order the scheduler will grant them
            "priority": "interactive",
        }
        [backend] = snap["backends"]
        assert [(m["model"], m["in_flight"]) for m in backend["models"]] == [(MODEL, 1)]
        assert metric(hearth, "hearth_queue_depth", model=MODEL) == 1
        o.release()
        assert first.result(10).status_code == 200
        assert second.result(10).status_code == 200
        assert waiting(hearth) == []
        assert not metric(hearth, "hearth_queue_depth", model=MODEL)


# ---- who goes first ----------------------------------------------------------------------------


def test_an_interactive_request_goes_before_a_batch_request_that_came_first(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor, keyed: Callable[[LiveHearth, str], ollama.Client]
) -> None:
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(settings_for(o, tenants={"nightly": {"priority": "batch"}, "chat": {}}))
        nightly, chatty = keyed(hearth, "nightly"), keyed(hearth, "chat")
        o.hold()
        busy = bg.submit(chat, hearth.url, "busy")
        assert o.wait_in_flight(1)
        batch = bg.submit(ask, nightly, "batch job")
        assert queued(hearth, 1)
        interactive = bg.submit(ask, chatty, "interactive")
        assert queued(hearth, 2)
        assert [(w["tenant"], w["priority"], w["position"]) for w in waiting(hearth)] == [
            ("chat", "interactive", 1),
            ("nightly", "batch", 2),
        ]
        o.release()
        assert busy.result(10).status_code == 200
        assert interactive.result(10).done
        assert batch.result(10).done
        assert prompts_seen(o) == ["busy", "interactive", "batch job"]


def test_tenants_waiting_for_one_model_share_it_in_proportion_to_their_weights(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor
) -> None:
    # Every request costs the same 3 tokens (1 for a prompt of any size at this bytes_per_token,
    # 2 for num_predict), so the virtual times below are exact integers.
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(
            settings_for(
                o,
                tenants={"light": {"weight": 1}, "heavy": {"weight": 3}},
                extra={"limits": {"bytes_per_token": 1e9}},
            )
        )
        keys = {"light": new_key(hearth, "light"), "heavy": new_key(hearth, "heavy")}
        o.hold()
        busy = bg.submit(chat, hearth.url, "busy")
        assert o.wait_in_flight(1)
        # Arrivals alternate, then heavy keeps sending.
        arrivals = ["light 1", "heavy 1", "light 2", "heavy 2", "light 3", "heavy 3", "light 4"]
        arrivals += [f"heavy {i}" for i in range(4, 9)]
        futures = []
        for n, prompt in enumerate(arrivals, 1):
            futures.append(bg.submit(chat, hearth.url, prompt, keys[prompt.split()[0]]))
            assert queued(hearth, n)  # arrival order is the tie-break: make it certain
        o.release()
        assert busy.result(10).status_code == 200
        assert [f.result(10).status_code for f in futures] == [200] * len(arrivals)
        order = prompts_seen(o)[1:]
    # Start-time fair queueing, cost 3: the pick is the least max(V, F[tenant]), ties by
    # arrival; a grant sets V to that start and F[tenant] to start + 3 / weight (light +3,
    # heavy +1). From V = F = 0:
    #   light 1 (tie at 0, came first) F_l=3 | heavy 1, 2, 3 at 0, 1, 2: F_h=3, V=2
    #   light 2 (tie at 3, came first) F_l=6, V=3 | heavy 4, 5, 6 at 3, 4, 5: F_h=6
    #   light 3 (tie at 6) F_l=9, V=6 | heavy 7, 8 at 6, 7 | light 4.
    assert order == [
        "light 1", "heavy 1", "heavy 2", "heavy 3",
        "light 2", "heavy 4", "heavy 5", "heavy 6",
        "light 3", "heavy 7", "heavy 8",
        "light 4",
    ]  # fmt: skip
    first_eight = [p.split()[0] for p in order[:8]]
    assert (first_eight.count("heavy"), first_eight.count("light")) == (6, 2)


# ---- bounded queues ----------------------------------------------------------------------------


def test_a_tenant_over_its_queue_bound_gets_429_with_retry_after_in_both_dialects(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor
) -> None:
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(settings_for(o, tenants={"small": {"max_queue": 1}}))
        key = new_key(hearth, "small")
        o.hold()
        busy = bg.submit(chat, hearth.url, "busy")
        assert o.wait_in_flight(1)
        waits = bg.submit(chat, hearth.url, "queued", key)
        assert queued(hearth, 1)

        r = chat(hearth.url, "refused", key)
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert isinstance(r.json()["error"], str)
        assert "waiting" in r.json()["error"]

        with openai.OpenAI(base_url=hearth.url + "/v1", api_key=key, max_retries=0) as oa:
            with pytest.raises(openai.RateLimitError) as err:
                oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "refused"}])
        assert int(err.value.response.headers["retry-after"]) >= 1
        body = err.value.body
        assert isinstance(body, dict)
        assert body["type"] == "rate_limit_error"
        assert body["code"] == "rate_limit_exceeded"
        assert "waiting" in body["message"]

        assert [w["tenant"] for w in waiting(hearth)] == ["small"]  # the earlier one still waits
        o.release()
        assert busy.result(10).status_code == 200
        assert waits.result(10).status_code == 200
        assert prompts_seen(o) == ["busy", "queued"]


def test_a_request_that_waits_past_max_wait_gets_503_with_retry_after_in_both_dialects(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor
) -> None:
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(settings_for(o, tenants={"hasty": {"max_wait": 0.3}}))
        key = new_key(hearth, "hasty")
        o.hold()
        busy = bg.submit(chat, hearth.url, "busy")
        assert o.wait_in_flight(1)

        r = chat(hearth.url, "too late", key)
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        assert isinstance(r.json()["error"], str)
        assert "waited" in r.json()["error"]

        with openai.OpenAI(base_url=hearth.url + "/v1", api_key=key, max_retries=0) as oa:
            with pytest.raises(openai.InternalServerError) as err:
                oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "too late"}])
        assert err.value.status_code == 503
        assert int(err.value.response.headers["retry-after"]) >= 1
        body = err.value.body
        assert isinstance(body, dict)
        assert {"message", "type", "code"} <= body.keys()
        assert "waited" in body["message"]

        assert waiting(hearth) == []
        o.release()
        assert busy.result(10).status_code == 200
        assert chat(hearth.url, "in time", key).status_code == 200
        assert prompts_seen(o) == ["busy", "in time"]

        # The request log and the queue-wait histogram count the waits that were given up.
        given_up = [t for t in traces_of(hearth, "hasty") if t["status"] == 503]
        assert len(given_up) == 2
        assert all(t["queue_wait_ms"] >= 300 for t in given_up)
        assert metric(hearth, "hearth_queue_wait_seconds_count", tenant="hasty", backend="none") == 2
        given_up_s = metric(hearth, "hearth_queue_wait_seconds_sum", tenant="hasty", backend="none")
        assert given_up_s is not None and given_up_s >= 0.6
        # Waits that end in a grant count under their backend; a free slot is a wait of zero.
        assert metric(hearth, "hearth_queue_wait_seconds_count", tenant="hasty", backend="o1") == 1
        assert (
            metric(hearth, "hearth_queue_wait_seconds_bucket", tenant="hasty", backend="o1", le="0.005") == 1
        )


# ---- cancellation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", chat_body("gone")),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "gone"}]}),
    ],
    ids=["ollama", "openai"],
)
def test_a_client_that_hangs_up_while_queued_leaves_the_queue(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor, path: str, body: dict[str, Any]
) -> None:
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(settings_for(o))
        o.hold()
        busy = bg.submit(chat, hearth.url, "busy")
        assert o.wait_in_flight(1)
        sock = raw_post(hearth, path, body)
        try:
            assert queued(hearth, 1)
        finally:
            sock.close()
        assert queued(hearth, 0)
        o.release()
        assert busy.result(10).status_code == 200
        # Served in arrival order: had "gone" still been queued, it would have gone first.
        assert chat(hearth.url, "after").status_code == 200
        assert prompts_seen(o) == ["busy", "after"]


# ---- model switches ----------------------------------------------------------------------------


def test_switching_models_unloads_the_loaded_one_before_sending(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL, OTHER], loaded=[MODEL]) as o:
        hearth = live(settings_for(o, max_loaded_models=1))
        reply = oc(hearth.url).chat(
            model=OTHER, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2}
        )
        assert reply.done
        sent = [r for r in o.requests if r.path in ("/api/generate", "/api/chat")]
        assert [r.path for r in sent] == ["/api/generate", "/api/chat"]
        unload = body_of(sent[0])
        assert unload["model"] == MODEL
        assert unload["keep_alive"] == 0
        assert not unload.get("prompt")
        assert body_of(sent[1])["model"] == OTHER
        assert o.loaded == [OTHER]
        assert metric(hearth, "hearth_model_loads_total", backend="o1") == 1


def test_a_model_goes_where_it_is_loaded_and_a_queued_request_warms_an_idle_backend(
    live: Any, oc: Any, bg: concurrent.futures.ThreadPoolExecutor
) -> None:
    with FakeOllama(models=[MODEL]) as cold, FakeOllama(models=[MODEL], loaded=[MODEL]) as warm:
        hearth = live(settings_for(cold, warm))  # o1 is cold, o2 has the model loaded
        warm.hold()
        first = bg.submit(chat, hearth.url, "first")
        assert warm.wait_in_flight(1)
        assert prompts_seen(cold) == []
        # Busy on o2 with one slot: an interactive request that would wait there loads the model
        # on the idle o1 at once (no victim to evict).
        reply = oc(hearth.url).chat(
            model=MODEL, messages=[{"role": "user", "content": "second"}], options={"num_predict": 2}
        )
        assert reply.done
        assert prompts_seen(cold) == ["second"]
        assert prompts_seen(warm) == ["first"]
        assert cold.requests_to("/api/generate") == []  # nothing was unloaded
        assert metric(hearth, "hearth_model_loads_total", backend="o1") == 1
        assert metric(hearth, "hearth_model_loads_total", backend="o2") == 0
        warm.release()
        assert first.result(10).status_code == 200


def test_an_unload_request_takes_no_slot_and_never_loads_the_model_first(live: Any, oc: Any) -> None:
    """Open WebUI's unload button: keep_alive 0 and nothing to generate. Ollama answers at once;
    Hearth must not evict another model to load this one just to unload it."""
    with FakeOllama(models=[MODEL, OTHER], loaded=[MODEL]) as o:
        hearth = live(settings_for(o, max_loaded_models=1))
        client = oc(hearth.url)
        client.generate(model=OTHER, prompt="", keep_alive=0)
        unloads = [body_of(r) for r in o.requests_to("/api/generate")]
        assert [(u["model"], u["keep_alive"]) for u in unloads] == [(OTHER, 0)]  # MODEL untouched
        assert o.loaded == [MODEL]
        assert metric(hearth, "hearth_model_loads_total", backend="o1") == 0

        # Unloading the loaded model frees the backend: the next model loads with no eviction.
        client.generate(model=MODEL, prompt="", keep_alive=0)
        assert o.loaded == []
        client.chat(model=OTHER, messages=[{"role": "user", "content": "hi"}], options={"num_predict": 2})
        unloads = [body_of(r)["model"] for r in o.requests_to("/api/generate")]
        assert unloads == [OTHER, MODEL]  # none sent by Hearth for the switch
        assert o.loaded == [OTHER]


@pytest.mark.parametrize("zero", ["0s", "0m", "0.0"])
def test_a_zero_keep_alive_written_as_a_duration_is_an_unload_too(live: Any, oc: Any, zero: str) -> None:
    with FakeOllama(models=[MODEL, OTHER], loaded=[MODEL]) as o:
        hearth = live(settings_for(o, max_loaded_models=1))
        oc(hearth.url).generate(model=MODEL, prompt="", keep_alive=zero)
        assert o.loaded == []
        assert [body_of(r)["keep_alive"] for r in o.requests_to("/api/generate")] == [zero]
        assert metric(hearth, "hearth_model_loads_total", backend="o1") == 0


def test_a_backend_with_hold_models_gets_keep_alive_minus_one_unless_the_client_or_an_alias_set_one(
    live: Any,
) -> None:
    """Its models stay loaded until the scheduler evicts one: Ollama's idle timer must not
    unload what Hearth counts on. A keep_alive someone chose is theirs."""
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        aliases = {"aliases": {"short": {"model": MODEL, "keep_alive": "10m"}}}
        hearth = live(settings_for(o, hold_models=True, extra=aliases))
        client = ollama.Client(host=hearth.url)
        client.chat(model=MODEL, messages=[{"role": "user", "content": "a"}])
        client.close()  # type: ignore[no-untyped-call]
        body = chat_body("b")
        r = httpx.post(hearth.url + "/api/chat", json={**body, "keep_alive": "5m"}, timeout=30)
        assert r.status_code == 200
        assert chat(hearth.url, "c", model="short").status_code == 200
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="unused", max_retries=0) as oa:
            oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "d"}])
        sent = [
            (body_of(r)["messages"][-1]["content"], body_of(r).get("keep_alive"))
            for r in o.requests_to("/api/chat")
        ]
        assert sent == [("a", -1), ("b", "5m"), ("c", "10m"), ("d", -1)]


def test_without_hold_models_the_servers_own_keep_alive_applies(live: Any) -> None:
    with FakeOllama(models=[MODEL], loaded=[MODEL]) as o:
        hearth = live(settings_for(o))
        assert chat(hearth.url, "a").status_code == 200
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="unused", max_retries=0) as oa:
            oa.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "b"}])
        assert ["keep_alive" in body_of(r) for r in o.requests_to("/api/chat")] == [False, False]


def test_the_scheduler_counts_on_the_keep_alive_each_call_carried(live: Any) -> None:
    """Home Assistant sends keep_alive -1, so Ollama keeps its model however long it idles: the
    scheduler must count it loaded, not gone after the server's default. The last call to a
    model decides, as in Ollama; an alias's keep_alive wins over the client's."""
    with FakeOllama(models=[MODEL, OTHER]) as o:
        aliases = {"aliases": {"voice-short": {"model": OTHER, "keep_alive": "10m"}}}
        hearth = live(settings_for(o, keep_alive=120, extra=aliases))

        def kept() -> dict[str, Any]:
            [backend] = queue(hearth)["backends"]
            return {m["model"]: m["keep_alive_s"] for m in backend["models"]}

        with ollama.Client(host=hearth.url) as client:
            say = [{"role": "user", "content": "turn on the lights"}]
            client.chat(model=MODEL, messages=say, keep_alive=-1, options={"num_predict": 2})
            client.chat(model=OTHER, messages=say, options={"num_predict": 2})
            assert kept() == {MODEL: -1, OTHER: 120.0}
            client.chat(model="voice-short", messages=say, keep_alive=-1, options={"num_predict": 2})
            client.chat(model=MODEL, messages=say, keep_alive="1h30m", options={"num_predict": 2})
            assert kept() == {MODEL: 5400.0, OTHER: 600.0}
            # A keep_alive Ollama could not read is the client's error, in Ollama's shape.
            with pytest.raises(ollama.ResponseError) as err:
                client.chat(model=MODEL, messages=say, keep_alive="soon")
        assert err.value.status_code == 400 and "keep_alive" in err.value.error
        assert len(o.requests_to("/api/chat")) == 4  # the bad one never reached the backend


def test_the_scheduler_reads_when_ollama_unloads_each_idle_model_from_api_ps(live: Any) -> None:
    """A server started with OLLAMA_KEEP_ALIVE=-1, or a client that talks to Ollama directly,
    keeps models longer than Hearth's configured keep_alive: /api/ps expires_at tells, and the
    admin queue shows what the scheduler now counts on."""
    with FakeOllama(models=[MODEL, OTHER]) as o:
        o.load(MODEL, keep_alive=-1)
        o.load(OTHER, keep_alive=3600)
        hearth = live(settings_for(o, keep_alive=120))
        hearth.refresh()
        [backend] = queue(hearth)["backends"]
        left = {m["model"]: m["unloads_in_s"] for m in backend["models"]}
        assert left[MODEL] == -1
        assert 3590 < left[OTHER] <= 3600
        # Used through Hearth, a model is counted on Hearth's own keep_alive again.
        assert chat(hearth.url, "a", model=OTHER).status_code == 200
        [backend] = queue(hearth)["backends"]
        left = {m["model"]: m["unloads_in_s"] for m in backend["models"]}
        assert left[MODEL] == -1 and 110 < left[OTHER] <= 120


@pytest.mark.parametrize(
    ("expires_at", "left"),
    [
        ("2026-12-07T22:00:10.123456789Z", 10.123),  # Go's RFC 3339 with nanoseconds
        ("2026-12-07T23:00:10+01:00", 10.0),
        ("2318-06-01T00:00:00Z", math.inf),  # keep_alive -1
        ("0001-01-01T00:00:00Z", -63_000_000_000.0),  # not set yet: the model is loading
        ("", None),
        ("soon", None),
    ],
)
def test_an_api_ps_expiry_reads_as_seconds_left(expires_at: str, left: float | None) -> None:
    now = datetime(2026, 12, 7, 22, 0, tzinfo=UTC).timestamp()
    got = seconds_left(expires_at, now)
    if left is None or math.isinf(left):
        assert got == left
    elif left < 0:
        assert got is not None and got < left
    else:
        assert got == pytest.approx(left, abs=1e-3)


# ---- preemption --------------------------------------------------------------------------------


def preempting(o: FakeOllama) -> Settings:
    """One backend that holds one model; a batch meal planner and an interactive voice tenant.
    Short horizon and session gap, so the meal call is sent again soon after the voice turn."""
    return settings_for(
        o,
        max_loaded_models=1,
        tenants={"meal": {"priority": "batch", "max_wait": 600}, "voice": {"max_wait": 30}},
        extra={"scheduler": {"horizon": 0.2, "session_gap": 0.2}},
    )


def traces_of(hearth: LiveHearth, tenant: str) -> list[dict[str, Any]]:
    def logged() -> list[dict[str, Any]]:
        r = httpx.get(hearth.url + "/admin/traces", params={"tenant": tenant})
        assert r.status_code == 200, r.text
        return r.json()["traces"]  # type: ignore[no-any-return]

    assert eventually(lambda: len(logged()) > 0)
    return logged()


def test_an_interactive_request_preempts_a_batch_call_that_does_not_stream_and_it_is_sent_again(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor, keyed: Callable[[LiveHearth, str], ollama.Client]
) -> None:
    with FakeOllama(models=[MODEL, OTHER], loaded=[OTHER]) as o:
        hearth = live(preempting(o))
        meal, voice = keyed(hearth, "meal"), keyed(hearth, "voice")
        o.hold()
        plan = bg.submit(
            meal.chat,
            model=OTHER,
            messages=[{"role": "user", "content": "plan meals"}],
            options={"num_predict": 3},
        )
        assert o.wait_in_flight(1)
        # The voice turn needs MODEL, which only fits once OTHER goes; the meal call would hold
        # OTHER for as long as it generates, and nothing says how long that is.
        turn = bg.submit(ask, voice, "lights on")
        assert o.wait_cancelled(1)  # Hearth closed the meal call's connection: Ollama stops
        o.release()
        assert turn.result(10).done
        reply = plan.result(10)
        assert reply.done and reply.message.content  # the meal planner only waited longer
        assert prompts_seen(o) == ["plan meals", "lights on", "plan meals"]
        unloads = [body_of(r)["model"] for r in o.requests_to("/api/generate")]
        assert unloads == [OTHER, MODEL]  # each switch unloaded the other model first
        assert metric(hearth, "hearth_preemptions_total", backend="o1") == 1
        assert metric(hearth, "hearth_model_loads_total", backend="o1") == 2
        # One call, one trace, and it succeeded: the stopped attempt is not a client hang-up.
        assert [t["status"] for t in traces_of(hearth, "meal")] == [200]


def test_a_batch_call_from_an_openai_client_is_read_whole_before_preemption_ends(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor, keyed: Callable[[LiveHearth, str], ollama.Client]
) -> None:
    """The OpenAI dialect on an Ollama backend is translated chunk by chunk: without a stream,
    the chunks are read here first, so the call can still be stopped and sent again."""
    with FakeOllama(models=[MODEL, OTHER], loaded=[OTHER]) as o:
        hearth = live(preempting(o))
        voice = keyed(hearth, "voice")
        o.hold()
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key=new_key(hearth, "meal"), max_retries=0) as oa:
            plan = bg.submit(
                oa.chat.completions.create,
                model=OTHER,
                messages=[{"role": "user", "content": "plan meals"}],
                max_tokens=3,
            )
            assert o.wait_in_flight(1)
            turn = bg.submit(ask, voice, "lights on")
            assert o.wait_cancelled(1)
            o.release()
            assert turn.result(10).done
            reply = plan.result(10)
        assert reply.choices[0].message.content
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        assert prompts_seen(o) == ["plan meals", "lights on", "plan meals"]
        assert metric(hearth, "hearth_preemptions_total", backend="o1") == 1


def test_a_batch_call_that_streams_is_never_preempted(
    live: Any, bg: concurrent.futures.ThreadPoolExecutor, keyed: Callable[[LiveHearth, str], ollama.Client]
) -> None:
    """Its client has tokens already: it cannot be sent again. The voice turn waits its bound."""
    with FakeOllama(models=[MODEL, OTHER], loaded=[OTHER]) as o:
        hearth = live(
            settings_for(
                o,
                max_loaded_models=1,
                tenants={"meal": {"priority": "batch", "max_wait": 600}, "voice": {"max_wait": 0.5}},
            )
        )
        meal, voice = keyed(hearth, "meal"), keyed(hearth, "voice")
        o.hold()
        plan = bg.submit(
            lambda: list(meal.chat(model=OTHER, messages=[{"role": "user", "content": "plan"}], stream=True))
        )
        assert o.wait_in_flight(1)
        with pytest.raises(ollama.ResponseError) as err:
            ask(voice, "lights on")
        assert err.value.status_code == 503
        assert o.cancelled == 0
        o.release()
        assert plan.result(10)[-1].done
        assert prompts_seen(o) == ["plan"]
        assert metric(hearth, "hearth_preemptions_total", backend="o1") == 0
