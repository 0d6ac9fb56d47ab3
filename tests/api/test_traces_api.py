"""The trace list, a trace and the overview over HTTP, through a live Hearth: admins see every
tenant's calls at /admin/traces, a tenant sees its own and its sub-tenants' at /api/traces and
nothing of anyone else's (another tenant's trace is "not found"), and a bad parameter is a 400
that names it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama

from hearth.gateway.auth import Authenticator
from hearth.settings import Settings
from hearth.store.db import Store
from hearth.store.schema import REQUEST_COLUMNS

ADMIN_KEY = "root-secret"
TENANTS: dict[str, Any] = {
    "webui": {"user_header": "X-OpenWebUI-User-Email"},
    "webui2": {},  # "webui" is a prefix of its name, yet it is not a sub-tenant
    "family": {},
    "ops": {"admin": True},
}
# Names in the log, cycled through the calls.
CALLERS = ["webui/alice", "family", "webui", "webui2", "webui/bob", "ops", None]


def make_rows(t0: float, n: int = 60) -> list[dict[str, Any]]:
    """Calls 47 s apart, the newest 5 s before ``t0``: none near the 60 s and 300 s edges."""
    rows = []
    for i in range(n):
        status = [200, 200, 200, 500, 200, 429][i % 6]
        model, served = [("llama3.1:8b", "llama3.1:8b"), ("assistant", "llama3.1:8b"), ("phi4", "phi4")][
            i % 3
        ]
        rows.append(
            {
                "ts": t0 - 5 - 47 * i,
                "dialect": "ollama",
                "endpoint": "chat",
                "model": model,
                "served_model": None if status == 429 else served,
                "backend": None if status == 429 else ["local", "cloud"][i % 2],
                "status": status,
                "stream": False,
                "attempts": 1,
                "duration_ms": 100.0 * i,
                "ttft_ms": None,
                "prompt_tokens": 10 if status == 200 else None,
                "completion_tokens": i if status == 200 else None,
                "error": "boom" if status == 500 else None,
                "tenant": CALLERS[i % len(CALLERS)],
                "key_id": None,
                "queue_wait_ms": 0.0,
                "tokens_estimated": False,
                "load_ms": None,
                "content_id": None,
            }
        )
    return rows


class Env:
    def __init__(self, hearth: LiveHearth, settings: Settings, rows: list[dict[str, Any]], t0: float) -> None:
        self.url = hearth.url
        self.rows = rows  # newest first, with their ids
        self.t0 = t0
        self.keys: dict[str, str] = {}
        store = Store(settings.store_url)
        try:
            store.insert_requests([tuple(r[c] for c in REQUEST_COLUMNS) for r in reversed(rows)])
            ids = [r["id"] for r in store.recent_requests(len(rows))]
            auth = Authenticator(settings, store)
            for tenant in ("webui", "family", "ops"):
                self.keys[tenant] = auth.create_key(tenant)[1]
        finally:
            store.close()
        for r, i in zip(rows, ids, strict=True):
            r["id"] = i

    def get(self, path: str, who: str | None = "admin", **params: Any) -> httpx.Response:
        headers = {}
        if who is not None:
            key = ADMIN_KEY if who == "admin" else self.keys[who]
            headers["Authorization"] = f"Bearer {key}"
        return httpx.get(self.url + path, params=params, headers=headers)

    def ids(self, path: str, who: str = "admin", **params: Any) -> list[int]:
        """Every id of a list, page by page (limit 7) through the cursor."""
        out: list[int] = []
        before = None
        while True:
            extra = {} if before is None else {"before": before}
            r = self.get(path, who, limit=7, **params, **extra)
            assert r.status_code == 200, r.text
            body = r.json()
            out += [t["id"] for t in body["traces"]]
            before = body["next"]
            if before is None:
                return out

    def where(self, keep: Any) -> list[int]:
        return [r["id"] for r in self.rows if keep(r)]


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with FakeOllama(models=["llama3.1:8b"]) as local:
        settings = make_settings(
            [{"name": "local", "kind": "ollama", "url": local.url}],
            auth={"trusted_networks": {}},
            server={"admin_key": ADMIN_KEY},
            tenants=TENANTS,
        )
        with LiveHearth(settings) as hearth:
            t0 = time.time()
            yield Env(hearth, settings, make_rows(t0), t0)


def webui_or_below(r: dict[str, Any]) -> bool:
    return r["tenant"] is not None and (r["tenant"] == "webui" or r["tenant"].startswith("webui/"))


def test_admins_list_every_call_newest_first_page_by_page(env: Env) -> None:
    assert env.ids("/admin/traces") == [r["id"] for r in env.rows]
    first = env.get("/admin/traces").json()
    assert len(first["traces"]) == 50 and first["next"] == env.rows[49]["id"]  # 50 a page unless asked
    newest = first["traces"][0]
    assert newest == {**env.rows[0], "ts": pytest.approx(env.rows[0]["ts"])}


def settled(fetch: Any, expect: Any) -> tuple[Any, Any]:
    """(what ``fetch()`` returned, what ``expect(now)`` says it should be), from an attempt
    during which no call crossed the edge of a relative time window ("15m ago" moves)."""
    for _ in range(3):
        before = expect(time.time())
        got = fetch()
        if expect(time.time()) == before:
            return got, before
    raise AssertionError("the clock kept crossing a window's edge")


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({"tenant": "webui"}, lambda r, now: webui_or_below(r)),
        ({"tenant": "webui", "subtenants": "0"}, lambda r, now: r["tenant"] == "webui"),
        ({"tenant": "webui/alice"}, lambda r, now: r["tenant"] == "webui/alice"),
        ({"model": "llama3.1:8b"}, lambda r, now: "llama3.1:8b" in (r["model"], r["served_model"])),
        ({"model": "assistant"}, lambda r, now: r["model"] == "assistant"),
        ({"backend": "cloud"}, lambda r, now: r["backend"] == "cloud"),
        ({"status": "429"}, lambda r, now: r["status"] == 429),
        ({"errors": "1"}, lambda r, now: r["status"] >= 400),
        (
            {"errors": "true", "tenant": "family"},
            lambda r, now: r["status"] >= 400 and r["tenant"] == "family",
        ),
        ({"min_ms": "2500"}, lambda r, now: r["duration_ms"] >= 2500),
        ({"since": "20m"}, lambda r, now: r["ts"] >= now - 1200),
        ({"since": "1h", "until": "10m"}, lambda r, now: now - 3600 <= r["ts"] < now - 600),
        ({"since": "45m", "until": "0.25h"}, lambda r, now: now - 2700 <= r["ts"] < now - 900),
    ],
)
def test_admins_filter_with_query_parameters(env: Env, params: dict[str, str], keep: Any) -> None:
    got, want = settled(
        lambda: env.ids("/admin/traces", **params), lambda now: env.where(lambda r: keep(r, now))
    )
    assert want  # each case keeps something...
    assert len(want) < len(env.rows)  # ...and leaves something out
    assert got == want


def test_since_and_until_take_epoch_seconds_too(env: Env) -> None:
    since, until = env.t0 - 1000, env.t0 - 200
    want = env.where(lambda r: since <= r["ts"] < until)
    assert env.ids("/admin/traces", since=str(since), until=str(until)) == want


def test_a_tenant_sees_only_its_own_calls_and_its_sub_tenants(env: Env) -> None:
    mine = env.where(webui_or_below)
    assert env.ids("/api/traces", "webui") == mine
    assert env.ids("/api/traces", "webui", tenant="webui/bob") == env.where(
        lambda r: r["tenant"] == "webui/bob"
    )
    assert env.ids("/api/traces", "webui", tenant="webui", subtenants="0") == env.where(
        lambda r: r["tenant"] == "webui"
    )
    assert env.ids("/api/traces", "webui", errors="1") == env.where(
        lambda r: webui_or_below(r) and r["status"] >= 400
    )
    for other in ("family", "webui2", "ops"):  # asking for someone else's calls finds nothing
        assert env.get("/api/traces", "webui", tenant=other).json() == {"traces": [], "next": None}
    assert env.ids("/api/traces", "family") == env.where(lambda r: r["tenant"] == "family")
    # An admin tenant's own list is its own too: everyone's is at /admin/traces.
    assert env.ids("/api/traces", "ops") == env.where(lambda r: r["tenant"] == "ops")


def test_another_tenants_trace_is_not_found_not_forbidden(env: Env) -> None:
    alice = next(r for r in env.rows if r["tenant"] == "webui/alice")
    family = next(r for r in env.rows if r["tenant"] == "family")
    anonymous = next(r for r in env.rows if r["tenant"] is None)
    got = env.get(f"/api/traces/{alice['id']}", "webui")
    assert got.status_code == 200 and got.json()["id"] == alice["id"]
    for row in (family, anonymous):
        r = env.get(f"/api/traces/{row['id']}", "webui")
        assert (r.status_code, r.json()) == (404, {"error": "no such trace"})
    assert env.get(f"/api/traces/{alice['id']}", "family").status_code == 404
    assert env.get(f"/admin/traces/{family['id']}").json()["tenant"] == "family"
    missing = env.get("/admin/traces/999999")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("limit", "0"),
        ("limit", "ten"),
        ("limit", "²"),
        ("before", "-3"),
        ("before", "9" * 30),
        ("status", "abc"),
        ("status", "99"),
        ("errors", "maybe"),
        ("subtenants", "2"),
        ("since", "last tuesday"),
        ("until", "nan"),
        ("min_ms", "-5"),
        ("min_ms", "fast"),
        ("tenant", "x" * 200),
    ],
)
def test_a_bad_parameter_is_a_400_that_names_it(env: Env, name: str, value: str) -> None:
    r = env.get("/admin/traces", **{name: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]  # OpenAI's shape, like the rest of /admin
    assert (error["param"], error["type"]) == (name, "invalid_request_error")
    assert error["message"].startswith(name + ":")
    r = env.get("/api/traces", "webui", **{name: value})
    assert r.status_code == 400, r.text
    assert r.json()["error"].startswith(name + ":")  # Ollama's shape, like the rest of /api


def test_a_bad_trace_id_is_a_400(env: Env) -> None:
    assert env.get("/admin/traces/abc").json()["error"]["param"] == "id"
    assert env.get("/api/traces/-1", "webui").status_code == 400
    assert env.get("/admin/traces/" + "9" * 30).json()["error"]["param"] == "id"


def test_a_large_limit_is_capped_at_500(env: Env) -> None:
    r = env.get("/admin/traces", limit=10_000)
    assert (len(r.json()["traces"]), r.json()["next"]) == (len(env.rows), None)


def test_the_admin_routes_need_an_admin_and_the_tenant_routes_a_key(env: Env) -> None:
    for path in ("/admin/traces", f"/admin/traces/{env.rows[0]['id']}", "/admin/overview"):
        assert env.get(path, None).status_code == 401
        assert env.get(path, "webui").status_code == 403
        assert env.get(path, "ops").status_code == 200  # an admin tenant
        assert env.get(path).status_code == 200  # the server's admin key
    assert env.get("/api/traces", None).status_code == 401
    assert env.get(f"/api/traces/{env.rows[0]['id']}", None).status_code == 401


def test_the_overview_shows_rates_today_backends_and_queues(env: Env) -> None:
    since = env.t0 - 1800

    def failed(r: dict[str, Any]) -> bool:
        return bool(r["status"] >= 400 or r["error"])

    def windows(now: float) -> tuple[int, ...]:
        last = [[r for r in env.rows if r["ts"] >= now - seconds] for seconds in (60, 300)]
        return tuple(x for rows in last for x in (len(rows), sum(map(failed, rows))))

    response, (n1, e1, n5, e5) = settled(lambda: env.get("/admin/overview", since=str(since)), windows)
    body = response.json()
    assert n1 >= 1 and n5 > n1 and e5 >= 1  # a call 5 s before the tests began, one error 240 s
    assert body["last_minute"] == {
        "requests": n1,
        "errors": e1,
        "requests_per_s": n1 / 60,
        "error_rate": e1 / n1,
    }
    assert body["last_5_minutes"] == {
        "requests": n5,
        "errors": e5,
        "requests_per_s": n5 / 300,
        "error_rate": e5 / n5,
    }
    today = [r for r in env.rows if r["ts"] >= since]
    tokens = sum((r["prompt_tokens"] or 0) + (r["completion_tokens"] or 0) for r in today)
    assert body["today"]["since"] == since
    assert (body["today"]["requests"], body["today"]["tokens"]) == (len(today), tokens)
    served = {m["model"]: m["requests"] for m in body["models_today"]}
    assert served["llama3.1:8b"] == sum(r["served_model"] == "llama3.1:8b" for r in today)
    assert [b["name"] for b in body["backends"]] == ["local"]
    assert body["backends"][0]["up"] is True
    assert body["queue"] == {}
    assert env.get("/admin/overview", since="someday").json()["error"]["param"] == "since"


def test_calls_still_in_the_logs_batch_are_listed(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as local:
        settings = make_settings(
            [{"name": "local", "kind": "ollama", "url": local.url}],
            store={"flush_interval": 3600},  # rows reach the store only when something flushes
        )
        hearth = live(settings)
        body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
        httpx.post(hearth.url + "/api/chat", json=body).raise_for_status()
        mine = httpx.get(hearth.url + "/api/traces").json()["traces"]  # loopback: tenant "tests"
        assert [(t["tenant"], t["model"], t["backend"], t["status"]) for t in mine] == [
            ("tests", "llama3.1:8b", "local", 200)
        ]
        everyone = httpx.get(hearth.url + "/admin/traces").json()["traces"]
        assert [t["id"] for t in everyone] == [mine[0]["id"]]
        trace = httpx.get(hearth.url + f"/api/traces/{mine[0]['id']}").json()
        assert trace["prompt_tokens"] is not None
