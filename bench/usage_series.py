"""Usage-over-time benchmark: ``Store.usage_series`` (the hub's usage and cost charts) on a request
log of 1,000,000 calls over 30 days, on SQLite and on PostgreSQL, against the 300 ms target.

    .venv/bin/python bench/usage_series.py                      # 1M rows, SQLite then PostgreSQL
    .venv/bin/python bench/usage_series.py --rows 100000 --sqlite-only
    .venv/bin/python bench/usage_series.py --json

The log is the trace benchmark's (bench/traces.py: same tenants, models, backends and errors;
PostgreSQL ``VACUUM ANALYZE``d after ``COPY``), written at schema 0007; then migration 0008 fills
``usage_hourly`` from it (timed). Each query is timed ``--reps`` times after one untimed warm-up,
calling the Store in this process: the database's time plus building the rows; then the same
with the pricing step (``series_report``), still without HTTP and JSON. Last, what keeping the
hourly sums costs the request log's writes: 10,000 rows through ``Store.insert_requests`` in
batches of 500, and how much of that ``hourly_sums`` takes. A benchmark that prints numbers, not
a test: it exits 0 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec
from machine import machine_info  # bench/machine.py, beside this script
from traces import (  # bench/traces.py: the same log
    DAY,
    TARGET_MS,
    Timing,
    calls,
    fill_postgres,
    fill_sqlite,
    hearth_migrate,
    log,
    pg_database,
    postgres,
    timed,
)

from hearth.gateway.usage import series_report
from hearth.settings import Settings
from hearth.store.db import Store
from hearth.store.schema import REQUEST_COLUMNS

# (name, span in days, bucket in seconds, by, tenant)
CASES = [
    ("24h by model, hourly", 1, 3600, "model", None),
    ("7d by tenant, hourly", 7, 3600, "tenant", None),
    ("7d by model, hourly", 7, 3600, "model", None),
    ("30d by tenant, daily", 30, 86400, "tenant", None),
    ("30d by model, daily", 30, 86400, "model", None),
    ("30d one tenant (webui + people), daily", 30, 86400, "tenant", "webui"),
    ("7d one tenant (family) by model, hourly", 7, 3600, "model", "family"),
    ("30d by tenant, hourly (720 buckets)", 30, 3600, "tenant", None),
]


def log_rows(n: int, end: float, days: float = 30, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """bench/traces.py's calls, padded with NULLs for columns added to the log since."""
    pad = (None,) * (len(REQUEST_COLUMNS) - 18)
    for row in calls(n, end, days, seed):
        yield row + pad


def pricing_settings() -> Settings:
    """The bench log's backends (openai is the cloud one) with prices, for the pricing step."""
    backends = [
        {
            "name": n,
            "kind": "openai" if n == "openai" else "ollama",
            "url": "http://x",
            "cloud": n == "openai",
        }
        for n in ("gpu-box", "mini", "openai")
    ]
    prices = {"gpt-4o-mini": {"input": 0.15, "output": 0.6}, "gpt-4o": {"input": 2.5, "output": 10.0}}
    data = {"backends": backends, "pricing": {"prices": prices, "local_equivalent": "gpt-4o"}}
    return msgspec.convert(data, Settings)


