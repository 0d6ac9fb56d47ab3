"""``GET /api/usage``: a tenant's own usage and cost (``?since=30d&by=model``), for any caller
with a key or from a trusted network, and ``GET /api/usage/series`` the same over time
(``?since=7d&bucket=1h&by=model``). They cover the caller's tenant and its sub-tenants and never
anyone else's; admins see every tenant at ``GET /admin/usage`` and ``/admin/usage/series``
(api/admin.py)."""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.api.auth import principal_of
from hearth.api.common import error_response, json_response
from hearth.errors import BadRequest, HearthError
from hearth.gateway.records import RequestLog
from hearth.gateway.usage import parse_bucket, parse_since, report, series_report, series_window
from hearth.settings import Settings
from hearth.store.db import Store
from hearth.store.schema import USAGE_GROUPS

DEFAULT_SINCE = "30d"
SERIES_SINCE = "7d"
SERIES_BUCKET = "1h"


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


def series_params(request: Request, default_by: str) -> tuple[float, float, int, str]:
    """(since, until, bucket seconds, by) from ``?since=`` (default 7d), ``?until=`` (default
    now; a span like ``1d`` means that long ago), ``?bucket=`` (1h, 6h, 1d...; default 1h) and
    ``?by=``; BadRequest if any is bad or the window holds more than MAX_BUCKETS buckets."""
    q = request.query_params
    by = q.get("by", default_by)
    if by not in USAGE_GROUPS:
        raise BadRequest(f"by: expected one of {', '.join(USAGE_GROUPS)}", param="by")
    now = time.time()
    try:
        since = parse_since(q.get("since", SERIES_SINCE), now)
        until = parse_since(q["until"], now) if q.get("until") else now
        bucket = parse_bucket(q.get("bucket", SERIES_BUCKET))
        series_window(since, until, bucket)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    return since, until, bucket, by


class UsageAPI:
    def __init__(self, settings: Settings, store: Store, records: RequestLog) -> None:
        self.settings = settings
        self.store = store
        self.records = records

    def routes(self) -> list[Route]:
        return [
            Route("/api/usage", self.usage, methods=["GET"]),
            Route("/api/usage/series", self.series, methods=["GET"]),
        ]

    async def usage(self, request: Request) -> Response:
        tenant = principal_of(request).tenant
        try:
            since, by = usage_params(request, "model")
        except HearthError as exc:
            return error_response(exc, "ollama")
        return json_response(await usage_report(self.settings, self.store, self.records, since, by, tenant))

    async def series(self, request: Request) -> Response:
        tenant = principal_of(request).tenant
        try:
            since, until, bucket, by = series_params(request, "model")
        except HearthError as exc:
            return error_response(exc, "ollama")
        rep = await usage_series_report(
            self.settings, self.store, self.records, since, until, bucket, by, tenant
        )
        return json_response(rep)


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


async def usage_series_report(
    settings: Settings,
    store: Store,
    records: RequestLog,
    since: float,
    until: float,
    bucket: int,
    by: str,
    tenant: str | None,
) -> dict[str, Any]:
    """Usage and cost over time, including calls still waiting in the request log's batch.

    Calls are summed per ``bucket`` seconds (whole hours, aligned on multiples of the bucket
    since the epoch: a 1d bucket is a UTC day) from the bucket holding ``since`` (which moves
    back to its start, so every bucket but the running one is whole) to the hour holding
    ``until`` (counted whole), and per group (the ``by`` column: tenant, model, backend
    or served_model; sub-tenants are groups of their own). ``tenant``: only that tenant and its
    sub-tenants. ValueError for a bad ``by`` or window (more than MAX_BUCKETS buckets)::

        {"since": 1735689600.0, "until": 1736294400.0, "bucket": 3600, "by": "tenant",
         "tenant": "family",                    # only when scoped to one tenant
         "buckets": [1735689600.0, ...],        # every bucket's start, empty ones too
         "groups": ["family", ...],             # busiest first; None for calls without one
         "series": [                            # non-empty (bucket, group) pairs, by start
            {"start": 1735689600.0, "group": "family", "requests": 12, "errors": 1,
             "prompt_tokens": 900, "completion_tokens": 3000, "tokens": 3900, "estimated": 0,
             "cloud_cost": 0.0, "local_equivalent_cost": 0.0325, "energy_cost": 0.0012}, ...],
         "totals": [{"group": "family", <the same sums>}, ...],   # per group, as in "groups"
         "total": {<the same sums over everything>},
         "unpriced": ["gpt-x"]}                 # cloud models without a price (counted as 0)

    Costs are in ``pricing``'s currency, as in ``hearth usage`` (gateway/usage.py):
    ``cloud_cost`` what cloud backends charged, ``local_equivalent_cost`` what the local calls
    would have cost at ``pricing.local_equivalent``'s price (homelab versus cloud), and
    ``energy_cost`` the local calls' electricity."""
    await records.flush()
    cloud = [b.name for b in settings.backends if b.cloud]
    rows = await asyncio.to_thread(
        functools.partial(store.usage_series, since, until, bucket, by, tenant, cloud=cloud)
    )
    rep = series_report(rows, settings, since, until, bucket, by)
    if tenant is not None:
        rep["tenant"] = tenant
    return rep
