"""The admin JSON API: what Hearth knows about its backends. Guarded by ``server.admin_key``
(a Bearer token); with no key configured only loopback clients may call it."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.api.common import error_response, json_response
from hearth.backends.pool import Pool
from hearth.errors import BadRequest, Forbidden, HearthError, Unauthorized
from hearth.gateway.records import RequestLog
from hearth.settings import Settings
from hearth.store.db import Store


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminAPI:
    def __init__(self, settings: Settings, pool: Pool, store: Store, records: RequestLog) -> None:
        self.key = settings.server.admin_key or None
        self.pool = pool
        self.store = store
        self.records = records

    def routes(self) -> list[Route]:
        return [
            Route("/admin/backends", self.backends, methods=["GET"]),
            Route("/admin/requests", self.requests, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]

    def _authorize(self, request: Request) -> None:
        if self.key is None:
            if not _is_loopback(request.client.host if request.client else None):
                raise Forbidden("admin endpoints answer only to loopback unless server.admin_key is set")
            return
        auth = request.headers.get("authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), self.key.encode()):
            raise Unauthorized("invalid or missing admin key")

    async def backends(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except (Unauthorized, Forbidden) as exc:
            return error_response(exc, "openai")
        return json_response(
            {
                "backends": [s.as_json() for s in self.pool.states],
                "disabled": [{"name": n, "reason": r} for n, r in self.pool.disabled.items()],
            }
        )

    async def requests(self, request: Request) -> Response:
        """The most recent model calls (``?limit=``, default 100, at most 1000), newest first."""
        try:
            self._authorize(request)
            raw = request.query_params.get("limit", "100")
            if not raw.isdigit():
                raise BadRequest("limit must be a positive integer")
        except HearthError as exc:
            return error_response(exc, "openai")
        await self.records.flush()
        rows = await asyncio.to_thread(self.store.recent_requests, min(int(raw), 1000))
        return json_response({"requests": rows, "dropped": self.records.dropped})

    async def healthz(self, request: Request) -> Response:
        """Liveness for orchestrators: 200 while at least one backend is up, else 503."""
        up = [s.name for s in self.pool.states if s.up]
        return json_response({"status": "ok" if up else "degraded", "backends_up": up}, 200 if up else 503)
