"""Traces (one row of the request log per model call) and the hub's overview, as JSON.

``GET /admin/traces`` lists every tenant's calls, newest first, filtered by query parameters and
paged by a cursor (``{"traces": [...], "next": id or null}``; pass ``next`` back as ``before``);
``GET /admin/traces/{id}`` is one call, with its stored prompt and reply (``"content"``: null
unless its tenant has ``store_content``; lists never carry it); ``GET /admin/overview`` is the
rates, errors and tokens of the last minutes and of today, with the backends and the scheduler's
queues. Admins only (``server.admin_key`` or an admin tenant's key); errors in OpenAI's shape,
like the rest of /admin. ``POST /admin/traces/{id}/replay`` is in api/replay.py.

``GET /api/traces`` and ``GET /api/traces/{id}`` are the same for any caller with a key or from
a trusted network, limited like ``/api/usage`` to the caller's tenant and its sub-tenants:
another tenant's call is "not found", never "forbidden", so ids say nothing about others. Their
errors are in Ollama's shape like the rest of /api (the auth middleware answers 401 so).

Filters: ``tenant`` (with its sub-tenants unless ``subtenants=0``), ``model`` (as asked or as
served), ``backend``, ``status``, ``errors=1``, ``since`` and ``until`` (epoch seconds, a span
before now such as 15m, 1h or 7d, or an ISO date), ``min_ms`` (duration), ``limit`` (default 50,
at most 500) and ``before`` (the cursor). A bad value is a 400 that names the parameter.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.api.auth import principal_of, require_admin
from hearth.api.common import Dialect, error_response, json_response
from hearth.backends.pool import Pool
from hearth.errors import BadRequest, HearthError
from hearth.gateway.records import RequestLog
from hearth.gateway.scheduler import Scheduler
from hearth.gateway.tenants import within
from hearth.gateway.usage import parse_since
from hearth.settings import Settings
from hearth.store.db import Store
from hearth.store.traces import DEFAULT_LIMIT, MAX_LIMIT, TraceFilter

_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([sm])")
_SPAN_SECONDS = {"s": 1, "m": 60}
_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no", ""})
_MAX_ID = 2**63 - 1  # the largest id either database can compare with


def parse_time(text: str, param: str, now: float) -> float:
    """Epoch seconds from epoch seconds, a span before ``now`` (30s, 15m, 1h, 7d, 2w) or an ISO
    date or date-time (UTC unless it names a zone)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
    m = _SPAN.fullmatch(text)
    if m:
        return now - float(m.group(1)) * _SPAN_SECONDS[m.group(2)]
    try:
        return parse_since(text, now)  # 1h, 7d, 2w, ISO dates
    except ValueError:
        raise BadRequest(
            f"{param}: expected epoch seconds, a span before now like 15m, 1h or 7d, "
            f"or an ISO date like 2025-01-31; got {text!r}",
            param,
        ) from None


def _digits(raw: str) -> bool:
    return raw.isascii() and raw.isdigit()  # "²" is a digit to str.isdigit but not to int()