def insert_cost(store: Store, end: float) -> dict[str, float]:
    """us a row for Store.insert_requests, 10,000 rows in batches of 500, with the hourly sums
    and without them (the module's hourly_sums swapped for one summing nothing), alternating
    three times; and for hourly_sums alone. The calls span 24 minutes, as a busy log's batches
    do (about 150 distinct hourly keys a batch): the gap is the sums' cost."""
    import hearth.store.db as db

    keep = db.hourly_sums
    out: dict[str, list[float]] = {"with": [], "without": [], "hourly_sums": []}
    try:
        for rnd in range(6):
            rows = list(log_rows(10_000, end + 7200 * (rnd + 1), days=24 / 1440, seed=rnd))
            db.hourly_sums = keep if rnd % 2 == 0 else (lambda rows: [])
            t = time.perf_counter()
            for i in range(0, len(rows), 500):
                store.insert_requests(rows[i : i + 500])
            out["with" if rnd % 2 == 0 else "without"].append((time.perf_counter() - t) / len(rows) * 1e6)
            t = time.perf_counter()
            for i in range(0, len(rows), 500):
                keep(rows[i : i + 500])
            out["hourly_sums"].append((time.perf_counter() - t) / len(rows) * 1e6)
    finally:
        db.hourly_sums = keep
    return {k: sorted(v)[len(v) // 2] for k, v in out.items()}


def run_database(
    kind: str, url: str, dsn: str, workdir: Path, n: int, reps: int, settings: Settings
) -> dict[str, Any]:
    log(f"{kind}: hearth migrate, then back to 0007")
    hearth_migrate(workdir, url)
    Store(url).migrate("0007", down=True)
    end = time.time()
    log(f"{kind}: filling {n:,} rows")
    t = time.perf_counter()
    if kind == "sqlite":
        fill_sqlite(Path(url.removeprefix("sqlite:///")), log_rows(n, end))
    else:
        fill_postgres(dsn, log_rows(n, end))
    log(f"{kind}: filled in {time.perf_counter() - t:.1f} s")
    store = Store(url)
    timings: list[Timing] = []
    priced: list[Timing] = []
    try:
        t = time.perf_counter()
        store.migrate()
        backfill_s = time.perf_counter() - t
        with store.engine.connect() as conn:
            version = str(
                conn.exec_driver_sql(
                    "SELECT sqlite_version()" if kind == "sqlite" else "SHOW server_version"
                ).scalar()
            )
            hourly = int(conn.exec_driver_sql("SELECT count(*) FROM usage_hourly").scalar() or 0)
        cloud = [b.name for b in settings.backends if b.cloud]
        for name, days, bucket, by, tenant in CASES:
            since = end - days * DAY

            def series(
                since: float = since, bucket: int = bucket, by: str = by, tenant: str | None = tenant
            ) -> int:
                return len(store.usage_series(since, end, bucket, by, tenant))

            def priced_report(
                since: float = since, bucket: int = bucket, by: str = by, tenant: str | None = tenant
            ) -> int:
                # As usage_series_report (api/usage.py) calls them.
                rows = store.usage_series(since, end, bucket, by, tenant, cloud=cloud)
                return len(series_report(rows, settings, since, end, bucket, by)["series"])

            timings.append(timed(name, series, reps, ""))
            priced.append(timed(name, priced_report, reps, ""))
            log(f"{kind}: {name}: p50 {timings[-1].p50:.1f} ms, priced {priced[-1].p50:.1f} ms")
        inserts = insert_cost(store, end)
    finally:
        store.close()
    return {
        "database": kind,
        "version": version,
        "rows": n,
        "hourly_rows": hourly,
        "backfill_s": backfill_s,
        "inserts_us": inserts,
        "queries": [asdict(q) for q in timings],
        "priced": [asdict(q) for q in priced],
    }


def report(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    out = [
        f"machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['ram_gib']} GiB RAM, "
        f"Linux {machine['kernel']}, Python {machine['python']}",
    ]
    for r in results:
        out += [
            "",
            f"{r['database']} {r['version']}: {r['rows']:,} rows over 30 days, "
            f"{r['hourly_rows']:,} hourly sums; migration 0008 filled them in {r['backfill_s']:.1f} s",
        ]
        for title, key in (("Store.usage_series", "queries"), ("... then priced (series_report)", "priced")):
            out.append(f"  {title:44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows':>6}   target")
            for q in r[key]:
                verdict = "PASS" if q["max"] < TARGET_MS else "MISS"
                times = f"{q['p50']:8.1f} {q['p95']:8.1f} {q['max']:8.1f}"
                out.append(f"  {q['name']:44} {times} {q['rows']:6}   < {TARGET_MS:.0f} ms {verdict}")
        ins = r["inserts_us"]
        out.append(
            f"  request-log inserts, 10,000 rows in batches of 500 (median of 3, us a row): "
            f"{ins['with']:.1f} with the hourly sums, {ins['without']:.1f} without; "
            f"hourly_sums alone {ins['hourly_sums']:.1f}"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="calls in the log (default 1,000,000)")
    parser.add_argument("--reps", type=int, default=10, help="timed runs of each query (default 10)")
    parser.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    settings = pricing_settings()
    machine = machine_info()
    results = []
    root = Path(tempfile.mkdtemp(prefix="hearth-bench-series-"))
    try:
        url = f"sqlite:///{root / 'hearth.db'}"
        results.append(run_database("sqlite", url, "", root, args.rows, args.reps, settings))
        if not args.sqlite_only:
            with postgres(root) as uri:
                url, dsn = pg_database(uri, "hearth_bench")
                results.append(run_database("postgresql", url, dsn, root, args.rows, args.reps, settings))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
    else:
        print(report(results, machine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
