"""The admin JSON API: backends, recent requests, tenants (with limits editable at run time) and
keys, usage over time, alerts. Guarded by
``server.admin_key`` (a Bearer token) or the key of a tenant marked ``admin``."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.api.auth import require_admin
from hearth.api.common import error_response, json_body, json_response
from hearth.api.usage import series_params, usage_params, usage_report, usage_series_report
from hearth.backends.pool import Pool
from hearth.errors import BadRequest, HearthError, TenantNotFound
from hearth.gateway.auth import Authenticator
from hearth.gateway.records import RequestLog
from hearth.gateway.scheduler import Scheduler
from hearth.observability.alerts import Alerts
from hearth.settings import Settings
from hearth.store.db import Store


class AdminAPI:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        store: Store,
        records: RequestLog,
        auth: Authenticator,
        scheduler: Scheduler,
        alerts: Alerts,
    ) -> None:
        self.settings = settings
        self.alerts = alerts
        self.scheduler = scheduler
        self.auth = auth
        self.key = settings.server.admin_key or None
        self.pool = pool
        self.store = store
        self.records = records

    def routes(self) -> list[Route]:
        return [
            Route("/admin/backends", self.backends, methods=["GET"]),
            Route("/admin/queue", self.queue, methods=["GET"]),
            Route("/admin/requests", self.requests, methods=["GET"]),
            Route("/admin/usage", self.usage, methods=["GET"]),
            Route("/admin/usage/series", self.usage_series, methods=["GET"]),
            Route("/admin/tenants", self.tenants, methods=["GET"]),
            Route("/admin/tenants/{name}/limits", self.tenant_limits, methods=["GET", "PUT", "DELETE"]),
            Route("/admin/keys", self.keys, methods=["GET", "POST"]),
            Route("/admin/keys/{key_id}", self.revoke, methods=["DELETE"]),
            Route("/admin/alerts", self.alert_status, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
        ]

    def _authorize(self, request: Request) -> None:
        require_admin(request, self.key)

    async def queue(self, request: Request) -> Response:
        """The scheduler's view: each backend's models with their slots in use, and every waiting
        request with its position, in the order the scheduler will grant them."""
        try:
            self._authorize(request)
        except HearthError as exc:
            return error_response(exc, "openai")
        return json_response(self.scheduler.snapshot())

    async def tenants(self, request: Request) -> Response:
        """Tenants from the config file and the store, with their policies and limits: ``limits``
        in force, the ``config`` file's, and which are ``overridden`` at run time."""
        try:
            self._authorize(request)
        except HearthError as exc:
            return error_response(exc, "openai")
        out = []
        for name in await asyncio.to_thread(self.auth.tenants.names):
            policy = self.settings.tenants.get(name)
            limits = self.auth.tenants.effective_limits(name)
            del limits["tenant"]
            out.append(
                {
                    "name": name,
                    "in_config": policy is not None,
                    "models": policy.models if policy else [],
                    "local_only": bool(policy and policy.local_only),
                    "admin": bool(policy and policy.admin),
                    **limits,
                }
            )
        return json_response({"tenants": out})

    async def tenant_limits(self, request: Request) -> Response:
        """GET: a tenant's limits (``effective_limits``). PUT {"rpm": 60, "tpm": null, ...}: set
        those (a non-negative integer, or null for no limit), over the config file's. DELETE:
        back to the config file's. Every process follows at once (SQLite) or within about a
        second (PostgreSQL), as with keys."""
        name = request.path_params["name"]
        tenants = self.auth.tenants
        try:
            self._authorize(request)
            if request.method == "GET":
                if not await asyncio.to_thread(tenants.known, name):
                    raise TenantNotFound(name)
                return json_response(tenants.effective_limits(name))
            if request.method == "DELETE":
                return json_response(await asyncio.to_thread(tenants.clear_limits, name))
            _, body = await json_body(request, 64 * 1024)
            return json_response(await asyncio.to_thread(tenants.set_limits, name, body))
        except HearthError as exc:
            return error_response(exc, "openai")

    async def keys(self, request: Request) -> Response:
        """GET: every key, never the secret. POST {"tenant", "label"?}: a new key, shown once."""
        try:
            self._authorize(request)
            if request.method == "GET":
                return json_response({"keys": await asyncio.to_thread(self.store.list_keys)})
            _, body = await json_body(request, 64 * 1024)
            tenant, label = body.get("tenant"), body.get("label")
            if not isinstance(tenant, str) or not tenant.strip() or len(tenant) > 128:
                raise BadRequest("'tenant' must be a non-empty string of at most 128 characters")
            if label is not None and not isinstance(label, str):
                raise BadRequest("'label' must be a string")
            key_id, key = await asyncio.to_thread(self.auth.create_key, tenant.strip(), label)
        except HearthError as exc:
            return error_response(exc, "openai")
        return json_response({"id": key_id, "tenant": tenant.strip(), "key": key}, 201)

    async def revoke(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except HearthError as exc:
            return error_response(exc, "openai")
        if not await asyncio.to_thread(self.store.revoke_key, request.path_params["key_id"]):
            return json_response({"error": {"message": "no such active key", "type": "not_found_error"}}, 404)
        return Response(status_code=204)

    async def backends(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except HearthError as exc:
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
            limit = _limit(request)
        except HearthError as exc:
            return error_response(exc, "openai")
        await self.records.flush()
        rows = await asyncio.to_thread(self.store.recent_requests, limit)
        return json_response({"requests": rows, "dropped": self.records.dropped})

    async def alert_status(self, request: Request) -> Response:
        """Alert rules with their thresholds, the alerts firing now, and the latest fired and
        resolved events (``?limit=``, default 100, at most 1000), newest first."""
        try:
            self._authorize(request)
            limit = _limit(request)
        except HearthError as exc:
            return error_response(exc, "openai")
        return json_response(await self.alerts.snapshot(limit))

    async def usage(self, request: Request) -> Response:
        """Usage and cost of every tenant (``?since=30d&by=tenant``, ``&tenant=`` for one)."""
        try:
            self._authorize(request)
            since, by = usage_params(request, "tenant")
        except HearthError as exc:
            return error_response(exc, "openai")
        tenant = request.query_params.get("tenant") or None
        return json_response(await usage_report(self.settings, self.store, self.records, since, by, tenant))

    async def usage_series(self, request: Request) -> Response:
        """Usage and cost over time (``?since=7d&bucket=1h&by=tenant``, ``&until=``,
        ``&tenant=`` for one and its sub-tenants): api/usage.py, usage_series_report."""
        try:
            self._authorize(request)
            since, until, bucket, by = series_params(request, "tenant")
        except HearthError as exc:
            return error_response(exc, "openai")
        tenant = request.query_params.get("tenant") or None
        rep = await usage_series_report(
            self.settings, self.store, self.records, since, until, bucket, by, tenant
        )
        return json_response(rep)

    async def healthz(self, request: Request) -> Response:
        """Liveness for orchestrators: 200 while at least one backend is up, else 503."""
        up = [s.name for s in self.pool.states if s.up]
        return json_response({"status": "ok" if up else "degraded", "backends_up": up}, 200 if up else 503)


def _limit(request: Request) -> int:
    """``?limit=``: default 100, at most 1000."""
    raw = request.query_params.get("limit", "100")
    if not raw.isdigit():
        raise BadRequest("limit must be a positive integer")
    return min(int(raw), 1000)
