"""The trace list on SQLite and on a real PostgreSQL server: every filter and combination keeps
exactly the rows a plain Python predicate keeps, pages newest first through the cursor, uses the
index meant for it (migration 0006), and the overview's aggregates add up."""

from __future__ import annotations

import itertools
import random
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from hearth.store.db import Store
from hearth.store.schema import REQUEST_COLUMNS, requests
from hearth.store.traces import MAX_LIMIT, TraceFilter, list_query, window_share

DAY = 86400.0
START = 20_000 * DAY  # a UTC midnight
ROWS = 400
NOW = START + ROWS * 600 + 3600  # an hour after the last call started

# "fam" is a prefix of "family" but not its sub-tenant; "a_b" and "a%b" hold LIKE wildcards;
# "webui/alice/x" is a name below a sub-tenant.
TENANTS = ["family", "family/kid", "fam", "webui", "webui/alice", "webui/bob", "webui/alice/x"]
TENANTS += ["a_b", "a%b", "a-b", None]
MODELS = [  # (as asked, as served: None when no backend ran it)
    ("llama3.1:8b", "llama3.1:8b"),
    ("assistant", "llama3.1:8b"),  # an alias
    ("qwen2.5:14b", "qwen2.5:14b"),
    ("gpt-4o-mini", "gpt-4o-mini"),
    ("typo", None),
]
BACKENDS = ["gpu", "mini", "cloud"]
STATUSES = [200] * 12 + [499, 429, 500, 404]


