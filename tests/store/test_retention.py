"""The retention job on real SQLite and PostgreSQL: old request-log rows go after
store.retention_days, stored prompts and replies after their tenant's content_retention_days, and
all of a tenant's content once it no longer stores content. Driven with a given "now"."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tests.conftest import make_settings

from hearth.errors import ConfigError
from hearth.settings import load_settings
from hearth.store.db import Store
from hearth.store.retention import Retention
from hearth.store.schema import REQUEST_COLUMNS

DAY = 86400.0
NOW = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    url = (
        f"sqlite:///{tmp_path / 'hearth.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    s = Store(url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def row(ts: float, tenant: str) -> tuple[Any, ...]:
    values: dict[str, Any] = dict.fromkeys(REQUEST_COLUMNS)
    values.update(
        ts=ts, dialect="ollama", endpoint="chat", model="m", status=200, stream=False, attempts=1,
        duration_ms=1.0, tenant=tenant, tokens_estimated=False,
    )  # fmt: skip
    return tuple(values[c] for c in REQUEST_COLUMNS)


def calls(store: Store, spec: list[tuple[str, float, str, bool]]) -> dict[str, int]:
    """Write calls (label, age in days, tenant, with content); their trace ids by label."""
    rows = [row(NOW - age * DAY, tenant) for _, age, tenant, _ in spec]
    contents = [
        (i, (NOW - age * DAY, tenant, f'{{"prompt": "{label}"}}', f"reply {label}"))
        for i, (label, age, tenant, stored) in enumerate(spec)
        if stored
    ]
    store.insert_requests(rows, contents)
    ids = [r["id"] for r in reversed(store.recent_requests(len(spec)))]
    return {label: i for (label, *_), i in zip(spec, ids, strict=True)}


def test_retention_deletes_old_metadata_and_content_by_each_tenants_rules(store: Store) -> None:
    settings = make_settings(
        [],
        store={"retention_days": 60},
        tenants={"diary": {"store_content": True, "content_retention_days": 7}, "former": {}},
    )
    ids = calls(
        store,
        [
            ("recent", 1, "diary", True),  # kept, content too
            ("week-old", 10, "diary/alice", True),  # a sub-tenant: its content is past 7 days
            ("opted-out", 1, "former", True),  # stored while opted in: it opted out since
            ("stranger", 1, "someone", True),  # tenant_defaults: no stored content
            ("ancient", 61, "diary", True),  # past the metadata's 60 days: all of it goes
            ("ancient-meta", 90, "someone", False),
            ("plain", 1, "someone", False),
        ],
    )
    retention = Retention(settings, store, CollectorRegistry())
    retention.BATCH = 2  # several batches of each table
    done = asyncio.run(retention.run(now=NOW))
    assert (done["requests"], done["contents"]) == (2, 4)
    assert retention.last == done
    kept = {label: store.get_trace(i) for label, i in ids.items()}
    assert kept["ancient"] is None and kept["ancient-meta"] is None
    assert kept["recent"] is not None and kept["recent"]["content"] == {
        "request": {"prompt": "recent"},
        "response": "reply recent",
    }
    for label in ("week-old", "opted-out", "stranger", "plain"):
        assert kept[label] is not None and kept[label]["content"] is None, label
    again = asyncio.run(retention.run(now=NOW))  # nothing left to delete
    assert (again["requests"], again["contents"]) == (0, 0)


def test_retention_without_a_metadata_limit_keeps_the_log_and_still_expires_content(store: Store) -> None:
    settings = make_settings(
        [],
        store={"retention_days": None},
        tenant_defaults={"store_content": True, "content_retention_days": 1},
    )
    ids = calls(store, [("years", 3000, "anyone", True), ("today", 0.5, "anyone", True)])
    done = asyncio.run(Retention(settings, store, CollectorRegistry()).run(now=NOW))
    assert (done["requests"], done["contents"]) == (0, 1)
    years, today = store.get_trace(ids["years"]), store.get_trace(ids["today"])
    assert years is not None and years["content"] is None
    assert today is not None and today["content"] is not None


def test_metadata_retention_shorter_than_the_quota_month_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "hearth.yaml"
    config.write_text("store:\n  retention_days: 20\n")
    with pytest.raises(ConfigError, match=r"store: retention_days: expected 32 or more"):
        load_settings(config, env={})
    config.write_text("store:\n  retention_days: null\ntenants:\n  t: {content_retention_days: 0}\n")
    with pytest.raises(ConfigError, match=r"tenants\.t\.content_retention_days: expected a positive"):
        load_settings(config, env={})
