"""Usage and cost: every call is recorded with the backend's token counts (or an estimate, marked
as one, when the backend reports none), `hearth usage` and `/api/usage` price them, and a tenant
only ever sees its own usage."""

from __future__ import annotations

import math
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import ollama
import openai
import pytest
import sqlalchemy as sa
import yaml
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI, count_words, plan_chat, plan_completion

from hearth.cli import main
from hearth.errors import ConfigError
from hearth.gateway.records import records_estimate, reply_chars
from hearth.gateway.usage import parse_since
from hearth.settings import Settings, load_settings
from hearth.store.db import MIGRATIONS, Store
from hearth.store.schema import REQUEST_COLUMNS, requests

DAY = 86400.0
PRICES = {"gpt-4o-mini": {"input": 0.15, "output": 0.60}, "gpt-4o": {"input": 2.50, "output": 10.00}}
EQUIVALENT = "gpt-4o"
WATTS, PER_KWH = 300.0, 0.30
TENANTS: dict[str, Any] = {
    "family": {},
    "fam": {},  # a prefix of "family": must never see family's usage
    "webui": {"user_header": "X-OpenWebUI-User-Email"},
    "ops": {"admin": True},
}
JSON = {"content-type": "application/json"}


@dataclass
class Env:
    hearth: LiveHearth
    settings: Settings
    config: Path
    local: FakeOllama
    cloud: FakeOpenAI

    @property
    def url(self) -> str:
        return self.hearth.url

    @property
    def db(self) -> Path:
        return self.settings.data_path / "hearth.db"

    def stop(self) -> None:
        """Graceful shutdown: the request log writes everything it holds."""
        self.hearth.__exit__(None, None, None)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    with (
        FakeOllama(models=["llama3.1:8b", "nomic-embed-text"]) as local,
        FakeOpenAI(models=["gpt-4o-mini", "gpt-x"]) as cloud,
    ):
        settings = make_settings(
            [
                {"name": "local", "kind": "ollama", "url": local.url},
                {"name": "cloud", "kind": "openai", "url": cloud.url + "/v1", "cloud": True},
            ],
            auth={"trusted_networks": {}},
            tenants=TENANTS,
            aliases={"assistant": "llama3.1:8b"},
            store={"flush_interval": 3600},  # rows reach the store only when something flushes
            pricing={
                "prices": PRICES,
                "local_equivalent": EQUIVALENT,
                "energy": {"watts": WATTS, "price_per_kwh": PER_KWH},
            },
        )
        # The same settings as a file, for the CLI (another process, in real life).
        config = tmp_path / "hearth.yaml"
        config.write_text(yaml.safe_dump(msgspec.to_builtins(settings)))
        hearth = LiveHearth(settings)
        with hearth:
            yield Env(hearth, settings, config, local, cloud)