def _flag(params: Mapping[str, str], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise BadRequest(f"{name}: expected 1 or 0; got {raw!r}", name)


def _integer(params: Mapping[str, str], name: str, low: int, high: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None:
        return None
    raw = raw.strip()
    if not _digits(raw) or int(raw) < low or (high is not None and int(raw) > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise BadRequest(f"{name}: expected an integer {bound}; got {raw!r}", name)
    return int(raw)


def _text(params: Mapping[str, str], name: str, longest: int) -> str | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > longest:
        raise BadRequest(f"{name}: at most {longest} characters", name)
    return raw


def trace_query(params: Mapping[str, str], now: float) -> tuple[TraceFilter, int, int | None]:
    """(filters, limit, before) from a list's query parameters; BadRequest names a bad one."""
    min_ms = None
    raw_ms = params.get("min_ms")
    if raw_ms is not None:
        try:
            min_ms = float(raw_ms)
        except ValueError:
            min_ms = -1.0
        if not math.isfinite(min_ms) or min_ms < 0:
            raise BadRequest(f"min_ms: expected a duration in milliseconds; got {raw_ms!r}", "min_ms")
    since, until = params.get("since"), params.get("until")
    filters = TraceFilter(
        tenant=_text(params, "tenant", 128),
        subtenants=_flag(params, "subtenants", True),
        model=_text(params, "model", 255),
        backend=_text(params, "backend", 128),
        status=_integer(params, "status", 100, 599),
        errors_only=_flag(params, "errors", False),
        since=None if since is None else parse_time(since, "since", now),
        until=None if until is None else parse_time(until, "until", now),
        min_duration_ms=min_ms,
    )
    limit = _integer(params, "limit", 1)
    before = _integer(params, "before", 1, _MAX_ID)
    return filters, min(limit or DEFAULT_LIMIT, MAX_LIMIT), before


def _not_found(dialect: Dialect) -> Response:
    if dialect == "ollama":
        return json_response({"error": "no such trace"}, 404)
    error = {"message": "no such trace", "type": "not_found_error", "param": None, "code": None}
    return json_response({"error": error}, 404)


def trace_id_of(request: Request) -> int:
    """The {trace_id} of a route's path; BadRequest unless it is a positive integer."""
    raw = request.path_params["trace_id"]
    if not _digits(raw) or not 1 <= int(raw) <= _MAX_ID:
        raise BadRequest(f"id: expected a positive integer; got {raw!r}", "id")
    return int(raw)


def _rates(window: dict[str, int], seconds: int) -> dict[str, float | int]:
    n = window["requests"]
    return {**window, "requests_per_s": n / seconds, "error_rate": window["errors"] / n if n else 0.0}


class TracesAPI:
    def __init__(
        self, settings: Settings, pool: Pool, store: Store, records: RequestLog, scheduler: Scheduler
    ) -> None:
        self.admin_key = settings.server.admin_key or None
        self.pool = pool
        self.store = store
        self.records = records
        self.scheduler = scheduler

    def routes(self) -> list[Route]:
        return [
            Route("/admin/traces", self.admin_list, methods=["GET"]),
            Route("/admin/traces/{trace_id}", self.admin_get, methods=["GET"]),
            Route("/admin/overview", self.overview, methods=["GET"]),
            Route("/api/traces", self.own_list, methods=["GET"]),
            Route("/api/traces/{trace_id}", self.own_get, methods=["GET"]),
        ]

    async def _list(self, request: Request, scope: str | None, dialect: Dialect) -> Response:
        try:
            filters, limit, before = trace_query(request.query_params, time.time())
        except HearthError as exc:
            return error_response(exc, dialect)
        if scope is not None:
            if filters.tenant is None:
                filters = replace(filters, tenant=scope)
            elif not within(filters.tenant, scope):
                return json_response({"traces": [], "next": None})  # nothing of theirs is elsewhere
        await self.records.flush()  # calls still waiting in the log's batch are listed too
        rows, cursor = await asyncio.to_thread(self.store.list_traces, filters, limit, before)
        return json_response({"traces": rows, "next": cursor})

    async def _get(self, request: Request, scope: str | None, dialect: Dialect) -> Response:
        try:
            trace_id = trace_id_of(request)
        except HearthError as exc:
            return error_response(exc, dialect)
        await self.records.flush()
        row = await asyncio.to_thread(self.store.get_trace, trace_id)
        if row is None or (scope is not None and not within(row["tenant"], scope)):
            return _not_found(dialect)
        return json_response(row)

    async def admin_list(self, request: Request) -> Response:
        """Every tenant's calls, filtered and paged (see the module docstring)."""
        try:
            require_admin(request, self.admin_key)
        except HearthError as exc:
            return error_response(exc, "openai")
        return await self._list(request, None, "openai")

    async def admin_get(self, request: Request) -> Response:
        try:
            require_admin(request, self.admin_key)
        except HearthError as exc:
            return error_response(exc, "openai")
        return await self._get(request, None, "openai")

    async def own_list(self, request: Request) -> Response:
        """The caller's tenant's calls and its sub-tenants', filtered and paged."""
        return await self._list(request, principal_of(request).tenant, "ollama")

    async def own_get(self, request: Request) -> Response:
        return await self._get(request, principal_of(request).tenant, "ollama")

    async def overview(self, request: Request) -> Response:
        """Calls per second and error rate over the last minute and five minutes; today's calls,
        errors and tokens, in all and per model (``?since=`` moves the start of "today", by
        default midnight UTC); every backend with its state and loaded models; and how many
        requests wait in the scheduler's queue per model."""
        now = time.time()
        try:
            require_admin(request, self.admin_key)
            raw = request.query_params.get("since")
            since = None if raw is None else parse_time(raw, "since", now)
        except HearthError as exc:
            return error_response(exc, "openai")
        figures = await overview_figures(self.store, self.records, self.pool, self.scheduler, since, now)
        return json_response(figures)


async def overview_figures(
    store: Store, records: RequestLog, pool: Pool, scheduler: Scheduler, since: float | None, now: float
) -> dict[str, Any]:
    """What ``GET /admin/overview`` answers (and the hub's overview shows)."""
    await records.flush()
    figures: dict[str, Any] = await asyncio.to_thread(store.overview, since, now)
    figures["last_minute"] = _rates(figures["last_minute"], 60)
    figures["last_5_minutes"] = _rates(figures["last_5_minutes"], 300)
    figures["backends"] = [s.as_json() for s in pool.states]
    figures["queue"] = scheduler.waiting_by_model()
    figures["queue_by_backend"] = scheduler.waiting_by_backend()
    figures["scheduler"] = scheduler.snapshot()
    return figures
