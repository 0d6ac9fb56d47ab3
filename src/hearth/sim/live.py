"""des.py's comparison over real HTTP, in compressed time (``hearth sim --live``).

For each run, fresh ``EmulatedOllama`` servers (``workload.servers`` of them) serve on loopback.
Policy "ollama": each tenant's client sends straight to one server (tenant i to server i mod N,
as in des.py). Policy "hearth": a real Hearth (``create_app`` under uvicorn) sits in front of
them, one backend per server, one tenant and one API key per workload tenant.

Time is compressed in the specs, not in the emulator's clock: the servers run ``speed`` times
faster (loads, prompt evaluation, generation, keep_alive) at the emulator's speed 1, and every
duration in Hearth's settings is divided by ``speed``. So what the servers report (Ollama's
load_duration, which Hearth learns its load estimates from) is on the clock Hearth runs on;
the emulator's own compression would report simulated seconds to a gateway counting real ones.

Clients replay the arrivals at ``t / speed`` real seconds with POST /api/generate calls,
streamed unless the tenant's client does not stream (``stream: false``, which lets Hearth
preempt its batch calls), with the tenant's ``keep_alive_s`` (divided by ``speed``) if it has
one. A request's start (prompt evaluation begins, as des.py measures waits) is its first
streamed token minus what the server spent before sending it: the prompt and the tokens of
that first line; without a stream, the answer's arrival minus its service time (a stopped run
starts again from scratch). Times are converted back to simulated seconds.

Everything shares one event loop: servers, Hearth and clients. That keeps them on one clock
and off the GIL's 5 ms switch interval, but lets a busy callback delay the others, so the loop
lag is measured while the trace plays (``LiveResult.loop_lag_*``); times the speed, that is the
error in simulated seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import anyio.lowlevel
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from hearth.app import create_app
from hearth.gateway.auth import Authenticator
from hearth.settings import (
    AlertSettings,
    AuthSettings,
    BackendSettings,
    DiscoverySettings,
    SchedulerSettings,
    ServerSettings,
    Settings,
    TenantSettings,
)
from hearth.sim.des import POLICIES
from hearth.sim.emulator import EmulatedOllama
from hearth.sim.report import TIMED_OUT, Outcome, percentile
from hearth.sim.specs import ModelSpec, ServerSpec
from hearth.sim.workload import Arrival, TenantSpec, Workload, service_seconds
from hearth.store.db import Store

__all__ = ["LiveResult", "compressed", "gateway_settings", "run_live"]

HOST = "127.0.0.1"
DISCOVERY_INTERVAL_S = 10.0  # simulated seconds between Hearth's polls, des.py's poll_s
NO_BOUND_S = 1e9  # simulated seconds: a tenant without max_wait_s (Hearth needs some bound)
LAG_PROBE_S = 0.01  # real seconds between two loop lag samples


@dataclass(slots=True)
class LiveResult:
    policy: str
    outcomes: list[Outcome]  # in arrival order
    loads_by_server: list[int]  # model loads each emulated server did
    loop_lag_p99_s: float  # real seconds the event loop ran late, while the trace played
    loop_lag_max_s: float
    preemptions: int = 0  # calls Hearth stopped to send again (its hearth_preemptions_total)

    @property
    def loads(self) -> int:
        return sum(self.loads_by_server)


async def run_live(
    workload: Workload,
    policy: str,
    speed: float = 100.0,
    timeout: float = 120.0,
    scheduler: SchedulerSettings | None = None,
    hold_models: bool = False,
) -> LiveResult:
    """Play ``workload`` through ``policy`` ("ollama" or "hearth") at ``speed`` simulated seconds
    per real second. ``timeout``: real seconds to wait after the last arrival; requests still
    going then are cancelled and left unfinished. ``scheduler``: Hearth's, in simulated seconds
    (default: Hearth's defaults), scaled here. ``hold_models``: the backends' setting."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}: expected one of {', '.join(POLICIES)}")
    if not speed > 0 or math.isinf(speed):
        raise ValueError("speed must be a positive number")
    if workload.server.compute_runners is not None:
        raise ValueError("server.compute_runners is modelled by the discrete-event simulator only")
    server, models = compressed(workload, speed)
    # One line of streamed tokens per simulated second, as the emulator sends by default.
    emulators = [EmulatedOllama(server, models, 1.0, 1.0 / speed) for _ in range(workload.servers)]
    targets: dict[str, tuple[str, Mapping[str, str]]]
    gateway: str | None = None
    preemptions = 0
    async with contextlib.AsyncExitStack() as stack:
        urls = []
        for emulator in emulators:
            stack.push_async_callback(emulator.stop)
            urls.append(await emulator.start(HOST))
        if policy == "ollama":
            names = list(workload.tenants)
            targets = {t: (urls[names.index(t) % len(urls)], {}) for t in names}
        else:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="hearth-sim-"))
            settings = gateway_settings(workload, urls, speed, data_dir, scheduler, hold_models)
            keys = _create_keys(settings, workload.tenants)
            gateway = await stack.enter_async_context(_serve(settings))
            targets = {t: (gateway, {"Authorization": f"Bearer {key}"}) for t, key in keys.items()}
        session = await stack.enter_async_context(
            aiohttp.ClientSession(
                # Unlimited: the connector must not queue requests that Ollama or Hearth would.
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        )
        lags: list[float] = []
        probe = asyncio.create_task(_probe_lag(lags), name="hearth-sim-lag")
        try:
            outcomes = await _replay(session, workload, targets, speed, timeout)
        finally:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        if gateway is not None:
            preemptions = await _preemptions(session, gateway)
    return LiveResult(
        policy,
        outcomes,
        [e.model.loads for e in emulators],
        loop_lag_p99_s=percentile(lags, 99) or 0.0,
        loop_lag_max_s=max(lags, default=0.0),
        preemptions=preemptions,
    )


def compressed(workload: Workload, speed: float) -> tuple[ServerSpec, dict[str, ModelSpec]]:
    """The workload's server and models running ``speed`` times faster."""
    s = workload.server
    server = dataclasses.replace(
        s,
        keep_alive_s=s.keep_alive_s / speed,  # negative (forever) stays negative
        load_fixed_s=s.load_fixed_s / speed,
        load_gbps=s.load_gbps * speed,
    )
    models = {
        name: dataclasses.replace(
            m, tokens_per_s=m.tokens_per_s * speed, prompt_tokens_per_s=m.prompt_tokens_per_s * speed
        )
        for name, m in workload.models.items()
    }
    return server, models


def gateway_settings(
    workload: Workload,
    urls: Sequence[str],
    speed: float,
    data_dir: str,
    scheduler: SchedulerSettings | None = None,
    hold_models: bool = False,
) -> Settings:
    """Hearth's settings in front of the servers at ``urls``, every duration divided by ``speed``.

    Bounds the workload leaves out stay out: a tenant without max_queue may queue the whole
    trace, one without max_wait_s waits as long as it takes, as in des.py. Ollama's fit_fraction
    has no setting in Hearth; the scheduler assumes Ollama's 0.8.
    """
    s = workload.server
    sched = scheduler or SchedulerSettings()
    backends = [
        BackendSettings(
            name=f"ollama-{i + 1}",
            kind="ollama",
            url=url,
            num_parallel=s.num_parallel,
            max_loaded_models=s.max_loaded_models,
            memory_gb=s.memory_gb,
            keep_alive=s.keep_alive_s / speed,
            hold_models=hold_models,
        )
        for i, url in enumerate(urls)
    ]
    tenants = {
        name: TenantSettings(
            priority=t.priority,
            weight=t.weight,
            max_queue=len(workload.arrivals) if t.max_queue is None else t.max_queue,
            max_wait=(NO_BOUND_S if t.max_wait_s is None else t.max_wait_s) / speed,
        )
        for name, t in workload.tenants.items()
    }
    return Settings(
        server=ServerSettings(host=HOST, data_dir=data_dir, log_level="warning"),
        discovery=DiscoverySettings(interval=DISCOVERY_INTERVAL_S / speed),
        backends=backends,
        auth=AuthSettings(trusted_networks={}),
        # Its thresholds are in real seconds, and a CPU box's slow replies are the point here.
        alerts=AlertSettings(enabled=False),
        tenants=tenants,
        scheduler=SchedulerSettings(
            aging=sched.aging / speed,
            batch_weight=sched.batch_weight,
            horizon=sched.horizon / speed,
            load_fixed=sched.load_fixed / speed,
            load_gbps=sched.load_gbps * speed,
            max_queue=max(sched.max_queue, len(workload.arrivals)),
            preempt=sched.preempt,
            batch_urgency=sched.batch_urgency,
            session_gap=sched.session_gap / speed,
        ),
    )


def _create_keys(settings: Settings, tenants: Mapping[str, TenantSpec]) -> dict[str, str]:
    """One API key per tenant, stored before Hearth starts, as `hearth keys create` does."""
    store = Store(settings.store_url)
    try:
        store.migrate()
        auth = Authenticator(settings, store)
        return {name: auth.create_key(name, "hearth sim")[1] for name in tenants}
    finally:
        store.close()


@contextlib.asynccontextmanager
async def _serve(settings: Settings) -> AsyncIterator[str]:
    """Hearth under uvicorn on this loop, on an ephemeral loopback port; yields its URL."""
    config = uvicorn.Config(
        create_app(settings),
        host=HOST,
        port=0,
        lifespan="on",
        ws="none",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="hearth-sim-gateway")
    try:
        while not server.started:  # uvicorn has no event to wait on
            if task.done():
                await task  # its exception, if it failed
                raise RuntimeError("hearth stopped before it started")
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        # Starlette streams through anyio, which imports its asyncio backend on first use: some
        # 25 ms that would stall the whole loop as the first requests arrive. Pay it now.
        await anyio.lowlevel.checkpoint()
        yield f"http://{HOST}:{port}"
    finally:
        server.should_exit = True
        await task


async def _preemptions(session: aiohttp.ClientSession, url: str) -> int:
    """What the gateway's /metrics count of preempted calls says, over all backends."""
    async with session.get(url + "/metrics") as resp:
        text = await resp.text()
    return round(
        sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "hearth_preemptions_total"
        )
    )


