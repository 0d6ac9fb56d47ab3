"""Usage over time: calls summed per hour or day and per tenant or model, priced like `hearth
usage` (cloud cost, what local calls would have cost in the cloud, electricity), alike on SQLite
and PostgreSQL; a tenant sees only itself and its sub-tenants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, count_words, plan_chat

from hearth.store.db import Store
from hearth.store.schema import REQUEST_COLUMNS

HOUR, DAY = 3600.0, 86400.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z: a day, and so an hour, boundary
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "gpt-4o": {"input": 2.50, "output": 10.00}}
WATTS, PER_KWH = 360.0, 0.25
TENANTS: dict[str, Any] = {"family": {}, "fam": {}, "ops": {"admin": True}}
ADMIN_KEY = "test-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def row(ts: float, tenant: str | None, tokens: tuple[int, int], **more: Any) -> tuple[Any, ...]:
    """A request-log tuple in REQUEST_COLUMNS order (columns not named here are NULL)."""
    values: dict[str, Any] = {
        "ts": ts,
        "dialect": "ollama",
        "endpoint": "chat",
        "model": "llama3.1:8b",
        "served_model": "llama3.1:8b",
        "backend": "local",
        "status": 200,
        "stream": False,
        "attempts": 1,
        "duration_ms": 1000.0,
        "prompt_tokens": tokens[0],
        "completion_tokens": tokens[1],
        "tenant": tenant,
        "queue_wait_ms": 0.0,
        "tokens_estimated": False,
        **more,
    }
    return tuple(values.get(c) for c in REQUEST_COLUMNS)


# Three hours of calls on 2026-01-01 and one on the 2nd.
ROWS = [
    row(T0 + 10, "family", (100, 200)),
    row(T0 + 3599, "family/alice", (10, 20), duration_ms=2000.0, queue_wait_ms=500.0),
    row(T0 + 600, "fam", (1, 2), status=500, error="boom"),
    row(T0 + HOUR, "family", (1000, 0), backend="cloud", served_model="gpt-4o-mini", model="gpt-4o-mini"),
    row(T0 + 2 * HOUR + 5, "family", (7, 7), tokens_estimated=True),
    row(T0 + DAY + 1, "fam", (50, 50)),
    row(T0 - 1, "family", (9, 9)),  # the hour before: outside every window below
]


def cloud(tokens: tuple[int, int]) -> float:
    return (tokens[0] * PRICES["gpt-4o-mini"]["input"] + tokens[1] * PRICES["gpt-4o-mini"]["output"]) / 1e6


def equivalent(tokens: tuple[int, int]) -> float:
    return (tokens[0] * PRICES["gpt-4o"]["input"] + tokens[1] * PRICES["gpt-4o"]["output"]) / 1e6


def energy(busy_ms: float) -> float:
    return busy_ms / 1000 * WATTS / 3.6e6 * PER_KWH


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hearth.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def settings_for(fake: FakeOllama, store_url: str) -> Any:
    return make_settings(
        [
            {"name": "local", "kind": "ollama", "url": fake.url},
            {"name": "cloud", "kind": "openai", "url": "http://127.0.0.1:9/v1", "cloud": True},
        ],
        auth={"trusted_networks": {}},
        tenants=TENANTS,
        store={"url": store_url, "flush_interval": 3600},
        server={"admin_key": ADMIN_KEY},
        pricing={
            "prices": PRICES,
            "local_equivalent": "gpt-4o",
            "energy": {"watts": WATTS, "price_per_kwh": PER_KWH},
        },
    )


@pytest.fixture
def hearth(store_url: str) -> Iterator[LiveHearth]:
    with FakeOllama(models=["llama3.1:8b"]) as fake, LiveHearth(settings_for(fake, store_url)) as h:
        store = Store(store_url)  # another process writing the same log
        try:
            store.insert_requests(ROWS)
        finally:
            store.close()
        yield h


def key(h: LiveHearth, tenant: str) -> dict[str, str]:
    """A new key of ``tenant``, made through this server's admin API: usable at once (made by
    another process, PostgreSQL would deliver it a few milliseconds later)."""
    made = httpx.post(h.url + "/admin/keys", json={"tenant": tenant}, headers=ADMIN)
    assert made.status_code == 201
    return {"Authorization": f"Bearer {made.json()['key']}"}


def test_the_store_sums_calls_per_hour_group_and_backend_alike_on_both_databases(store_url: str) -> None:
    store = Store(store_url)
    store.migrate()
    try:
        store.insert_requests(ROWS[:3])
        store.insert_requests(ROWS[3:])  # a second batch adds to the same hours
        got = store.usage_series(T0, T0 + 3 * HOUR, 3600, "tenant")
        fam = store.usage_series(T0, T0 + 3 * HOUR, 3600, "model", tenant="fam")
        priced = store.usage_series(T0, T0 + 3 * HOUR, 3600, "model", cloud=["cloud", "elsewhere"])
    finally:
        store.close()
    key = [(r["start"], r["group"], r["backend"], r["served_model"]) for r in got]
    assert key == sorted(key, key=lambda k: k[0])
    by = {(r["start"], r["group"], r["backend"]): r for r in got}
    assert set(by) == {
        (T0, "family", "local"),
        (T0, "family/alice", "local"),
        (T0, "fam", "local"),
        (T0 + HOUR, "family", "cloud"),
        (T0 + 2 * HOUR, "family", "local"),
    }
    alice = by[(T0, "family/alice", "local")]
    assert (alice["requests"], alice["prompt_tokens"], alice["completion_tokens"]) == (1, 10, 20)
    assert alice["busy_s"] == pytest.approx(1.5)
    assert by[(T0, "fam", "local")]["errors"] == 1
    assert by[(T0 + 2 * HOUR, "family", "local")]["estimated"] == 1
    assert [(r["start"], r["group"], r["requests"]) for r in fam] == [(T0, "llama3.1:8b", 1)]
    # For pricing, local calls are one part whatever their backend; cloud ones keep theirs.
    assert [(r["start"], r["backend"], r["served_model"], r["requests"]) for r in priced] == [
        (T0, "*", None, 3),
        (T0 + HOUR, "cloud", "gpt-4o-mini", 1),
        (T0 + 2 * HOUR, "*", None, 1),
    ]


def test_the_migration_fills_the_hourly_sums_from_the_log_already_there(store_url: str) -> None:
    store = Store(store_url)
    try:
        store.migrate("0007")
        # Rows written before 0008, without the sums, in the columns of 0007 (load_ms came later).
        columns = [c for c in REQUEST_COLUMNS if c != "load_ms"]
        old_rows = [tuple(v for c, v in zip(REQUEST_COLUMNS, r, strict=True) if c != "load_ms") for r in ROWS]
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                f"INSERT INTO requests ({', '.join(columns)}) "
                f"VALUES ({', '.join(['%s' if store.is_postgres else '?'] * len(columns))})",
                old_rows,
            )
        store.migrate()
        before = store.usage_series(T0 - DAY, T0 + 2 * DAY, 86400, "model")
        store.insert_requests([row(T0 + 5, "family", (1, 1))])
        after = store.usage_series(T0 - DAY, T0 + 2 * DAY, 86400, "model")
    finally:
        store.close()
    assert [(r["start"], r["backend"], r["requests"], r["prompt_tokens"]) for r in before] == [
        (T0 - DAY, "local", 1, 9),
        (T0, "cloud", 1, 1000),
        (T0, "local", 4, 118),
        (T0 + DAY, "local", 1, 50),
    ]
    assert [(r["start"], r["backend"], r["requests"]) for r in after][2] == (T0, "local", 5)


def test_admins_get_hourly_buckets_per_tenant_with_their_costs(hearth: LiveHearth) -> None:
    r = httpx.get(
        hearth.url + "/admin/usage/series",
        params={"since": "2026-01-01T00:30:00", "until": "2026-01-01T02:10:00", "bucket": "1h"},
        headers=key(hearth, "ops"),
    )
    assert r.status_code == 200
    rep = r.json()
    # since moves back to its hour; until's hour counts whole.
    assert (rep["since"], rep["until"], rep["bucket"], rep["by"]) == (T0, T0 + 2 * HOUR + 600, 3600, "tenant")
    assert rep["buckets"] == [T0, T0 + HOUR, T0 + 2 * HOUR]
    assert rep["groups"] == ["family", "fam", "family/alice"]
    points = {(p["start"], p["group"]): p for p in rep["series"]}
    assert list(points) == [
        (T0, "family"),
        (T0, "fam"),
        (T0, "family/alice"),
        (T0 + HOUR, "family"),
        (T0 + 2 * HOUR, "family"),
    ]
    first = points[(T0, "family")]
    assert (first["requests"], first["errors"], first["tokens"]) == (1, 0, 300)
    assert first["local_equivalent_cost"] == pytest.approx(equivalent((100, 200)))
    assert first["energy_cost"] == pytest.approx(energy(1000.0))
    assert first["cloud_cost"] == 0
    assert points[(T0, "family/alice")]["energy_cost"] == pytest.approx(energy(1500.0))
    assert points[(T0, "fam")]["errors"] == 1
    in_cloud = points[(T0 + HOUR, "family")]
    assert in_cloud["cloud_cost"] == pytest.approx(cloud((1000, 0)))
    assert in_cloud["local_equivalent_cost"] == in_cloud["energy_cost"] == 0
    assert points[(T0 + 2 * HOUR, "family")]["estimated"] == 1
    totals = {t["group"]: t for t in rep["totals"]}
    assert totals["family"]["requests"] == 3
    assert totals["family"]["cloud_cost"] == pytest.approx(cloud((1000, 0)))
    assert rep["total"]["requests"] == 5
    assert rep["total"]["local_equivalent_cost"] == pytest.approx(
        equivalent((100 + 10 + 1 + 7, 200 + 20 + 2 + 7))
    )
    assert rep["unpriced"] == []


def test_daily_buckets_per_model_and_one_tenant_with_its_sub_tenants(hearth: LiveHearth) -> None:
    admin = key(hearth, "ops")
    params = {"since": "2026-01-01", "until": "2026-01-03", "bucket": "1d", "by": "model"}
    rep = httpx.get(hearth.url + "/admin/usage/series", params=params, headers=admin).json()
    assert rep["buckets"] == [T0, T0 + DAY]
    assert [(p["start"], p["group"], p["requests"]) for p in rep["series"]] == [
        (T0, "llama3.1:8b", 4),
        (T0, "gpt-4o-mini", 1),
        (T0 + DAY, "llama3.1:8b", 1),
    ]
    one = httpx.get(
        hearth.url + "/admin/usage/series", params={**params, "tenant": "family"}, headers=admin
    ).json()
    assert one["tenant"] == "family"
    assert [(p["start"], p["group"], p["requests"]) for p in one["series"]] == [
        (T0, "llama3.1:8b", 3),
        (T0, "gpt-4o-mini", 1),
    ]


def test_a_tenant_sees_only_its_own_series(hearth: LiveHearth) -> None:
    params = {"since": "2026-01-01", "until": "2026-01-03", "bucket": "1d", "by": "tenant"}
    family = httpx.get(hearth.url + "/api/usage/series", params=params, headers=key(hearth, "family")).json()
    assert family["tenant"] == "family"
    assert family["groups"] == ["family", "family/alice"]
    fam = httpx.get(hearth.url + "/api/usage/series", params=params, headers=key(hearth, "fam")).json()
    assert fam["groups"] == ["fam"]  # a prefix of "family", never its calls
    assert [(p["start"], p["requests"]) for p in fam["series"]] == [(T0, 1), (T0 + DAY, 1)]
    assert httpx.get(hearth.url + "/api/usage/series", params=params).status_code == 401


def test_calls_through_hearth_show_in_the_running_hour(hearth: LiveHearth) -> None:
    family = key(hearth, "family")
    with ollama.Client(host=hearth.url, headers=family) as client:
        client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "count these words"}])
    rep = httpx.get(hearth.url + "/api/usage/series", params={"since": "1h"}, headers=family).json()
    (point,) = rep["series"]
    assert point["start"] == rep["buckets"][-1]
    assert point["group"] == "llama3.1:8b"
    messages = [{"role": "user", "content": "count these words"}]
    expected = (count_words(["count these words"]), len(plan_chat(messages).pieces))
    assert (point["requests"], point["prompt_tokens"], point["completion_tokens"]) == (1, *expected)


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"bucket": "15m"}, "whole hours or days"),
        ({"since": "365d", "bucket": "1h"}, "at most 1000"),
        ({"by": "colour"}, "by: expected one of"),
        ({"since": "1d", "until": "2d"}, "before until"),
        ({"until": "someday"}, "since: expected a span"),
    ],
)
def test_bad_series_parameters_are_a_400(hearth: LiveHearth, params: dict[str, str], words: str) -> None:
    admin = httpx.get(hearth.url + "/admin/usage/series", params=params, headers=key(hearth, "ops"))
    assert admin.status_code == 400
    assert words in admin.json()["error"]["message"]
    mine = httpx.get(hearth.url + "/api/usage/series", params=params, headers=key(hearth, "family"))
    assert mine.status_code == 400
    assert words in mine.json()["error"]  # the Ollama error shape