def cli(env: Env, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--config", str(env.config)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def new_key(env: Env, tenant: str) -> str:
    return cli(env, "keys", "create", "--tenant", tenant).strip()


def usage_json(env: Env, *args: str) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(cli(env, "usage", "--json", *args))
    return out


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rows(db: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        con.close()


def msg(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def chat_tokens(text: str) -> tuple[int, int]:
    """(prompt, completion) tokens the fakes report for a one-message chat."""
    return count_words([text]), len(plan_chat(msg(text)).pieces)


def cost(tokens: tuple[int, int], model: str) -> float:
    return (tokens[0] * PRICES[model]["input"] + tokens[1] * PRICES[model]["output"]) / 1e6


def energy(duration_ms: float) -> float:
    return duration_ms / 1000 * WATTS / 3.6e6 * PER_KWH


def by_group(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["group"]: g for g in report["groups"]}


def test_every_call_is_recorded_with_the_backends_counts_and_priced(env: Env) -> None:
    key = new_key(env, "family")
    texts = {
        "llama3.1:8b": "how are you today",
        "assistant": "tell me a story about a fox",
        "gpt-4o-mini": "what is the weather like",
        "gpt-4o-mini/stream": "and tomorrow",
        "gpt-x": "hello there cloud",
    }
    with (
        ollama.Client(host=env.url, headers=bearer(key)) as oc,
        openai.OpenAI(base_url=env.url + "/v1", api_key=key, max_retries=0) as oa,
    ):
        oc.chat(model="llama3.1:8b", messages=msg(texts["llama3.1:8b"]), stream=False)
        list(oc.chat(model="assistant", messages=msg(texts["assistant"]), stream=True))
        oa.chat.completions.create(model="gpt-4o-mini", messages=msg(texts["gpt-4o-mini"]))  # type: ignore[arg-type]
        list(
            oa.chat.completions.create(
                model="gpt-4o-mini",
                messages=msg(texts["gpt-4o-mini/stream"]),  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        oc.chat(model="gpt-x", messages=msg(texts["gpt-x"]), stream=False)  # translated, no price
    kid = key.split("_")[1]
    env.stop()

    got = rows(env.db)
    assert [(r["model"], r["served_model"], r["backend"], r["stream"]) for r in got] == [
        ("llama3.1:8b", "llama3.1:8b", "local", 0),
        ("assistant", "llama3.1:8b", "local", 1),
        ("gpt-4o-mini", "gpt-4o-mini", "cloud", 0),
        ("gpt-4o-mini", "gpt-4o-mini", "cloud", 1),
        ("gpt-x", "gpt-x", "cloud", 0),
    ]
    for r, text in zip(got, texts.values(), strict=True):
        assert (r["prompt_tokens"], r["completion_tokens"]) == chat_tokens(text)
        assert r["tokens_estimated"] == 0
        assert r["queue_wait_ms"] == 0.0
        assert (r["tenant"], r["key_id"], r["status"], r["error"]) == ("family", kid, 200, None)
        assert r["duration_ms"] >= r["ttft_ms"] > 0

    report = usage_json(env, "--by", "model")
    groups = by_group(report)
    assert list(groups) == ["gpt-4o-mini", "assistant", "gpt-x", "llama3.1:8b"]  # busiest first
    mini = groups["gpt-4o-mini"]
    one, two = chat_tokens(texts["gpt-4o-mini"]), chat_tokens(texts["gpt-4o-mini/stream"])
    mini_tokens = (one[0] + two[0], one[1] + two[1])
    assert (mini["requests"], mini["errors"], mini["estimated"]) == (2, 0, 0)
    assert (mini["prompt_tokens"], mini["completion_tokens"]) == mini_tokens
    assert mini["cloud_cost"] == pytest.approx(cost(mini_tokens, "gpt-4o-mini"))
    assert mini["local_equivalent_cost"] == mini["energy_cost"] == 0
    for model, row in zip(["llama3.1:8b", "assistant"], got[:2], strict=True):
        g = groups[model]
        tokens = chat_tokens(texts[model])
        assert (g["requests"], g["prompt_tokens"], g["completion_tokens"]) == (1, *tokens)
        assert g["cloud_cost"] == 0
        assert g["local_equivalent_cost"] == pytest.approx(cost(tokens, EQUIVALENT))
        assert g["energy_cost"] == pytest.approx(energy(row["duration_ms"]))
        assert g["busy_s"] == pytest.approx(row["duration_ms"] / 1000)
        assert g["mean_duration_ms"] == pytest.approx(row["duration_ms"])
    # A cloud model without a price costs nothing and is named as such.
    assert groups["gpt-x"]["cloud_cost"] == 0
    assert groups["gpt-x"]["unpriced"] == ["gpt-x"]
    total = report["total"]
    assert total["requests"] == 5
    assert total["prompt_tokens"] == sum(r["prompt_tokens"] for r in got)
    assert total["completion_tokens"] == sum(r["completion_tokens"] for r in got)
    assert total["cloud_cost"] == pytest.approx(mini["cloud_cost"])
    assert total["energy_cost"] == pytest.approx(energy(got[0]["duration_ms"] + got[1]["duration_ms"]))

    # The table: one aligned line per group, then the totals.
    out = cli(env, "usage", "--by", "model").splitlines()
    assert out[0].startswith("since ")
    header, rule, *body, rule2, last, note = out[1:]
    assert header.split() == [
        "model",
        "requests",
        "errors",
        "prompt",
        "tok",
        "completion",
        "tok",
        "est.%",
        "cloud",
        "cost",
        "equiv.",
        "cloud",
        "cost",
        "(local)",
        "energy",
        "cost",
    ]
    assert rule == rule2
    assert len({len(line) for line in [header, rule, *body, last]}) == 1
    assert [line.split()[:3] for line in body] == [
        ["gpt-4o-mini", "2", "0"],
        ["assistant", "1", "0"],
        ["gpt-x", "1", "0"],
        ["llama3.1:8b", "1", "0"],
    ]
    cells = last.split()
    assert cells[:5] == ["total", "5", "0", str(total["prompt_tokens"]), str(total["completion_tokens"])]
    assert cells[5:7] == ["0.0", f"{total['cloud_cost']:.4f}"]
    assert note == "no price for cloud models (counted as 0): gpt-x"


def test_estimates_only_when_the_backend_reports_no_counts(env: Env) -> None:
    key = new_key(env, "family")
    headers = {**bearer(key), **JSON}
    chat = msg("count my words please")
    pieces = len(plan_chat(chat).pieces)
    # An OpenAI stream whose client did not ask for usage: the backend reports none.
    no_usage = msgspec.json.encode({"model": "gpt-4o-mini", "messages": chat, "stream": True})
    with_usage = msgspec.json.encode(
        {"model": "gpt-4o-mini", "messages": chat, "stream": True, "stream_options": {"include_usage": True}}
    )
    completion = msgspec.json.encode({"model": "gpt-4o-mini", "prompt": "say it twice", "stream": True})
    # Ollama's legacy /api/embeddings reports no counts either; /api/embed does.
    legacy = msgspec.json.encode({"model": "nomic-embed-text", "prompt": "embed me please"})
    embed = msgspec.json.encode({"model": "nomic-embed-text", "input": "embed me please"})
    for path, body in [
        ("/v1/chat/completions", no_usage),
        ("/v1/chat/completions", with_usage),
        ("/v1/completions", completion),
        ("/api/embeddings", legacy),
        ("/api/embed", embed),
        ("/v1/chat/completions", msgspec.json.encode({"model": "nope", "messages": chat})),
    ]:
        httpx.post(env.url + path, content=body, headers=headers)
    metrics = httpx.get(env.url + "/metrics").text
    env.stop()

    got = rows(env.db)
    assert [(r["endpoint"], r["status"], bool(r["tokens_estimated"])) for r in got] == [
        ("chat", 200, True),
        ("chat", 200, False),
        ("completion", 200, True),
        ("embed", 200, True),
        ("embed", 200, False),
        ("chat", 404, False),
    ]
    # prompt: request bytes / 4 rounded up; completion: one token a streamed record less the
    # records without text (role, finish, [DONE] for chat; finish, [DONE] for completions).
    assert (got[0]["prompt_tokens"], got[0]["completion_tokens"]) == (math.ceil(len(no_usage) / 4), pieces)
    assert (got[1]["prompt_tokens"], got[1]["completion_tokens"]) == chat_tokens("count my words please")
    assert (got[2]["prompt_tokens"], got[2]["completion_tokens"]) == (
        math.ceil(len(completion) / 4),
        len(plan_completion("say it twice").pieces),
    )
    assert (got[3]["prompt_tokens"], got[3]["completion_tokens"]) == (math.ceil(len(legacy) / 4), 0)
    assert got[4]["prompt_tokens"] == count_words(["embed me please"])
    assert (got[5]["prompt_tokens"], got[5]["completion_tokens"]) == (None, None)

    # Metrics count only what backends reported: the estimates stay in the request log.
    counted = {
        (s.labels["model"], s.labels["direction"]): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "hearth_tokens_total"
    }
    assert counted[("gpt-4o-mini", "in")] == count_words(["count my words please"])

    groups = by_group(usage_json(env, "--by", "model"))
    assert (groups["gpt-4o-mini"]["requests"], groups["gpt-4o-mini"]["estimated"]) == (3, 2)
    assert groups["gpt-4o-mini"]["estimated_pct"] == pytest.approx(200 / 3)
    assert groups["nope"]["errors"] == 1
    assert groups["nope"]["cloud_cost"] == groups["nope"]["energy_cost"] == 0


def test_since_leaves_out_older_calls_and_by_groups_them(env: Env) -> None:
    family, webui = new_key(env, "family"), new_key(env, "webui")
    body = {"model": "llama3.1:8b", "messages": msg("hi"), "stream": False}
    httpx.post(env.url + "/api/chat", json=body, headers=bearer(family)).raise_for_status()
    for person in ["alice@example.com", "bob@example.com", "bob@example.com"]:
        headers = {**bearer(webui), "X-OpenWebUI-User-Email": person}
        httpx.post(env.url + "/api/chat", json=body, headers=headers).raise_for_status()
    now = time.time()
    store = Store(env.settings.store_url)
    try:
        store.insert_requests([row(now - 10 * DAY, "family", (1000, 2000), backend="local")])
    finally:
        store.close()
    env.stop()
    hi = chat_tokens("hi")

    week = by_group(usage_json(env, "--by", "tenant", "--since", "7d"))
    assert {g: v["requests"] for g, v in week.items()} == {
        "webui/bob@example.com": 2,
        "family": 1,
        "webui/alice@example.com": 1,
    }
    assert (week["family"]["prompt_tokens"], week["family"]["completion_tokens"]) == hi
    month = by_group(usage_json(env, "--by", "tenant", "--since", "30d"))
    assert month["family"]["requests"] == 2
    assert month["family"]["prompt_tokens"] == hi[0] + 1000
    assert month["family"]["local_equivalent_cost"] == pytest.approx(
        cost((hi[0] + 1000, hi[1] + 2000), EQUIVALENT)
    )
    day = datetime.fromtimestamp(now - 8 * DAY, UTC).date().isoformat()
    assert by_group(usage_json(env, "--by", "tenant", "--since", day))["family"]["requests"] == 1
    assert list(by_group(usage_json(env, "--by", "backend", "--since", "30d"))) == ["local"]
    only = usage_json(env, "--by", "tenant", "--tenant", "webui")
    assert [g["group"] for g in only["groups"]] == ["webui/bob@example.com", "webui/alice@example.com"]
    assert only["total"]["requests"] == 3

    bad = CliRunner().invoke(main, ["usage", "--since", "yesterday", "--config", str(env.config)])
    assert bad.exit_code == 2
    assert "expected a span like 24h" in bad.output


def test_a_tenant_reads_only_its_own_usage(env: Env) -> None:
    keys = {t: new_key(env, t) for t in ["family", "fam", "webui", "ops"]}
    calls = {
        "family": ["llama3.1:8b", "llama3.1:8b", "gpt-4o-mini"],
        "fam": ["assistant"],
        "webui": ["gpt-4o-mini"],
    }
    for tenant, models in calls.items():
        headers = {**bearer(keys[tenant]), "X-OpenWebUI-User-Email": "alice"}
        for model in models:
            r = httpx.post(
                env.url + "/api/chat",
                json={"model": model, "messages": msg("hi"), "stream": False},
                headers=headers,
            )
            r.raise_for_status()

    def mine(tenant: str, **params: str) -> dict[str, Any]:
        r = httpx.get(env.url + "/api/usage", params=params, headers=bearer(keys[tenant]))
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    fam = mine("fam", by="tenant")
    assert [g["group"] for g in fam["groups"]] == ["fam"]
    assert fam["total"]["requests"] == 1
    assert fam["tenant"] == "fam"
    family = mine("family")  # by model unless asked
    assert {g["group"]: g["requests"] for g in family["groups"]} == {"llama3.1:8b": 2, "gpt-4o-mini": 1}
    hi = chat_tokens("hi")
    assert family["total"]["prompt_tokens"] == 3 * hi[0]
    assert family["total"]["cloud_cost"] == pytest.approx(cost(hi, "gpt-4o-mini"))
    assert [g["group"] for g in mine("webui", by="tenant")["groups"]] == ["webui/alice"]
    assert mine("ops", by="tenant")["groups"] == []  # admin or not, /api/usage is one's own
    assert mine("family", by="backend", since="24h")["total"]["requests"] == 3

    r = httpx.get(env.url + "/api/usage")
    assert r.status_code == 401
    assert set(r.json()) == {"error"}
    for params in [{"by": "key_id"}, {"since": "last tuesday"}]:
        r = httpx.get(env.url + "/api/usage", params=params, headers=bearer(keys["fam"]))
        assert r.status_code == 400
        assert set(r.json()) == {"error"}

    # Everyone's usage is for admins only.
    assert httpx.get(env.url + "/admin/usage", headers=bearer(keys["family"])).status_code == 403
    assert httpx.get(env.url + "/admin/usage").status_code == 401
    everyone = httpx.get(env.url + "/admin/usage", headers=bearer(keys["ops"])).json()
    assert {g["group"]: g["requests"] for g in everyone["groups"]} == {
        "family": 3,
        "fam": 1,
        "webui/alice": 1,
    }
    one = httpx.get(
        env.url + "/admin/usage", params={"tenant": "webui", "by": "model"}, headers=bearer(keys["ops"])
    )
    assert [g["group"] for g in one.json()["groups"]] == ["gpt-4o-mini"]


# -- settings and estimates ------------------------------------------------------------------


def test_pricing_settings_are_checked(tmp_path: Path) -> None:
    p = tmp_path / "hearth.yaml"
    p.write_text("pricing:\n  prices: {gpt-4o: {input: 2.5, output: 10}}\n  local_equivalent: gpt-5\n")
    with pytest.raises(ConfigError, match=r"pricing: local_equivalent: 'gpt-5' has no entry in prices"):
        load_settings(p, env={})
    p.write_text("pricing:\n  prices: {gpt-4o: {input: 2.5}}\n")
    with pytest.raises(ConfigError, match="output"):
        load_settings(p, env={})
    p.write_text("pricing:\n  energy: {watts: 300, price_per_kwh: 0.3, volts: 230}\n")
    with pytest.raises(ConfigError, match="volts"):
        load_settings(p, env={})


def test_since_takes_spans_and_iso_dates() -> None:
    now = 1_750_000_000.0
    assert parse_since("24h", now) == now - DAY
    assert parse_since("7d", now) == now - 7 * DAY
    assert parse_since("2w", now) == now - 14 * DAY
    assert parse_since("2025-01-31") == datetime(2025, 1, 31, tzinfo=UTC).timestamp()
    assert parse_since("2025-01-31T12:00:00+02:00") == datetime(2025, 1, 31, 10, tzinfo=UTC).timestamp()
    with pytest.raises(ValueError, match="since"):
        parse_since("3 fortnights")


def test_the_estimate_rules() -> None:
    assert records_estimate("openai", "chat", 10) == 7
    assert records_estimate("openai", "completion", 10) == 8
    assert records_estimate("ollama", "chat", 10) == 9
    assert records_estimate("openai", "chat", 2) == 0
    assert reply_chars(b'{"message": {"role": "assistant", "content": "12345", "thinking": "123"}}') == 8
    assert reply_chars(b'{"choices": [{"message": {"content": "1234"}}, {"text": "12"}]}') == 6
    assert reply_chars(b"not json") == 8


# -- the store, on SQLite and PostgreSQL -----------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'hearth.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


def row(
    ts: float, tenant: str | None, tokens: tuple[int | None, int | None] = (None, None), **more: Any
) -> tuple[Any, ...]:
    """A request-log tuple in REQUEST_COLUMNS order."""
    values: dict[str, Any] = {
        "ts": ts,
        "dialect": "ollama",
        "endpoint": "chat",
        "model": "llama3.1:8b",
        "served_model": "llama3.1:8b",
        "backend": None,
        "status": 200,
        "stream": False,
        "attempts": 1,
        "duration_ms": 100.0,
        "ttft_ms": 10.0,
        "prompt_tokens": tokens[0],
        "completion_tokens": tokens[1],
        "error": None,
        "tenant": tenant,
        "key_id": None,
        "queue_wait_ms": 0.0,
        "tokens_estimated": False,
        "load_ms": None,
        "content_id": None,
        **more,
    }
    assert set(values) == set(REQUEST_COLUMNS)
    return tuple(values[c] for c in REQUEST_COLUMNS)


def test_usage_summary_sums_and_filters_alike_on_both_databases(store_url: str) -> None:
    store = Store(store_url)
    store.migrate()
    try:
        now = time.time()
        store.insert_requests(
            [
                row(now, "a_b", (10, 20), backend="local", duration_ms=1000.0, queue_wait_ms=250.0),
                row(
                    now,
                    "a_b/alice",
                    (1, 2),
                    backend="cloud",
                    served_model="gpt-4o-mini",
                    tokens_estimated=True,
                ),
                row(now, "a_b/bob", backend="local", status=500, error="boom", duration_ms=300.0),
                row(now, "a_b/bob", (5, 5), backend="local", error="backend died mid-stream"),
                row(now, "axb", (7, 7), backend="local"),  # "_" is not a wildcard
                row(now, "a_bc", (7, 7), backend="local"),  # a longer name, not a sub-tenant
                row(now - 2 * DAY, "a_b", (100, 100), backend="local"),
            ]
        )
        groups = store.usage_summary(now - DAY, "tenant", "a_b")
        assert [g["group"] for g in groups] == ["a_b/bob", "a_b", "a_b/alice"]
        bob, ab, alice = groups
        assert (bob["requests"], bob["errors"], bob["prompt_tokens"], bob["completion_tokens"]) == (
            2,
            2,
            5,
            5,
        )
        assert bob["mean_duration_ms"] == pytest.approx(200.0)
        assert (ab["requests"], ab["errors"], ab["busy_s"]) == (1, 0, pytest.approx(0.75))
        assert (alice["estimated"], alice["parts"][0]["backend"], alice["parts"][0]["served_model"]) == (
            1,
            "cloud",
            "gpt-4o-mini",
        )
        everyone = store.usage_summary(now - 3 * DAY, "backend")
        assert {g["group"]: g["requests"] for g in everyone} == {"local": 6, "cloud": 1}
        assert store.usage_summary(now - DAY, "tenant", "a%") == []
        with pytest.raises(ValueError, match="cannot group"):
            store.usage_summary(0, "error")
    finally:
        store.close()


def test_migration_0003_keeps_old_rows_as_counted_by_the_backend(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
            conn.execute(
                sa.text(
                    "INSERT INTO requests (ts, dialect, endpoint, model, status, stream, attempts, duration_ms)"
                    " VALUES (1, 'ollama', 'chat', 'm', 200, false, 1, 5)"
                )
            )
    finally:
        engine.dispose()
    store = Store(store_url)
    try:
        store.migrate()
        with store.engine.connect() as conn:
            old = conn.execute(sa.select(requests.c.queue_wait_ms, requests.c.tokens_estimated)).one()
        assert (old.queue_wait_ms, old.tokens_estimated) == (None, False)
    finally:
        store.close()