async def _probe_lag(lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + LAG_PROBE_S
        await asyncio.sleep(LAG_PROBE_S)
        lags.append(max(0.0, loop.time() - asked))


async def _replay(
    session: aiohttp.ClientSession,
    workload: Workload,
    targets: Mapping[str, tuple[str, Mapping[str, str]]],
    speed: float,
    timeout: float,
) -> list[Outcome]:
    loop = asyncio.get_running_loop()
    outcomes = [
        Outcome(a, None, None, service_seconds(workload.models[a.model], a.prompt_tokens, a.output_tokens))
        for a in workload.arrivals
    ]
    t0 = loop.time()

    def now() -> float:
        return (loop.time() - t0) * speed

    tasks: list[asyncio.Task[None]] = []
    try:
        for a, outcome in zip(workload.arrivals, outcomes, strict=True):
            delay = t0 + a.t / speed - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            url, headers = targets[a.tenant]
            t = workload.tenants[a.tenant]
            keep_alive = None if t.keep_alive_s is None else t.keep_alive_s / speed  # -1 stays negative
            call = _call(session, url, headers, workload.models[a.model], outcome, now, t.stream, keep_alive)
            tasks.append(asyncio.create_task(call))
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
    finally:
        for task in tasks:
            task.cancel()  # those still going: left unfinished
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError):
            raise r
    return outcomes


