"""Hearth gateway benchmark: the overhead Hearth adds in front of a fast fake Ollama.

    .venv/bin/python bench/gateway.py            # full run, a few minutes
    .venv/bin/python bench/gateway.py --quick    # smoke run, under 30 s
    .venv/bin/python bench/gateway.py --json     # machine-readable output on stdout

Starts ``bench/fast_backend.py`` and ``hearth serve`` as subprocesses on free ports, then
measures (all non-streaming requests are ``POST /api/chat`` with ``"stream": false``, which Hearth
passes through to the Ollama backend untouched):

1. concurrency 1: sequential requests on one keep-alive connection (http.client), directly to
   the backend and through Hearth, interleaved in blocks; p50/p90/p99 each and the added latency;
2. concurrency 64: throughput and latency with ``wrk`` (or a multiprocess Python load generator
   when wrk is missing), directly and through Hearth;
3. RSS of the Hearth process after warm-up and after ``--requests`` (100,000) more requests,
   counted from the concurrency-64 run through Hearth;
4. streaming: NDJSON lines (chunks) per second relayed by Hearth, one client and several.

By default the scheduler places every process. ``--pin`` puts Hearth alone on the first CPU and
everything else (this script, the fake backend, the load generator) on the others; on small VMs
that makes every hop a cross-CPU wake-up, which can cost more than it saves (see README.md).

This is a benchmark that prints numbers, not a test: it exits non-zero only if a phase fails,
never because a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import math
import multiprocessing
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httptools
import uvloop
from machine import machine_info  # bench/machine.py, beside this script

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MODEL = "bench:latest"
CHAT_PATH = "/api/chat"
BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hello in one short sentence."},
        ],
        "stream": False,
        "options": {"temperature": 0.2},
    },
    separators=(",", ":"),
).encode()
HEADERS = {"Content-Type": "application/json"}
# Set once Hearth has a key for the bench tenant (auth and limits on, as in production); every
# client then sends it, to the backend too (which ignores it), so both paths carry the same bytes.
AUTH_TOKEN = ""


def _use_key(token: str) -> None:
    global AUTH_TOKEN
    AUTH_TOKEN = token
    HEADERS["Authorization"] = f"Bearer {token}"


# Limits the bench tenant has: high enough never to refuse, so every check runs and passes.
BENCH_TENANT = (
    "tenants:\n"
    "  bench: {rpm: 100000000, tpm: 1000000000000, tokens_per_day: 1000000000000, "
    "tokens_per_month: 1000000000000, max_concurrent: 100000}\n"
)

# Targets from the issue.
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
TARGET_RPS = 2000.0
TARGET_RSS_GROWTH_PCT = 10.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- results ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Latency:
    """Latency percentiles in milliseconds."""

    n: int
    mean: float
    p50: float
    p90: float
    p99: float
    max: float

    @classmethod
    def of(cls, samples_ms: list[float] | array[float]) -> Latency:
        s = sorted(samples_ms)
        if not s:
            return cls(0, math.nan, math.nan, math.nan, math.nan, math.nan)
        return cls(len(s), sum(s) / len(s), _pct(s, 50), _pct(s, 90), _pct(s, 99), s[-1])


def _pct(sorted_samples: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    k = max(0, math.ceil(p / 100 * len(sorted_samples)) - 1)
    return sorted_samples[k]


@dataclass(slots=True)
class Load:
    """One closed-loop load run at a fixed concurrency."""

    tool: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    latency: Latency
    error_kinds: dict[str, int] = field(default_factory=dict)  # wrk: connect/read/write/status/timeout


@dataclass(slots=True)
class Stream:
    clients: int
    streams: int
    chunks: int  # NDJSON lines received, the final done line included
    seconds: float
    chunks_per_s: float
    first_chunk_ms_p50: float
    first_chunk_ms_p99: float


@dataclass(slots=True)
class Rss:
    idle_kib: int = 0
    warm_kib: int = 0
    after_kib: int = 0
    requests_between: int = 0
    growth_pct: float = 0.0
    # Sampled every half second during the run: a leak keeps climbing, a warm-up levels off.
    samples_kib: list[int] = field(default_factory=list)
    second_half_growth_pct: float = 0.0
    # CPU use during the run, % of one CPU: hearth, backend, bench (load generator), other.
    cpu_pct: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Report:
    date: str
    machine: dict[str, Any]
    options: dict[str, Any]
    c1_direct: Latency | None = None
    c1_hearth: Latency | None = None
    c64_direct: Load | None = None
    c64_hearth: Load | None = None
    rss: Rss | None = None
    stream_direct: list[Stream] = field(default_factory=list)
    stream_hearth: list[Stream] = field(default_factory=list)
    # Sequential one-token streams: time to the first body byte, direct and through Hearth.
    ttfb_direct: Stream | None = None
    ttfb_hearth: Stream | None = None
    hearth_log: list[str] = field(default_factory=list)  # WARNING/ERROR lines Hearth logged
    failures: list[str] = field(default_factory=list)  # phases that could not complete

    def added(self, which: str) -> dict[str, float]:
        out: dict[str, float] = {}
        if which == "c1" and self.c1_direct and self.c1_hearth:
            d, h = self.c1_direct, self.c1_hearth
        elif which == "c64" and self.c64_direct and self.c64_hearth:
            d, h = self.c64_direct.latency, self.c64_hearth.latency
        else:
            return out
        for p in ("p50", "p90", "p99"):
            out[p] = getattr(h, p) - getattr(d, p)
        return out

    def verdicts(self) -> dict[str, bool]:
        v: dict[str, bool] = {}
        a1 = self.added("c1")
        if a1:
            v["added_p50_c1"] = a1["p50"] <= TARGET_ADDED_P50_MS
            v["added_p99_c1"] = a1["p99"] <= TARGET_ADDED_P99_MS
        if self.c64_hearth:
            v["rps_c64"] = self.c64_hearth.rps >= TARGET_RPS
        if self.rss:
            v["rss_growth"] = self.rss.growth_pct < TARGET_RSS_GROWTH_PCT
        return v

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["added_c1_ms"] = self.added("c1")
        d["added_c64_ms"] = self.added("c64")
        d["targets"] = {
            "added_p50_c1_ms": TARGET_ADDED_P50_MS,
            "added_p99_c1_ms": TARGET_ADDED_P99_MS,
            "rps_c64": TARGET_RPS,
            "rss_growth_pct": TARGET_RSS_GROWTH_PCT,
        }
        d["pass"] = self.verdicts()
        return d


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_s() -> float:
    """CPU seconds all CPUs have spent busy (not idle or iowait) since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Who used the CPUs during a phase: Hearth, the fake backend, the load generator and this
    script, and everything else on the machine (other jobs make the numbers noisy)."""

    def __init__(self, hearth: int, backend: int) -> None:
        self.pids = {"hearth": hearth, "backend": backend}

    def _read(self) -> dict[str, float]:
        t = os.times()
        out = {name: proc_cpu_s(pid) for name, pid in self.pids.items()}
        out["bench"] = t.user + t.system + t.children_user + t.children_system  # wrk is a child
        out["machine"] = machine_cpu_s()
        out["wall"] = time.monotonic()
        return out

    def __enter__(self) -> CpuMeter:
        self.start = self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._read()
        d = {k: end[k] - self.start[k] for k in end}
        wall = d.pop("wall")
        machine = d.pop("machine")
        self.pct = {k: round(v / wall * 100, 1) for k, v in d.items()}  # % of one CPU
        self.pct["other"] = round(max(0.0, machine - sum(d.values())) / wall * 100, 1)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _affinity(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None

    def apply() -> None:
        os.sched_setaffinity(0, cpus)

    return apply


class Services:
    """The fake backend and Hearth as subprocesses, stopped on exit."""

    def __init__(
        self,
        tmp: Path,
        hearth_cpus: set[int] | None,
        log_level: str,
        env: dict[str, str] | None = None,
        no_auth: bool = False,
    ) -> None:
        self.tmp = tmp
        self.no_auth = no_auth
        self.env = env or {}
        self.backend_port = free_port()
        self.hearth_port = free_port()
        self.hearth_cpus = hearth_cpus
        self.log_level = log_level
        self.procs: list[subprocess.Popen[bytes]] = []
        self.hearth: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def start(self) -> None:
        py = sys.executable
        blog = (self.tmp / "backend.log").open("wb")
        self.procs.append(
            subprocess.Popen(
                [py, str(HERE / "fast_backend.py"), "--port", str(self.backend_port)],
                stdout=blog,
                stderr=subprocess.STDOUT,
            )
        )
        backend_url = f"http://127.0.0.1:{self.backend_port}"
        _wait_http(f"{backend_url}/api/tags", MODEL, self.procs[-1], self.tmp / "backend.log")
        cfg = self.tmp / "hearth.yaml"
        auth = "auth: {trusted_networks: {127.0.0.1/32: bench}}\n" if self.no_auth else BENCH_TENANT
        cfg.write_text(
            f"server: {{host: 127.0.0.1, port: {self.hearth_port}, data_dir: {self.tmp / 'data'}, "
            f"log_level: {self.log_level}}}\n"
            "discovery: {interval: 3600}\n"
            "backends:\n"
            # The fast backend answers any number of requests at once: give the scheduler as
            # many slots as the load has clients, so it measures overhead, not queueing.
            f'  - {{name: fast, kind: ollama, url: "{backend_url}", num_parallel: 1024}}\n' + auth
        )
        hearth_bin = Path(sys.executable).with_name("hearth")
        cmd = [str(hearth_bin)] if hearth_bin.exists() else [py, "-m", "hearth.cli"]
        if not self.no_auth:
            made = subprocess.run(
                [*cmd, "keys", "create", "--config", str(cfg), "--tenant", "bench"],
                capture_output=True,
                check=True,
                cwd=self.tmp,
                env={**os.environ, **self.env},
            )
            _use_key(made.stdout.decode().strip())
        hlog = (self.tmp / "hearth.log").open("wb")
        self.hearth = subprocess.Popen(
            [*cmd, "serve", "--config", str(cfg)],
            stdout=hlog,
            stderr=subprocess.STDOUT,
            preexec_fn=_affinity(self.hearth_cpus),
            cwd=self.tmp,
            env={**os.environ, **self.env},
        )
        self.procs.append(self.hearth)
        # Ready once discovery has run: the model shows in Hearth's own /api/tags.
        hearth_url = f"http://127.0.0.1:{self.hearth_port}"
        _wait_http(f"{hearth_url}/api/tags", MODEL, self.hearth, self.tmp / "hearth.log")

    @property
    def hearth_pid(self) -> int:
        assert self.hearth is not None
        return self.hearth.pid

    def log_problems(self, limit: int = 20) -> list[str]:
        path = self.tmp / "hearth.log"
        if not path.exists():
            return []
        lines = path.read_text(errors="replace").splitlines()
        bad = [ln for ln in lines if any(w in ln for w in ("WARNING", "ERROR", "CRITICAL", "Traceback"))]
        return bad[-limit:]

    def check_alive(self) -> None:
        for p, name in zip(self.procs, ("backend", "hearth"), strict=False):
            if p.poll() is not None:
                tail = (self.tmp / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{tail}")


def _tail(logfile: Path) -> str:
    return logfile.read_text(errors="replace")[-2000:]


def _wait_http(
    url: str, needle: str, proc: subprocess.Popen[bytes], logfile: Path, timeout: float = 30
) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited ({proc.returncode}):\n{_tail(logfile)}")
        try:
            req = urllib.request.Request(
                url, headers={k: v for k, v in HEADERS.items() if k != "Content-Type"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                if needle in r.read().decode():
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s ({last!r}):\n{_tail(logfile)}")


# -- concurrency 1: http.client, one keep-alive connection ------------------------------------


def _sequential(conn: http.client.HTTPConnection, n: int, out: list[float] | None) -> None:
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        conn.request("POST", CHAT_PATH, BODY, HEADERS)
        resp = conn.getresponse()
        data = resp.read()
        t1 = clock()
        if resp.status != 200 or not data:
            raise RuntimeError(f"unexpected response {resp.status}: {data[:200]!r}")
        if out is not None:
            out.append((t1 - t0) / 1e6)


def bench_c1(direct_port: int, hearth_port: int, n: int, warmup: int, block: int) -> tuple[Latency, Latency]:
    """Sequential requests, direct and through Hearth alternating in blocks so drift (CPU
    frequency, other load) hits both alike."""
    direct = http.client.HTTPConnection("127.0.0.1", direct_port)
    hearth = http.client.HTTPConnection("127.0.0.1", hearth_port)
    d: list[float] = []
    h: list[float] = []
    try:
        _sequential(direct, warmup, None)
        _sequential(hearth, warmup, None)
        gc.collect()
        gc.disable()  # the client's own collections would land on random samples
        done = 0
        while done < n:
            k = min(block, n - done)
            _sequential(direct, k, d)
            _sequential(hearth, k, h)
            done += k
    finally:
        gc.enable()
        direct.close()
        hearth.close()
    return Latency.of(d), Latency.of(h)


# -- concurrency N: wrk, or a Python load generator --------------------------------------------

_WRK_LUA = """
wrk.method = "POST"
wrk.path = "%(path)s"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
%(auth)s

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,"status":%%d,' ..
    '"timeout":%%d,"mean":%%f,"p50":%%d,"p90":%%d,"p99":%%d,"max":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def wrk_path() -> str | None:
    return shutil.which("wrk")


