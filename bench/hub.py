"""Hub page benchmark: each /hub page rendered over HTTP by a real Hearth whose request log holds
1,000,000 calls (the same calls as bench/traces.py), against the 300 ms target.

    .venv/bin/python bench/hub.py                      # 1M rows, SQLite then PostgreSQL
    .venv/bin/python bench/hub.py --rows 100000 --sqlite-only

For each database: ``hearth migrate``, fill the log (bench/traces.py's ``calls``), start Hearth
(uvicorn on loopback, in this process's thread, as the tests do) with an admin password, log in,
then time each page ``--reps`` times after one untimed warm-up. A time is the whole round trip
seen by the client (HTTP, the queries, the template, the chart), so it bounds the server's time
from above. A benchmark that prints numbers, not a test: it exits 0 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn
from machine import machine_info  # bench/machine.py, beside this script
from traces import calls, fill_postgres, fill_sqlite, hearth_migrate, log, pct, pg_database, postgres

from hearth.app import create_app
from hearth.hub.session import hash_password
from hearth.settings import load_settings

TARGET_MS = 300.0
PASSWORD = "benchmark password"
PAGES = [
    ("overview", "/hub"),
    ("overview, live part", "/hub/live"),
    ("traces", "/hub/traces"),
    ("traces: tenant webui", "/hub/traces?tenant=webui"),
    ("traces: model + errors", "/hub/traces?model=llama3.1%3A8b&errors=1"),
    ("traces: since 1h", "/hub/traces?since=1h"),
    ("traces: slower than 10 s", "/hub/traces?min_ms=10000"),
    ("trace detail", "/hub/traces/{id}"),
    ("usage, 24 h", "/hub/usage?since=24h"),
    ("usage, 30 d", "/hub/usage?since=30d"),
    ("tenants and keys", "/hub/tenants"),
    ("alerts", "/hub/alerts"),
]


@contextmanager
def serve(workdir: Path, url: str) -> Iterator[str]:
    config = workdir / "hub.yaml"
    settings = {
        "server": {"data_dir": str(workdir)},
        "store": {"url": url},
        "discovery": {"interval": 3600},
        "alerts": {"enabled": False},
        "hub": {"admins": {"admin": hash_password(PASSWORD)}},
    }
    config.write_text(json.dumps(settings))  # JSON is YAML
    app = create_app(load_settings(config, env={}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    started = threading.Event()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("hearth did not start")
        started.wait(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def log_in(client: httpx.Client) -> None:
    page = client.get("/hub/login")
    token = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert token is not None
    r = client.post("/hub/login", data={"csrf": token.group(1), "name": "admin", "password": PASSWORD})
    assert r.status_code == 303, r.text


def measure(base: str, reps: int, last_id: int) -> list[tuple[str, float, float, float, int]]:
    out = []
    with httpx.Client(base_url=base, timeout=120) as client:
        log_in(client)
        for name, path in PAGES:
            path = path.format(id=last_id // 2)
            r = client.get(path)  # warm-up
            assert r.status_code == 200, (path, r.status_code)
            samples = []
            for _ in range(reps):
                t = time.perf_counter()
                r = client.get(path)
                samples.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
            out.append((name, pct(samples, 50), pct(samples, 95), max(samples), len(r.content)))
    return out


def run(
    kind: str, url: str, dsn: str, workdir: Path, n: int, reps: int
) -> list[tuple[str, float, float, float, int]]:
    log(f"{kind}: hearth migrate")
    hearth_migrate(workdir, url)
    log(f"{kind}: filling {n:,} rows")
    if kind == "sqlite":
        fill_sqlite(Path(url.removeprefix("sqlite:///")), calls(n, time.time()))
    else:
        fill_postgres(dsn, calls(n, time.time()))
    log(f"{kind}: timing pages")
    with serve(workdir, url) as base:
        return measure(base, reps, n)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--sqlite-only", action="store_true")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="hearth-bench-hub-") as tmp:
        root = Path(tmp)
        (root / "sqlite").mkdir()
        results["SQLite"] = run(
            "sqlite", f"sqlite:///{root / 'sqlite' / 'hearth.db'}", "", root / "sqlite", args.rows, args.reps
        )
        if not args.sqlite_only:
            with postgres(root) as uri:
                url, dsn = pg_database(uri, "hearth_bench_hub")
                (root / "pg").mkdir()
                results["PostgreSQL"] = run("postgresql", url, dsn, root / "pg", args.rows, args.reps)
    m = machine_info()
    print(f"Hub pages over HTTP, {args.rows:,} calls in the log, {args.reps} runs each; machine: {m}")
    for db, rows in results.items():
        print(f"\n{db}                              p50 ms   p95 ms   max ms   page KB")
        for name, p50, p95, worst, size in rows:
            verdict = "PASS" if worst < TARGET_MS else "MISS"
            print(f"  {name:<30} {p50:8.1f} {p95:8.1f} {worst:8.1f} {size / 1024:9.1f}   < 300 ms {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