async def _call(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str],
    model: ModelSpec,
    out: Outcome,
    now: Callable[[], float],
    stream: bool = True,
    keep_alive: float | None = None,
) -> None:
    a: Arrival = out.arrival
    body: dict[str, object] = {
        "model": a.model,
        "prompt": "x" * (4 * a.prompt_tokens),  # the emulator counts a token per 4 characters
        "stream": stream,
        "options": {"num_predict": a.output_tokens},
    }
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    try:
        async with session.post(url + "/api/generate", json=body, headers=headers) as resp:
            if resp.status != 200:
                out.rejected = _refusal(resp.status, _message(await resp.read()))
                return
            if not stream:
                whole = json.loads(await resp.read())
                if "error" in whole:
                    out.rejected = f"error: {whole['error']}"
                    return
                out.finished_at = now()
                out.started_at = max(a.t, out.finished_at - out.service_s)
                return
            async for raw in resp.content:
                if not raw.strip():
                    continue
                line = json.loads(raw)
                if "error" in line:
                    out.rejected = f"error in stream: {line['error']}"
                    return
                text = line.get("response")
                if out.started_at is None and text:
                    # The server sends a line once its tokens are generated, after the prompt.
                    before = a.prompt_tokens / model.prompt_tokens_per_s
                    before += len(text.split()) / model.tokens_per_s
                    # Never before the arrival: the loop may wake a hair early.
                    out.started_at = max(a.t, now() - before)
                if line.get("done"):
                    out.finished_at = now()
                    return
            out.rejected = "error: the stream ended without a done line"
    except (aiohttp.ClientError, ValueError) as exc:
        out.rejected = f"error: {type(exc).__name__}: {exc}"


def _refusal(status: int, message: str) -> str:
    """Outcome.rejected for an error status, in report.py's terms (a bound reached: timed out)."""
    if status == 429:
        kind = "queue full"
    elif status == 503 and message.startswith("waited "):  # Hearth's QueueTimeout
        kind = TIMED_OUT
    elif status == 503:
        kind = "server busy"
    else:
        kind = "error"
    return f"{kind} ({status}: {message})"


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace").strip()
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):  # the OpenAI shape
        error = error.get("message")
    return str(error) if error is not None else raw.decode(errors="replace").strip()
