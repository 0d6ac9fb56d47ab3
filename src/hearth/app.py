"""create_app(settings) -> ASGI app: the only place objects are wired together."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import aiohttp
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from hearth.api.admin import AdminAPI
from hearth.api.ollama import OllamaAPI
from hearth.api.openai import OpenAIAPI
from hearth.backends.pool import Pool
from hearth.gateway.catalog import Catalog
from hearth.gateway.dispatch import Gateway
from hearth.gateway.manage import Manager
from hearth.gateway.router import Router
from hearth.settings import Settings

log = logging.getLogger("hearth")


def create_app(settings: Settings) -> Starlette:
    router = Router(settings)
    pool = Pool(settings)
    gateway = Gateway(pool, router, settings.routing.max_attempts)
    catalog = Catalog(pool, router)
    routes: list[BaseRoute] = [
        *OllamaAPI(settings, gateway, catalog, Manager(pool)).routes(),
        *OpenAIAPI(settings, gateway, catalog).routes(),
        *AdminAPI(settings, pool).routes(),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # No cap on upstream connections: admission control, not the HTTP pool, decides how
        # many requests reach a backend.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300))
        try:
            await pool.start(session)
            log.info("hearth ready: %d backends, %d up", len(pool.states), sum(s.up for s in pool.states))
            yield
        finally:
            await pool.stop()
            await session.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.pool = pool
    return app
