"""create_app(settings) -> ASGI app: the only place objects are wired together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from hearth.api.admin import AdminAPI
from hearth.api.auth import AuthMiddleware
from hearth.api.hub import HubAPI
from hearth.api.metrics import MetricsAPI
from hearth.api.ollama import OllamaAPI
from hearth.api.openai import OpenAIAPI
from hearth.api.replay import ReplayAPI
from hearth.api.traces import TracesAPI
from hearth.api.usage import UsageAPI
from hearth.backends.pool import Pool
from hearth.gateway.auth import Authenticator
from hearth.gateway.catalog import Catalog
from hearth.gateway.dispatch import Gateway
from hearth.gateway.limits import Limits
from hearth.gateway.manage import Manager
from hearth.gateway.records import RequestLog
from hearth.gateway.router import Router
from hearth.gateway.scheduler import Scheduler
from hearth.observability.alerts import Alerts
from hearth.observability.metrics import Metrics
from hearth.observability.otel import OtelExporter
from hearth.settings import Settings, TenantSettings
from hearth.store.db import Store
from hearth.store.retention import Retention

log = logging.getLogger("hearth")


def create_app(settings: Settings) -> Starlette:
    router = Router(settings)
    pool = Pool(settings)
    store = Store(settings.store_url)
    registry = CollectorRegistry()  # per app: two apps in one process never share a series
    scheduler = Scheduler(settings, pool)
    metrics = Metrics(registry, pool, settings.aliases, scheduler)
    records = RequestLog(
        store if settings.store.log_requests else None,
        settings.store.flush_interval,
        settings.store.max_pending,
        metrics=metrics,
    )
    metrics.watch(records)
    # OTLP: off unless an endpoint is set; then one span per call, sent from the SDK's thread.
    otel = OtelExporter(settings.otlp, settings.backends) if settings.otlp.endpoint else None
    if otel is not None:
        records.exporter = otel.export
    retention = Retention(settings, store, registry)

    def policy_of(tenant: str) -> TenantSettings:
        # The config file's, with the limits edited at run time (auth is built below).
        return auth.tenants.policy(tenant)

    alerts = Alerts(settings, store, flush=records.flush)
    if settings.alerts.enabled:
        metrics.listeners.append(alerts.observe)  # durations and failures, per model
        pool.listeners.append(alerts.backend_polled)  # when a backend went down
    limits = Limits(settings.limits, store, settings.redis)
    gateway = Gateway(pool, router, settings.routing.max_attempts, records, limits, scheduler)
    catalog = Catalog(pool, router)
    auth = Authenticator(settings, store)
    routes: list[BaseRoute] = [
        *OllamaAPI(settings, gateway, catalog, Manager(pool)).routes(),
        *OpenAIAPI(settings, gateway, catalog).routes(),
        *AdminAPI(settings, pool, store, records, auth, scheduler, alerts).routes(),
        *UsageAPI(settings, store, records).routes(),
        *TracesAPI(settings, pool, store, records, scheduler).routes(),
        *ReplayAPI(settings, gateway, store, policy_of).routes(),
        *MetricsAPI(settings, registry).routes(),
        *HubAPI(settings, pool, store, records, auth, scheduler, alerts, gateway, policy_of).routes(),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # No cap on upstream connections: admission control, not the HTTP pool, decides how
        # many requests reach a backend.
        if store.url.startswith("sqlite:///"):
            Path(store.url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(store.migrate)
        await asyncio.to_thread(limits.load)
        if not settings.auth.trusted_networks and not await asyncio.to_thread(store.active_keys):
            log.warning(
                "no API keys and no trusted networks yet: every request will get 401. "
                "Create a key with `hearth keys create --tenant NAME` (it works at once), "
                "or list your LAN under auth.trusted_networks."
            )
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        try:
            await auth.start()  # PostgreSQL: LISTEN for key changes made by other processes
            await pool.start(session)
            records.start()
            retention.start()  # a first run now, then every store.retention_interval
            await alerts.start(session)
            # Everything built so far (modules, settings, SQLAlchemy metadata...) lives as long as
            # the process: keep the cyclic GC from rescanning it on every collection, which
            # profiles showed as a per-request cost growing with each imported library.
            gc.freeze()
            log.info("hearth ready: %d backends, %d up", len(pool.states), sum(s.up for s in pool.states))
            yield
        finally:
            await alerts.stop()  # before the session its channels send with is closed
            await pool.stop()
            await session.close()
            await records.stop()  # graceful shutdown: nothing recorded is lost
            if otel is not None:
                await otel.shutdown()  # the spans still queued are sent
            await retention.stop()
            await limits.close()  # pending settlements reach Redis, then its connections close
            await auth.stop()
            store.close()

    app = Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(AuthMiddleware, auth)])
    app.state.pool = pool
    app.state.records = records
    app.state.metrics = metrics
    app.state.scheduler = scheduler
    app.state.alerts = alerts
    app.state.retention = retention
    app.state.otel = otel
    app.state.auth = auth
    return app
