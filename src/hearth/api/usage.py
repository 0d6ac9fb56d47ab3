"""``GET /api/usage``: a tenant's own usage and cost (``?since=30d&by=model``), for any caller
with a key or from a trusted network. It covers the caller's tenant and its sub-tenants and never
anyone else's; admins see every tenant at ``GET /admin/usage`` (api/admin.py)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.api.auth import principal_of
from hearth.api.common import error_response, json_response
from hearth.errors import BadRequest, HearthError
from hearth.gateway.records import RequestLog
from hearth.gateway.usage import parse_since, report
from hearth.settings import Settings
from hearth.store.db import Store
from hearth.store.schema import USAGE_GROUPS

DEFAULT_SINCE = "30d"


def usage_params(request: Request, default_by: str) -> tuple[float, str]:
    """(since, by) from ``?since=`` (24h, 7d, an ISO date...) and ``?by=``; BadRequest if bad."""
    by = request.query_params.get("by", default_by)
    if by not in USAGE_GROUPS:
        raise BadRequest(f"by: expected one of {', '.join(USAGE_GROUPS)}")
    try:
        since = parse_since(request.query_params.get("since", DEFAULT_SINCE))
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return since, by


class UsageAPI:
    def __init__(self, settings: Settings, store: Store, records: RequestLog) -> None:
        self.settings = settings
        self.store = store
        self.records = records

    def routes(self) -> list[Route]:
        return [Route("/api/usage", self.usage, methods=["GET"])]

    async def usage(self, request: Request) -> Response:
        tenant = principal_of(request).tenant
        try:
            since, by = usage_params(request, "model")
        except HearthError as exc:
            return error_response(exc, "ollama")
        return json_response(await usage_report(self.settings, self.store, self.records, since, by, tenant))


async def usage_report(
    settings: Settings, store: Store, records: RequestLog, since: float, by: str, tenant: str | None
) -> dict[str, object]:
    """The priced report, including calls still waiting in the request log's batch."""
    await records.flush()
    groups = await asyncio.to_thread(store.usage_summary, since, by, tenant)
    rep = report(groups, settings, since, by)
    if tenant is not None:
        rep["tenant"] = tenant
    return rep