def run_wrk(port: int, concurrency: int, seconds: float, threads: int, script: Path) -> Load:
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stdout[-1500:]}{res.stderr[-1500:]}")
    w = json.loads(line[len("WRKJSON ") :])
    kinds = {k: w[k] for k in ("connect", "read", "write", "status", "timeout") if w[k]}
    errors = sum(kinds.values())
    secs = w["duration_us"] / 1e6
    ms = {k: w[k] / 1000 for k in ("mean", "p50", "p90", "p99", "max")}  # wrk reports microseconds
    lat = Latency(w["requests"], ms["mean"], ms["p50"], ms["p90"], ms["p99"], ms["max"])
    return Load("wrk", concurrency, w["requests"], errors, secs, w["requests"] / secs, lat, kinds)


class _Conn(asyncio.Protocol):
    """A raw keep-alive HTTP/1.1 client connection: httptools parses, one request at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.lines = 0
        self.first: float = 0.0
        self.head = b""  # the start of the body, for error messages
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        if not self.first:
            self.first = time.perf_counter()
            self.head = body[:300]
        self.lines += body.count(b"\n")

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    async def request(self, raw: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.lines = 0
        self.first = 0.0
        self.head = b""
        self.transport.write(raw)
        return await self.waiter


def _raw_request(port: int, body: bytes) -> bytes:
    return (
        f"POST {CHAT_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        + (f"Authorization: Bearer {AUTH_TOKEN}\r\n" if AUTH_TOKEN else "")
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def _pyload_worker(port: int, conns: int, seconds: float) -> tuple[int, int, bytes, float]:
    loop = asyncio.get_running_loop()
    raw = _raw_request(port, BODY)
    lat = array("f")
    errors = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def one() -> None:
        nonlocal errors
        _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
        clock = time.perf_counter
        while True:
            t0 = clock()
            if t0 >= deadline:
                break
            try:
                status = await conn.request(raw)
            except ConnectionError:
                errors += 1
                break
            lat.append((clock() - t0) * 1000)
            if status != 200:
                errors += 1
        if conn.transport is not None:
            conn.transport.close()

    await asyncio.gather(*(one() for _ in range(conns)))
    return len(lat), errors, lat.tobytes(), time.perf_counter() - start


def _pyload_proc(args: tuple[int, int, float]) -> tuple[int, int, bytes, float]:
    return uvloop.run(_pyload_worker(*args))


def run_pyload(port: int, concurrency: int, seconds: float, procs: int) -> Load:
    procs = max(1, min(procs, concurrency))
    split = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(procs) as pool:
        results = pool.map(_pyload_proc, [(port, c, seconds) for c in split])
    lat = array("f")
    for _, _, b, _ in results:
        lat.frombytes(b)
    n = sum(r[0] for r in results)
    secs = max(r[3] for r in results)
    errors = sum(r[1] for r in results)
    return Load(f"python x{procs}", concurrency, n, errors, secs, n / secs, Latency.of(lat))


class LoadGen:
    def __init__(self, use_wrk: bool, tmp: Path, threads: int, procs: int) -> None:
        self.use_wrk = use_wrk
        self.threads = threads
        self.procs = procs
        self.script = tmp / "post.lua"

    def _write_script(self) -> None:
        # Written when a run starts: the API key exists only once Hearth's services are up.
        auth = f'wrk.headers["Authorization"] = "Bearer {AUTH_TOKEN}"' if AUTH_TOKEN else ""
        self.script.write_text(_WRK_LUA % {"path": CHAT_PATH, "body": BODY.decode(), "auth": auth})

    @property
    def name(self) -> str:
        return f"wrk -t{self.threads}" if self.use_wrk else f"python load generator x{self.procs}"

    def run(self, port: int, concurrency: int, seconds: float) -> Load:
        if self.use_wrk:
            self._write_script()
            return run_wrk(port, concurrency, seconds, self.threads, self.script)
        return run_pyload(port, concurrency, seconds, self.procs)


# -- streaming ------------------------------------------------------------------------------------


async def _streams(port: int, clients: int, per_client: int, chunks: int) -> Stream:
    loop = asyncio.get_running_loop()
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Count."}],
            "stream": True,
            "options": {"num_predict": chunks},
        },
        separators=(",", ":"),
    ).encode()
    raw = _raw_request(port, body)
    firsts: list[float] = []
    total = 0

    async def client() -> None:
        nonlocal total
        _, conn = await loop.create_connection(_Conn, "127.0.0.1", port)
        try:
            for _ in range(per_client):
                t0 = time.perf_counter()
                status = await conn.request(raw)
                if status != 200 or conn.lines != chunks + 1:
                    raise RuntimeError(
                        f"stream from :{port}: status {status}, {conn.lines} lines, expected {chunks + 1}: "
                        f"{conn.head.decode(errors='replace')}"
                    )
                firsts.append((conn.first - t0) * 1000)
                total += conn.lines
        finally:
            if conn.transport is not None:
                conn.transport.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    secs = time.perf_counter() - start
    first = Latency.of(firsts)
    return Stream(clients, clients * per_client, total, secs, total / secs, first.p50, first.p99)


def bench_stream(port: int, clients: int, per_client: int, chunks: int) -> Stream:
    return uvloop.run(_streams(port, clients, per_client, chunks))


# -- the run --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Plan:
    c1_requests: int
    c1_warmup: int
    c1_block: int
    concurrency: int
    direct_seconds: float
    warmup_seconds: float
    requests: int
    stream_chunks: int
    stream_clients: int
    stream_per_client: int
    ttfb_streams: int


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        plan = Plan(1000, 200, 250, args.concurrency, 2, 1, 10_000, 1000, 4, 1, 200)
    else:
        plan = Plan(10_000, 1000, 500, args.concurrency, 10, 5, 100_000, 1000, 8, 3, 2000)
    if args.requests is not None:
        plan.requests = args.requests
    if args.c1_requests is not None:
        plan.c1_requests = args.c1_requests
    if args.stream_chunks is not None:
        plan.stream_chunks = args.stream_chunks
    return plan


class RssSampler:
    """Reads a process's RSS every ``interval`` seconds in a thread while a load runs."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append(rss_kib(self.pid))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def sustained(svc: Services, gen: LoadGen, plan: Plan, est_rps: float, rss: Rss) -> Load:
    """Run through Hearth until ``plan.requests`` requests have been answered: one main run sized
    from the warm-up rate (it gives the throughput and latency figures), topped up if short."""
    target = plan.requests
    seconds = min(max(target / max(est_rps, 1.0) * 1.05, 2.0), 600.0)
    log(f"c={plan.concurrency} through Hearth: ~{seconds:.0f}s for {target:,} requests (RSS phase)")
    assert svc.hearth is not None
    meter = CpuMeter(svc.hearth_pid, svc.procs[0].pid)
    with RssSampler(svc.hearth_pid) as sampler, meter:
        main = gen.run(svc.hearth_port, plan.concurrency, seconds)
        count = main.requests
        while count < target:
            svc.check_alive()
            more = (target - count) / max(main.rps, 1.0) * 1.1 + 1
            log(f"topping up: {target - count:,} more requests (~{more:.0f}s)")
            top = gen.run(svc.hearth_port, plan.concurrency, more)
            if top.requests == 0:
                raise RuntimeError("no requests completed while topping up")
            count += top.requests
            main.errors += top.errors
            for k, v in top.error_kinds.items():
                main.error_kinds[k] = main.error_kinds.get(k, 0) + v
    rss.requests_between = count
    rss.cpu_pct = meter.pct
    step = max(1, len(sampler.samples) // 20)
    rss.samples_kib = sampler.samples[::step]
    if len(sampler.samples) >= 2:
        mid = sampler.samples[len(sampler.samples) // 2]
        rss.second_half_growth_pct = (sampler.samples[-1] - mid) / mid * 100
    return main


def run(args: argparse.Namespace) -> Report:
    plan = make_plan(args)
    ncpu = len(os.sched_getaffinity(0))
    hearth_cpus: set[int] | None = None
    if args.pin and ncpu >= 2:
        cpus = sorted(os.sched_getaffinity(0))
        hearth_cpus = {cpus[0]}
        os.sched_setaffinity(0, set(cpus[1:]))  # children (backend, load generator) inherit it
    use_wrk = wrk_path() is not None and not args.python_load
    if not use_wrk and not args.python_load:
        log("wrk not found; using the Python load generator (install wrk: apt-get install -y wrk)")
    report = Report(
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        machine=machine_info(),
        options={
            "quick": args.quick,
            "pinning": (
                f"hearth on cpu {sorted(hearth_cpus)}, others on {sorted(os.sched_getaffinity(0))}"
                if hearth_cpus
                else "none"
            ),
            "load_generator": "",
            **asdict(plan),
        },
    )
    hearth_env = dict(kv.split("=", 1) for kv in args.hearth_env)
    report.options["hearth_env"] = hearth_env
    report.options["auth"] = "trusted network, no limits" if args.no_auth else "API key + tenant limits"
    with (
        tempfile.TemporaryDirectory(prefix="hearth-bench-") as tmpdir,
        Services(Path(tmpdir), hearth_cpus, args.log_level, hearth_env, args.no_auth) as svc,
    ):
        tmp = Path(tmpdir)
        gen = LoadGen(use_wrk, tmp, args.wrk_threads, args.procs)
        report.options["load_generator"] = gen.name
        log(f"starting fast backend (:{svc.backend_port}) and hearth (:{svc.hearth_port})")
        svc.start()
        rss = Rss(idle_kib=rss_kib(svc.hearth_pid))
        report.rss = rss

        log(f"c=1: {plan.c1_requests:,} sequential requests each, direct and through Hearth")
        report.c1_direct, report.c1_hearth = bench_c1(
            svc.backend_port, svc.hearth_port, plan.c1_requests, plan.c1_warmup, plan.c1_block
        )
        svc.check_alive()

        c = plan.concurrency
        log(f"c={c} direct: {plan.direct_seconds:.0f}s with {gen.name}")
        gen.run(svc.backend_port, c, 1)
        report.c64_direct = gen.run(svc.backend_port, c, plan.direct_seconds)

        log(f"c={c} through Hearth: {plan.warmup_seconds:.0f}s warm-up")
        warm = gen.run(svc.hearth_port, c, plan.warmup_seconds)
        svc.check_alive()
        rss.warm_kib = rss_kib(svc.hearth_pid)
        report.c64_hearth = sustained(svc, gen, plan, warm.rps, rss)
        svc.check_alive()
        rss.after_kib = rss_kib(svc.hearth_pid)
        rss.growth_pct = (rss.after_kib - rss.warm_kib) / rss.warm_kib * 100

        n = plan.stream_chunks
        for label, port, out in (
            ("direct", svc.backend_port, report.stream_direct),
            ("through Hearth", svc.hearth_port, report.stream_hearth),
        ):
            log(f"streaming {label}: {n}-chunk streams, 1 client and {plan.stream_clients} clients")
            try:
                bench_stream(port, 1, 1, n)  # warm-up
                out.append(bench_stream(port, 1, plan.stream_per_client * 2, n))
                out.append(bench_stream(port, plan.stream_clients, plan.stream_per_client, n))
                ttfb = bench_stream(port, 1, plan.ttfb_streams, 1)
                if port == svc.backend_port:
                    report.ttfb_direct = ttfb
                else:
                    report.ttfb_hearth = ttfb
            except (RuntimeError, OSError) as exc:
                log(f"streaming {label} failed: {exc}")
                report.failures.append(f"streaming {label}: {exc}")
        svc.check_alive()
        report.hearth_log = svc.log_problems()
    return report


# -- output ---------------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def _verdict(ok: bool | None) -> str:
    return "" if ok is None else ("PASS" if ok else "MISS")


def table(r: Report) -> Iterator[str]:
    m = r.machine
    yield f"Hearth gateway benchmark, {r.date}"
    yield (
        f"machine: {m['cpus']} CPUs, {m['cpu_model']}, {m['ram_gib']} GiB RAM, "
        f"Linux {m['kernel']}, Python {m['python']}"
    )
    yield f"pinning: {r.options['pinning']}; load generator: {r.options['load_generator']}"
    yield ""
    v = r.verdicts()
    w = 34
    yield f"{'non-streaming POST /api/chat':<{w}}{'direct':>10}{'hearth':>10}{'added':>10}   target"
    a1 = r.added("c1")
    if r.c1_direct and r.c1_hearth:
        d, h = r.c1_direct, r.c1_hearth
        yield f"c=1 ({h.n:,} req each)"
        for p, tgt, key in (
            ("p50", f"<= {TARGET_ADDED_P50_MS:g} ms", "added_p50_c1"),
            ("p90", "", ""),
            ("p99", f"<= {TARGET_ADDED_P99_MS:g} ms", "added_p99_c1"),
        ):
            yield (
                f"{'  latency ' + p + ' (ms)':<{w}}{_fmt(getattr(d, p)):>10}{_fmt(getattr(h, p)):>10}"
                f"{_fmt(a1[p]):>10}   {tgt} {_verdict(v.get(key)) if key else ''}".rstrip()
            )
    if r.c64_direct and r.c64_hearth:
        d64, h64 = r.c64_direct, r.c64_hearth
        a64 = r.added("c64")
        yield f"c={h64.concurrency} ({h64.requests:,} requests through hearth in the main run)"
        for p in ("p50", "p90", "p99"):
            yield (
                f"{'  latency ' + p + ' (ms)':<{w}}{_fmt(getattr(d64.latency, p)):>10}"
                f"{_fmt(getattr(h64.latency, p)):>10}{_fmt(a64[p]):>10}"
            )
        yield (
            f"{'  throughput (req/s)':<{w}}{_fmt(d64.rps, 0):>10}{_fmt(h64.rps, 0):>10}{'':>10}   "
            f">= {TARGET_RPS:,.0f} {_verdict(v.get('rps_c64'))}"
        )
        kinds = ", ".join(f"{k} {v}" for k, v in h64.error_kinds.items())
        yield f"{'  errors':<{w}}{d64.errors:>10}{h64.errors:>10}" + (f"   ({kinds})" if kinds else "")
    yield ""
    if r.stream_direct and r.stream_hearth:
        yield f"{'streaming /api/chat (NDJSON lines)':<{w}}{'direct':>10}{'hearth':>10}{'ratio':>10}"
        for sd, sh in zip(r.stream_direct, r.stream_hearth, strict=True):
            plural = "s" if sh.clients > 1 else ""
            label = f"  chunks/s, {sh.clients} client{plural} x {sh.streams // sh.clients}"
            yield (
                f"{label:<{w}}{_fmt(sd.chunks_per_s, 0):>10}{_fmt(sh.chunks_per_s, 0):>10}"
                f"{_fmt(sh.chunks_per_s / sd.chunks_per_s, 2):>10}"
            )
        td, th = r.ttfb_direct, r.ttfb_hearth
        if td and th:
            yield f"  first chunk, {th.streams:,} sequential 1-token streams"
            for label, dv, hv in (
                ("p50", td.first_chunk_ms_p50, th.first_chunk_ms_p50),
                ("p99", td.first_chunk_ms_p99, th.first_chunk_ms_p99),
            ):
                row = f"{'    ' + label + ' (ms)':<{w}}{_fmt(dv):>10}{_fmt(hv):>10}"
                yield f"{row}{_fmt(hv - dv):>10}  (added)"
        yield ""
    if r.rss:
        s = r.rss
        yield "hearth RSS (MiB)"
        yield f"  idle after start-up              {s.idle_kib / 1024:10.1f}"
        yield f"  after warm-up (baseline)         {s.warm_kib / 1024:10.1f}"
        yield f"  after {s.requests_between:>9,} more requests    {s.after_kib / 1024:10.1f}"
        yield (
            f"  growth vs baseline               {s.growth_pct:+9.1f}%   < {TARGET_RSS_GROWTH_PCT:g}% "
            f"{_verdict(v.get('rss_growth'))}"
        )
        yield f"  growth over the 2nd half of run  {s.second_half_growth_pct:+9.1f}%   (~0 = levelled off)"
        if s.samples_kib:
            yield "  during the run (MiB): " + " ".join(f"{k / 1024:.0f}" for k in s.samples_kib)
        if s.cpu_pct:
            yield ""
            yield "CPU during the c=64 run through Hearth (% of one CPU; 'other' is outside the benchmark):"
            yield "  " + ", ".join(f"{k} {v:.0f}%" for k, v in s.cpu_pct.items())


def problems(r: Report) -> Iterator[str]:
    if r.failures:
        yield ""
        yield "failed phases:"
        yield from (f"  {f}" for f in r.failures)
    if r.hearth_log:
        yield ""
        yield "hearth logged (last WARNING/ERROR lines):"
        yield from (f"  {ln}" for ln in r.hearth_log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small smoke run (under 30 s)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument(
        "--requests", type=int, help="requests through Hearth between the two RSS readings (default 100000)"
    )
    ap.add_argument("--c1-requests", type=int, help="sequential requests per target at c=1 (default 10000)")
    ap.add_argument("--concurrency", type=int, default=64, help="connections for the load phase (default 64)")
    ap.add_argument("--stream-chunks", type=int, help="chunks per stream (default 1000)")
    ap.add_argument(
        "--python-load", action="store_true", help="use the Python load generator even if wrk exists"
    )
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1: cheapest)")
    ap.add_argument("--procs", type=int, default=2, help="processes for the Python load generator")
    ap.add_argument(
        "--pin",
        action="store_true",
        help="pin Hearth to the first CPU and everything else to the others (see bench/README.md)",
    )
    ap.add_argument(
        "--hearth-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for Hearth, e.g. HEARTH_STORE__LOG_REQUESTS=false (repeatable)",
    )
    ap.add_argument("--log-level", default="info", help="Hearth's server.log_level (default info)")
    ap.add_argument(
        "--no-auth",
        action="store_true",
        help="trust loopback instead of sending an API key (default: a key and tenant limits, all checked)",
    )
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    report = run(args)
    log(f"done in {time.monotonic() - t0:.0f}s")
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print("\n".join([*table(report), *problems(report)]))
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