def make_rows(n: int = ROWS, seed: int = 7) -> list[dict[str, Any]]:
    """Calls 10 minutes apart on average, written in an order that is not quite their start
    order (a long call's row comes after shorter ones that started later)."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        model, served = rnd.choice(MODELS)
        status = rnd.choice(STATUSES)
        error = None
        if status >= 500 or (status == 200 and rnd.random() < 0.05):  # 200: failed mid-stream
            error = "backend went away"
        backend = None if served is None or status == 429 else rnd.choice(BACKENDS)
        out.append(
            {
                "ts": START + i * 600 - rnd.random() * rnd.choice([10, 10, 3000, 40000]),
                "dialect": "ollama",
                "endpoint": "chat",
                "model": model,
                "served_model": served if backend else None,
                "backend": backend,
                "status": status,
                "stream": rnd.random() < 0.5,
                "attempts": 1,
                "duration_ms": rnd.uniform(5, 30_000),
                "ttft_ms": None,
                "prompt_tokens": rnd.randint(0, 500) if status == 200 else None,
                "completion_tokens": rnd.randint(0, 500) if status == 200 else None,
                "error": error,
                "tenant": rnd.choice(TENANTS),
                "key_id": None,
                "queue_wait_ms": 0.0,
                "tokens_estimated": False,
                "load_ms": None,
                "content_id": None,
            }
        )
    return out


def matches(row: dict[str, Any], f: TraceFilter) -> bool:
    """What each filter means, in plain Python."""
    tenant = row["tenant"]
    if f.tenant is not None:
        if tenant is None:
            return False
        below = f.subtenants and tenant.startswith(f.tenant + "/")
        if tenant != f.tenant and not below:
            return False
    return (
        (f.model is None or f.model in (row["model"], row["served_model"]))
        and (f.backend is None or row["backend"] == f.backend)
        and (f.status is None or row["status"] == f.status)
        and (not f.errors_only or row["status"] >= 400 or row["error"] is not None)
        and (f.since is None or row["ts"] >= f.since)
        and (f.until is None or row["ts"] < f.until)
        and (f.min_duration_ms is None or row["duration_ms"] >= f.min_duration_ms)
    )


def expected(rows: list[dict[str, Any]], f: TraceFilter) -> list[int]:
    return sorted((r["id"] for r in rows if matches(r, f)), reverse=True)


def all_pages(store: Store, f: TraceFilter, limit: int) -> list[int]:
    """Every id the list yields, page by page through the cursor."""
    ids: list[int] = []
    before = None
    while True:
        page, before = store.list_traces(f, limit, before)
        assert len(page) <= limit
        ids += [r["id"] for r in page]
        if before is None:
            return ids
        assert page and before == page[-1]["id"]


class Filled:
    def __init__(self, store: Store, rows: list[dict[str, Any]]) -> None:
        self.store = store
        self.rows = rows


def _fill(url: str) -> Filled:
    store = Store(url)
    store.migrate()
    rows = make_rows()
    store.insert_requests([tuple(r[c] for c in REQUEST_COLUMNS) for r in rows])
    with store.engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT id FROM requests ORDER BY id")).scalars().all()
    for r, i in zip(rows, ids, strict=True):
        r["id"] = i
    return Filled(store, rows)


@pytest.fixture(scope="module")
def sqlite_filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    filled = _fill(f"sqlite:///{tmp_path_factory.mktemp('traces') / 'hearth.db'}")
    yield filled
    filled.store.close()


@pytest.fixture(scope="module")
def pg_filled(pg_server: str) -> Iterator[Filled]:
    import psycopg

    name = f"hearth_traces_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(pg_server).set(drivername="postgresql+psycopg", database=name)
    filled = _fill(url.render_as_string(hide_password=False))
    yield filled
    filled.store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def filled(request: pytest.FixtureRequest) -> Filled:
    return request.getfixturevalue("sqlite_filled" if request.param == "sqlite" else "pg_filled")


EARLY = START + 40 * 600  # the first tenth of the calls: reading its window beats walking back
FILTERS = [
    TraceFilter(),
    TraceFilter(tenant="family"),  # and family/kid, not fam
    TraceFilter(tenant="fam"),
    TraceFilter(tenant="webui"),
    TraceFilter(tenant="webui", subtenants=False),
    TraceFilter(tenant="webui/alice"),  # and webui/alice/x
    TraceFilter(tenant="webui/alice", subtenants=False),
    TraceFilter(tenant="a_b"),
    TraceFilter(tenant="a%b"),
    TraceFilter(tenant="nobody"),
    TraceFilter(model="llama3.1:8b"),  # asked for, or served for the alias
    TraceFilter(model="assistant"),
    TraceFilter(model="typo"),
    TraceFilter(backend="cloud"),
    TraceFilter(status=404),
    TraceFilter(status=200),
    TraceFilter(errors_only=True),  # status >= 400, or an error after a 200
    TraceFilter(since=START + 300 * 600),
    TraceFilter(until=START + 300 * 600),
    TraceFilter(until=EARLY),
    TraceFilter(since=START + 20 * 600, until=EARLY),
    TraceFilter(min_duration_ms=25_000),
    TraceFilter(tenant="webui/alice", model="llama3.1:8b", errors_only=True),
    TraceFilter(tenant="family", backend="gpu", since=START + 100 * 600),
    TraceFilter(tenant="webui", model="qwen2.5:14b", until=EARLY),
    TraceFilter(model="assistant", status=499, min_duration_ms=1000),
]


@pytest.mark.parametrize("f", FILTERS, ids=repr)
def test_each_filter_keeps_exactly_its_rows_newest_first_across_pages(filled: Filled, f: TraceFilter) -> None:
    want = expected(filled.rows, f)
    assert all_pages(filled.store, f, 7) == want
    page, cursor = filled.store.list_traces(f, MAX_LIMIT)
    assert ([r["id"] for r in page], cursor) == (want, None)


def test_random_combinations_match_the_predicate(filled: Filled) -> None:
    rnd = random.Random(11)
    times = [None, START + 50 * 600, START + 200 * 600, START + 390 * 600]
    for _ in range(40):
        since, until = sorted(rnd.sample(times[1:], 2)) if rnd.random() < 0.3 else (rnd.choice(times), None)
        f = TraceFilter(
            tenant=rnd.choice([None, None, "family", "webui", "webui/alice", "fam"]),
            subtenants=rnd.random() < 0.8,
            model=rnd.choice([None, None, "llama3.1:8b", "assistant", "gpt-4o-mini"]),
            backend=rnd.choice([None, None, "gpu", "mini"]),
            status=rnd.choice([None, None, None, 200, 500]),
            errors_only=rnd.random() < 0.2,
            since=since,
            until=until if until is not None else rnd.choice([None, None, START + 100 * 600]),
            min_duration_ms=rnd.choice([None, None, 10_000.0]),
        )
        assert all_pages(filled.store, f, rnd.choice([1, 5, 50])) == expected(filled.rows, f), f


def test_the_cursor_is_none_exactly_when_nothing_is_left(filled: Filled) -> None:
    f = TraceFilter(tenant="webui/bob")
    want = expected(filled.rows, f)
    assert len(want) > 2
    assert filled.store.list_traces(f, len(want)) == (filled.store.list_traces(f, MAX_LIMIT)[0], None)
    first, cursor = filled.store.list_traces(f, len(want) - 1)
    assert ([r["id"] for r in first], cursor) == (want[:-1], want[-2])
    last, end = filled.store.list_traces(f, len(want) - 1, cursor)
    assert ([r["id"] for r in last], end) == ([want[-1]], None)
    assert filled.store.list_traces(f, 10, want[-1]) == ([], None)


def test_limit_defaults_to_50_is_capped_at_500_and_must_be_positive(filled: Filled) -> None:
    assert len(filled.store.list_traces()[0]) == 50
    page, cursor = filled.store.list_traces(limit=10_000)
    assert (len(page), cursor) == (ROWS, None)  # 400 rows: under the cap of 500
    with pytest.raises(ValueError, match="limit"):
        filled.store.list_traces(limit=0)


def test_a_far_back_until_reads_its_window_and_a_recent_one_walks_back(filled: Filled) -> None:
    with filled.store.engine.connect() as conn:
        assert window_share(conn, TraceFilter(until=EARLY), None) is not None
        assert window_share(conn, TraceFilter(until=START + 390 * 600), None) is None
        assert window_share(conn, TraceFilter(until=EARLY), before_id=filled.rows[30]["id"]) is None
        assert window_share(conn, TraceFilter(since=START), None) is None


def test_get_trace_returns_the_whole_row_or_none(filled: Filled) -> None:
    row = filled.rows[123]
    assert filled.store.get_trace(row["id"]) == {**row, "content": None}  # nothing stored
    assert filled.store.get_trace(10**9) is None


def test_the_overview_counts_recent_calls_today_and_per_model(filled: Filled) -> None:
    now = filled.rows[250]["ts"] + 30  # a call 30 s ago

    def failed(r: dict[str, Any]) -> bool:
        return bool(r["status"] >= 400 or r["error"] is not None)

    def window(lo: float) -> dict[str, int]:
        rows = [r for r in filled.rows if lo <= r["ts"] <= now]
        return {"requests": len(rows), "errors": sum(map(failed, rows))}

    since = now - now % DAY
    got = filled.store.overview(now=now)
    assert got["now"] == now
    assert got["last_minute"] == window(now - 60)
    assert got["last_5_minutes"] == window(now - 300)
    assert got["last_minute"]["requests"] >= 1
    today = [r for r in filled.rows if since <= r["ts"] <= now]
    prompt = sum(r["prompt_tokens"] or 0 for r in today)
    completion = sum(r["completion_tokens"] or 0 for r in today)
    assert got["today"] == {
        "since": since,
        "requests": len(today),
        "errors": sum(map(failed, today)),
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "tokens": prompt + completion,
    }
    per_model: dict[str, int] = {}
    for r in today:
        key = r["served_model"] or r["model"]  # what ran, or what was asked if nothing ran
        per_model[key] = per_model.get(key, 0) + 1
    models = got["models_today"]
    assert {m["model"]: m["requests"] for m in models} == per_model
    assert [m["requests"] for m in models] == sorted((m["requests"] for m in models), reverse=True)
    assert sum(m["errors"] for m in models) == got["today"]["errors"]
    # ``since`` moves the start of "today".
    assert filled.store.overview(since=START, now=now)["today"]["requests"] == len(
        [r for r in filled.rows if START <= r["ts"] <= now]
    )


# -- each filter uses its index ----------------------------------------------------------------

# The index each single filter is meant to walk (migration 0006).
INDEXES = [
    (TraceFilter(tenant="webui", subtenants=False), {"ix_requests_tenant_id"}),
    (TraceFilter(tenant="webui"), {"ix_requests_tenant_root_id"}),
    (TraceFilter(tenant="webui/alice"), {"ix_requests_tenant_id"}),
    (TraceFilter(model="assistant"), {"ix_requests_model_id", "ix_requests_served_model_id"}),
    (TraceFilter(backend="cloud"), {"ix_requests_backend_id"}),
    (TraceFilter(status=404), {"ix_requests_errors_status_id"}),
    (TraceFilter(errors_only=True), {"ix_requests_errors_id"}),
    (TraceFilter(since=NOW - 3600, until=NOW - 1800), {"ix_requests_ts"}),
]


@pytest.mark.parametrize(("f", "names"), INDEXES, ids=[repr(f) for f, _ in INDEXES])
def test_sqlite_walks_the_index_meant_for_each_filter(
    sqlite_filled: Filled, f: TraceFilter, names: set[str]
) -> None:
    # SQLite matches expression and partial indexes by the text of the query: this fails if
    # store/traces.py and migration 0006 ever spell them differently.
    query = list_query(f, 51, None, "sqlite")
    sql = str(query.compile(sqlite_filled.store.engine, compile_kwargs={"literal_binds": True}))
    with sqlite_filled.store.engine.connect() as conn:
        plan = " | ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
    assert {n for n in names if re.search(rf"INDEX {n}\b", plan)} == names, plan
    # Each index is walked in id order, not read whole and sorted: only a time window and the
    # (rare) names below a sub-tenant are. Merging branches sorts a few ids, then their rows.
    steps = plan.split(" | ")
    sorted_reads = [
        step
        for step, after in itertools.pairwise(steps)
        if step.startswith(("SEARCH requests", "SCAN requests")) and after == "USE TEMP B-TREE FOR ORDER BY"
    ]
    allowed = ("ix_requests_ts", "tenant>? AND tenant<?", "PRIMARY KEY (rowid=?)")
    assert all(any(a in s for a in allowed) for s in sorted_reads), plan


@pytest.mark.parametrize(("f", "names"), INDEXES, ids=[repr(f) for f, _ in INDEXES])
def test_postgresql_can_use_the_index_meant_for_each_filter(
    pg_filled: Filled, f: TraceFilter, names: set[str]
) -> None:
    # On 400 rows PostgreSQL would rather read the table; without plain scans it must show that
    # the index is usable for the query as written (expression, collation, predicate).
    query = list_query(f, 51, None, "postgresql")
    sql = str(query.compile(pg_filled.store.engine, compile_kwargs={"literal_binds": True}))
    with pg_filled.store.engine.connect() as conn:
        for setting in ("enable_seqscan", "enable_indexscan", "enable_sort"):
            conn.exec_driver_sql(f"SET LOCAL {setting} = off")
        plan = " | ".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
        conn.rollback()
    partial = {"ix_requests_errors_id", "ix_requests_errors_status_id"}
    if names <= partial:  # either partial index holds exactly the failed calls
        assert any(n in plan for n in partial), plan
    else:
        assert all(n in plan for n in names), plan


# -- migration -----------------------------------------------------------------------------------


def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    store = Store(url)
    try:
        store.migrate(revision, down=down)
    finally:
        store.close()


def _trace_indexes(store: Store) -> set[str]:
    query = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests'"
        if store.is_sqlite
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'requests'"
    )
    with store.engine.connect() as conn:
        names = set(conn.exec_driver_sql(query).scalars())
    return {n for n in names if n.startswith("ix_")} - {"ix_requests_ts"}


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_migration_0006_indexes_an_existing_log_and_keeps_its_rows(
    dialect: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'hearth.db'}" if dialect == "sqlite" else request.getfixturevalue("pg_url")
    _migrate(url, "0005")
    rows = make_rows(60, seed=3)
    old = Store(url)
    try:
        # The columns of revision 0005 only: later ones do not exist yet.
        later = {"content_id", "load_ms"}
        with old.engine.begin() as conn:
            conn.execute(requests.insert(), [{k: v for k, v in r.items() if k not in later} for r in rows])
        assert _trace_indexes(old) == set()
    finally:
        old.close()
    store = Store(url)
    try:
        store.migrate()
        store.migrate()  # twice: nothing more to do
        assert len(_trace_indexes(store)) == 7
        page, _ = store.list_traces(TraceFilter(tenant="webui"), MAX_LIMIT)
        assert [r["tenant"] for r in page] == [
            r["tenant"] for r in reversed(rows) if r["tenant"] and r["tenant"].split("/")[0] == "webui"
        ]
        assert len(store.list_traces(limit=MAX_LIMIT)[0]) == 60
    finally:
        store.close()
    _migrate(url, "0005", down=True)  # and back: the indexes go, the rows stay
    store = Store(url)
    try:
        assert _trace_indexes(store) == set()
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM requests")).scalar() == 60
        store.migrate()
        assert len(_trace_indexes(store)) == 7
    finally:
        store.close()


def test_filters_cover_every_field_of_trace_filter() -> None:
    # A field added to TraceFilter without a case here would go untested.
    used = {name for f in FILTERS for name in f.__slots__ if getattr(f, name) != getattr(TraceFilter(), name)}
    assert used == set(TraceFilter.__slots__)


def test_two_or_filters_make_four_branches() -> None:
    # A model (asked or served) and a sub-tenant (itself or below): each pair is one branch.
    f = TraceFilter(tenant="webui/alice", model="assistant")
    sql = str(list_query(f, 51, None, "sqlite").compile())
    assert sql.count(" UNION ") == 3
