"""The hub: Hearth's web pages at /hub, rendered on the server (Jinja2), with charts drawn as SVG
on the server (pygal) and one small script that refreshes the live parts of a page.

Admins see everything; a tenant logged in with one of its keys sees its own usage and traces
only (the rule of ``/api/usage`` and ``/api/traces``: itself and its sub-tenants). Each page
reads the same functions as its JSON twin in the admin API, named at the foot of the page:

| page | twin |
|---|---|
| ``/hub`` overview (live: ``/hub/live``) | ``GET /admin/overview`` |
| ``/hub/usage`` | ``GET /admin/usage`` (tenants: ``/api/usage``) |
| ``/hub/traces``, ``/hub/traces/{id}`` | ``GET /admin/traces[/{id}]`` (tenants: ``/api/traces``) |
| ``/hub/tenants`` | ``GET /admin/tenants``, ``GET/POST /admin/keys``, ``DELETE /admin/keys/{id}`` |
| ``/hub/alerts`` | ``GET /admin/alerts`` |

Logins, sessions and CSRF are in hub/session.py. Every form posts a CSRF token; a page that
needs a login redirects to ``/hub/login``; a tenant asking for an admin page gets 403, and for
another tenant's trace 404, as the JSON API does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from limits import RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from markupsafe import Markup
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from hearth.api.traces import overview_figures, trace_query
from hearth.api.usage import usage_report, usage_series_report
from hearth.backends.pool import Pool
from hearth.errors import BadRequest, HearthError, Unauthorized
from hearth.gateway.auth import Authenticator
from hearth.gateway.dispatch import Gateway
from hearth.gateway.records import RequestLog
from hearth.gateway.replay import replay
from hearth.gateway.scheduler import Scheduler
from hearth.gateway.tenants import LIMIT_FIELDS, within
from hearth.gateway.usage import parse_bucket, parse_since
from hearth.hub.charts import bars, stacked_bars
from hearth.hub.session import (
    COOKIE,
    LOGIN_COOKIE,
    LOGIN_TOKEN_SECONDS,
    Session,
    Sessions,
    check_password,
    load_secret,
    password_version,
)
from hearth.observability.alerts import Alerts
from hearth.settings import Settings, TenantSettings
from hearth.store.db import Store

HUB = Path(__file__).resolve().parent.parent / "hub"
LIVE_EVERY_MS = 2000
# Pages may load their own script and style sheet only; pygal's SVG carries inline styles.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SINCE_CHOICES = ("1h", "24h", "7d", "30d", "90d")
# The usage page's periods and the bucket each is drawn in (whole hours: the summary's grain).
USAGE_BUCKETS = {"24h": "1h", "7d": "6h", "30d": "1d", "90d": "1d"}
CHART_GROUPS = 7  # tenants drawn on their own in a chart over time; the rest add up as "others"
OTHERS = "others"


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _gb(size: int | None) -> str:
    return "" if not size else f"{size / 1e9:.1f} GB"


def _num(x: float | int | None, digits: int = 0) -> str:
    if x is None:
        return ""
    return f"{x:,.{digits}f}"


def _secs(x: float | None) -> str:
    """A duration for reading: 45 s, 4 min 10 s, 2 h 5 min."""
    if x is None:
        return ""
    s = round(x)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min" if s % 3600 // 60 else f"{s // 3600} h"


def _pretty(value: Any) -> str:
    """JSON for reading (escaped by the template like any text, unlike Jinja's tojson)."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def _money(x: float) -> str:
    return f"{x:,.2f}" if x >= 0.01 or x == 0 else f"{x:,.4f}"


class HubAPI:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        store: Store,
        records: RequestLog,
        auth: Authenticator,
        scheduler: Scheduler,
        alerts: Alerts,
        gateway: Gateway,
        policy_of: Callable[[str], TenantSettings],
    ) -> None:
        self.settings = settings
        self.cfg = settings.hub
        self.gateway = gateway
        self.policy_of = policy_of
        self.pool = pool
        self.store = store
        self.records = records
        self.auth = auth
        self.scheduler = scheduler
        self.alerts = alerts
        self.sessions = Sessions(
            load_secret(self.cfg.secret, settings.data_path), self.cfg.session_hours * 3600
        )
        self.templates = Jinja2Templates(directory=HUB / "templates")
        env = self.templates.env
        env.filters.update(when=_when, gb=_gb, num=_num, money=_money, pretty=_pretty, secs=_secs)
        env.globals.update(
            live_every=LIVE_EVERY_MS, since_choices=SINCE_CHOICES, usage_spans=list(USAGE_BUCKETS)
        )
        self._failures = MovingWindowRateLimiter(MemoryStorage())
        self._attempts = RateLimitItemPerMinute(self.cfg.login_attempts_per_minute)

    def routes(self) -> list[BaseRoute]:
        if not self.cfg.enabled:
            return []
        return [
            Mount("/hub/static", StaticFiles(directory=HUB / "static"), name="hub-static"),
            Route("/hub", self.overview, methods=["GET"]),
            Route("/hub/live", self.live, methods=["GET"]),
            Route("/hub/login", self.login, methods=["GET", "POST"]),
            Route("/hub/logout", self.logout, methods=["POST"]),
            Route("/hub/usage", self.usage, methods=["GET"]),
            Route("/hub/traces", self.traces, methods=["GET"]),
            Route("/hub/traces/{trace_id}", self.trace, methods=["GET"]),
            Route("/hub/traces/{trace_id}/replay", self.replay, methods=["POST"]),
            Route("/hub/tenants", self.tenants, methods=["GET"]),
            Route("/hub/tenants/{name}/limits", self.edit_limits, methods=["POST"]),
            Route("/hub/keys", self.create_key, methods=["POST"]),
            Route("/hub/keys/{key_id}/revoke", self.revoke_key, methods=["POST"]),
            Route("/hub/alerts", self.alert_page, methods=["GET"]),
        ]

    # -- sessions -----------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        """The request's session if it is still valid (see hub/session.py)."""
        s = self.sessions.read(request.cookies.get(COOKIE))
        if s is None:
            return None
        if s.key_id is not None:
            tenant = self.auth.key_tenant(s.key_id)
            if tenant != s.name:
                return None  # revoked
            if s.is_admin and not self._tenant_is_admin(tenant):
                return None
            return s
        hashed = self.cfg.admins.get(s.name)
        if s.role != "admin" or hashed is None or password_version(hashed) != s.version:
            return None
        return s

    def _tenant_is_admin(self, tenant: str) -> bool:
        return self.settings.tenants.get(tenant, self.settings.tenant_defaults).admin

    def _render(
        self, request: Request, template: str, s: Session | None, status: int = 200, **ctx: Any
    ) -> Response:
        ctx.update(request=request, s=s, path=request.scope["path"])
        response = self.templates.TemplateResponse(request, template, ctx, status_code=status)
        response.headers.update(_HEADERS)
        return response

    def _guard(self, request: Request, admin: bool = False) -> Session | Response:
        """The session, or the response that stands in for the page: to the login, or 403."""
        s = self.session(request)
        if s is None:
            target = request.scope["path"]
            if request.url.query:
                target += "?" + request.url.query
            response = RedirectResponse("/hub/login?" + urlencode({"next": target}), 303)
            response.delete_cookie(COOKIE, path="/hub")
            return response
        if admin and not s.is_admin:
            return self._render(request, "error.html", s, 403, message="This page is for admins only.")
        return s

    async def _posted(self, request: Request, admin: bool = False) -> tuple[Session, FormData] | Response:
        """The session and the form it posted, or the response that stands in for the page."""
        s = self._guard(request, admin)
        if isinstance(s, Response):
            return s
        form = await self._form(request, s)
        if isinstance(form, Response):
            return form
        return s, form

    async def _form(self, request: Request, s: Session) -> FormData | Response:
        """The posted form, if its CSRF token is this session's."""
        form = await request.form(max_files=0, max_fields=50)
        if not s.csrf_ok(form.get("csrf")):
            return self._render(
                request, "error.html", s, 403, message="The form expired: reload the page and try again."
            )
        return form

    # -- login --------------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        nxt = request.query_params.get("next", "/hub")
        if not nxt.startswith("/hub") or nxt.startswith("//"):
            nxt = "/hub"  # only our own pages: no open redirect
        if request.method == "GET":
            return self._login_page(request, nxt, None, 200)
        form = await request.form(max_files=0, max_fields=10)
        if not self.sessions.login_token_ok(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            return self._login_page(request, nxt, "The form expired: try again.", 403)
        client = request.client.host if request.client else "unknown"
        if not await self._failures.test(self._attempts, client):
            return self._login_page(request, nxt, "Too many failed logins: wait a minute.", 429)
        session = await self._check_login(form)
        if session is None:
            await self._failures.hit(self._attempts, client)
            return self._login_page(request, nxt, "Wrong name, password or key.", 401)
        _, cookie = session
        response = RedirectResponse(nxt, 303)
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self.sessions.max_age),
            path="/hub",
            httponly=True,
            samesite="strict",
            secure=self.cfg.secure_cookies,
        )
        response.delete_cookie(LOGIN_COOKIE, path="/hub/login")
        return response

    async def _check_login(self, form: FormData) -> tuple[Session, str] | None:
        key = form.get("key")
        if isinstance(key, str) and key.strip():
            try:
                who = self.auth.authenticate("Bearer " + key.strip(), None, {})
            except Unauthorized:
                return None
            return self.sessions.issue("admin" if who.is_admin else "tenant", who.tenant, who.key_id)
        name, password = form.get("name"), form.get("password")
        if not isinstance(name, str) or not isinstance(password, str):
            return None
        hashed = self.cfg.admins.get(name)
        # Argon2 takes tens of milliseconds on purpose: off the event loop.
        if not await asyncio.to_thread(check_password, hashed, password) or hashed is None:
            return None
        return self.sessions.issue("admin", name, None, password_version(hashed))

    def _login_page(self, request: Request, nxt: str, error: str | None, status: int) -> Response:
        token, cookie = self.sessions.login_token()
        response = self._render(
            request,
            "login.html",
            None,
            status,
            token=token,
            next=nxt,
            error=error,
            passwords=bool(self.cfg.admins),
        )
        response.set_cookie(
            LOGIN_COOKIE,
            cookie,
            max_age=LOGIN_TOKEN_SECONDS,
            path="/hub/login",
            httponly=True,
            samesite="strict",
            secure=self.cfg.secure_cookies,
        )
        return response

    async def logout(self, request: Request) -> Response:
        s = self.session(request)
        if s is not None:
            form = await self._form(request, s)
            if isinstance(form, Response):
                return form
        response = RedirectResponse("/hub/login", 303)
        response.delete_cookie(COOKIE, path="/hub")
        return response

    # -- overview -----------------------------------------------------------------------------

    async def _overview_ctx(self, s: Session) -> dict[str, Any]:
        now = time.time()
        if s.is_admin:
            return {
                "o": await overview_figures(self.store, self.records, self.pool, self.scheduler, None, now)
            }
        rep = await usage_report(self.settings, self.store, self.records, _midnight(now), "model", s.name)
        filters, _, _ = trace_query({"tenant": s.name}, now)
        rows, _ = await asyncio.to_thread(self.store.list_traces, filters, 10, None)
        return {"rep": rep, "recent": rows}

    async def overview(self, request: Request) -> Response:
        s = self._guard(request)
        if isinstance(s, Response):
            return s
        return self._render(request, "overview.html", s, **await self._overview_ctx(s))

    async def live(self, request: Request) -> Response:
        """The overview's live part, as an HTML fragment the page's script swaps in."""
        s = self.session(request)
        if s is None:
            return Response("login required", 401, headers=_HEADERS)
        return self._render(request, "_live.html", s, **await self._overview_ctx(s))

    # -- usage --------------------------------------------------------------------------------

    async def usage(self, request: Request) -> Response:
        """Usage and cost over time and per tenant and model, from the hourly summary
        (``usage_series_report``: the same figures as ``/admin/usage/series``)."""
        s = self._guard(request)
        if isinstance(s, Response):
            return s
        span = request.query_params.get("since", "30d")
        if span not in USAGE_BUCKETS:
            span = "30d"
        bucket = parse_bucket(USAGE_BUCKETS[span])
        now = time.time()
        since = parse_since(span, now)
        scope = None if s.is_admin else s.name
        by_tenant, by_model = [
            await usage_series_report(self.settings, self.store, self.records, since, now, bucket, by, scope)
            for by in ("tenant", "model")
        ]
        charts = [_tokens_over_time(by_tenant), _cost_over_time(by_tenant)]
        for rep, what in ((by_tenant, "tenant"), (by_model, "model")):
            totals = rep["totals"]
            charts.append(
                stacked_bars(
                    f"Tokens per {what}",
                    [str(g["group"]) for g in totals],
                    {
                        "prompt": [g["prompt_tokens"] for g in totals],
                        "completion": [g["completion_tokens"] for g in totals],
                    },
                    horizontal=True,
                )
            )
        total = by_tenant["total"]
        charts.append(
            bars(
                "Homelab versus cloud",
                ["cost"],
                {
                    "paid to cloud backends": [total["cloud_cost"]],
                    "local calls, had they run in the cloud": [total["local_equivalent_cost"]],
                    "local energy": [total["energy_cost"]],
                },
            )
        )
        twin = "/admin/usage/series" if s.is_admin else "/api/usage/series"
        twin += "?" + urlencode({"since": span, "bucket": USAGE_BUCKETS[span], "by": "tenant"})
        return self._render(
            request,
            "usage.html",
            s,
            since=span,
            by_tenant=by_tenant,
            by_model=by_model,
            charts=charts,
            twin=twin,
        )

    # -- traces -------------------------------------------------------------------------------

    async def traces(self, request: Request) -> Response:
        s = self._guard(request)
        if isinstance(s, Response):
            return s
        params = {k: v for k, v in request.query_params.items() if v != ""}
        if not s.is_admin:
            params["tenant"] = s.name  # a tenant's filter is always its own
        try:
            filters, limit, before = trace_query(params, time.time())
        except HearthError as exc:
            return self._render(
                request, "traces.html", s, 400, rows=[], error=exc.message, q=params, next=None
            )
        await self.records.flush()
        rows, cursor = await asyncio.to_thread(self.store.list_traces, filters, limit, before)
        nxt = None
        if cursor is not None:
            nxt = "/hub/traces?" + urlencode(
                {**{k: v for k, v in params.items() if k != "before"}, "before": cursor}
            )
        return self._render(request, "traces.html", s, rows=rows, error=None, q=params, next=nxt)

    async def _trace_row(self, s: Session, raw: str) -> dict[str, Any] | None:
        """The trace with id ``raw`` if this session may see it."""
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) < 2**63):
            return None
        await self.records.flush()
        row = await asyncio.to_thread(self.store.get_trace, int(raw))
        if row is None or not (s.is_admin or within(row["tenant"], s.name)):
            return None
        return row

    def _models(self) -> list[str]:
        """Names a replay may ask for: the aliases and every model a backend serves."""
        names = set(self.settings.aliases)
        for state in self.pool.states:
            names.update(m.name for m in state.models.values())
        return sorted(names)

    async def trace(self, request: Request) -> Response:
        s = self._guard(request)
        if isinstance(s, Response):
            return s
        row = await self._trace_row(s, request.path_params["trace_id"])
        if row is None:
            return self._render(request, "error.html", s, 404, message="No such trace.")
        return self._render(request, "trace.html", s, t=row, models=self._models(), replayed=None)

    async def replay(self, request: Request) -> Response:
        """The trace's stored request run again on the model the form names, as its tenant."""
        posted = await self._posted(request)
        if isinstance(posted, Response):
            return posted
        s, form = posted
        row = await self._trace_row(s, request.path_params["trace_id"])
        if row is None:
            return self._render(request, "error.html", s, 404, message="No such trace.")
        model = str(form.get("model", "")).strip()
        status, replayed, error = 200, None, None
        try:
            if not model:
                raise BadRequest("Name a model to replay the call on.", "model")
            done = await replay(
                self.gateway,
                self.store,
                self.policy_of,
                row["id"],
                model,
                scope=None if s.is_admin else s.name,
            )
            replayed = done.as_json()
        except HearthError as exc:
            status, error = exc.status, exc.message
        return self._render(
            request,
            "trace.html",
            s,
            status,
            t=row,
            models=self._models(),
            replayed=replayed,
            replay_error=error,
            replay_model=model,
        )

    # -- tenants and keys ---------------------------------------------------------------------

    async def _tenants_ctx(self) -> dict[str, Any]:
        names = await asyncio.to_thread(self.auth.tenants.names)
        keys = await asyncio.to_thread(self.store.list_keys)
        tenants = []
        for name in names:
            tenants.append(
                {
                    "name": name,
                    "policy": self.auth.tenants.policy(name),
                    "limits": self.auth.tenants.effective_limits(name),
                    "keys": [k for k in keys if k["tenant"] == name],
                }
            )
        return {"tenants": tenants, "limit_fields": LIMIT_FIELDS}

    async def _tenants_page(self, request: Request, s: Session, status: int = 200, **extra: Any) -> Response:
        return self._render(request, "tenants.html", s, status, **extra, **await self._tenants_ctx())

    async def tenants(self, request: Request) -> Response:
        s = self._guard(request, admin=True)
        if isinstance(s, Response):
            return s
        return await self._tenants_page(request, s)

    async def create_key(self, request: Request) -> Response:
        posted = await self._posted(request, admin=True)
        if isinstance(posted, Response):
            return posted
        s, form = posted
        tenant, label = str(form.get("tenant", "")).strip(), str(form.get("label", "")).strip()
        if not tenant or len(tenant) > 128 or len(label) > 255:
            return await self._tenants_page(
                request, s, 400, error="A tenant name of 1 to 128 characters is needed."
            )
        key_id, key = await asyncio.to_thread(self.auth.create_key, tenant, label or None)
        return await self._tenants_page(request, s, 201, created={"id": key_id, "tenant": tenant, "key": key})

    async def edit_limits(self, request: Request) -> Response:
        """A tenant's limits from the form (empty: no limit), over the config file's; or, with
        ``reset``, the config file's again (gateway/tenants.py: ``/admin/tenants/{name}/limits``)."""
        posted = await self._posted(request, admin=True)
        if isinstance(posted, Response):
            return posted
        s, form = posted
        name = request.path_params["name"]
        try:
            if form.get("reset"):
                await asyncio.to_thread(self.auth.tenants.clear_limits, name)
            else:
                now = self.auth.tenants.effective_limits(name)
                changes: dict[str, Any] = {}
                for field in LIMIT_FIELDS:
                    raw = str(form.get(field, "")).strip()
                    if raw and not (raw.isascii() and raw.isdigit()):
                        raise BadRequest(f"{field}: a whole number, or empty for no limit", field)
                    value = int(raw) if raw else None
                    if value != now["limits"][field]:
                        changes[field] = value
                await asyncio.to_thread(self.auth.tenants.set_limits, name, changes)
        except HearthError as exc:
            return await self._tenants_page(request, s, exc.status, error=f"{name}: {exc.message}")
        return RedirectResponse(f"/hub/tenants?saved={quote(name)}#tenant-{quote(name)}", 303)

    async def revoke_key(self, request: Request) -> Response:
        posted = await self._posted(request, admin=True)
        if isinstance(posted, Response):
            return posted
        s, _ = posted  # the form holds only its CSRF token
        key_id = request.path_params["key_id"]
        if not await asyncio.to_thread(self.store.revoke_key, key_id):
            return await self._tenants_page(request, s, 404, error=f"No active key {key_id}.")
        return RedirectResponse(f"/hub/tenants?revoked={key_id}", 303)

    # -- alerts -------------------------------------------------------------------------------

    async def alert_page(self, request: Request) -> Response:
        s = self._guard(request, admin=True)
        if isinstance(s, Response):
            return s
        return self._render(request, "alerts.html", s, a=await self.alerts.snapshot(200))


def _midnight(now: float) -> float:
    day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp()


def _bucket_labels(rep: dict[str, Any]) -> list[str]:
    fmt = "%m-%d %H:%M" if rep["bucket"] < 86400 else "%Y-%m-%d"
    return [dt.datetime.fromtimestamp(b, dt.UTC).strftime(fmt) for b in rep["buckets"]]


def _per_bucket(rep: dict[str, Any], field: str, groups: list[str]) -> dict[str, list[float]]:
    """``field`` of each group in each bucket; groups beyond the busiest few add up as "others"."""
    index = {b: i for i, b in enumerate(rep["buckets"])}
    out = {g: [0.0] * len(index) for g in groups}
    for row in rep["series"]:
        name = str(row["group"]) if str(row["group"]) in out else OTHERS
        out.setdefault(name, [0.0] * len(index))[index[row["start"]]] += row[field]
    return out


def _tokens_over_time(rep: dict[str, Any]) -> Markup:
    groups = [str(g) for g in rep["groups"][:CHART_GROUPS]]
    return stacked_bars(
        "Tokens over time, per tenant", _bucket_labels(rep), _per_bucket(rep, "tokens", groups)
    )


def _cost_over_time(rep: dict[str, Any]) -> Markup:
    labels = _bucket_labels(rep)
    cloud = _per_bucket(rep, "cloud_cost", [])
    local = _per_bucket(rep, "local_equivalent_cost", [])
    energy = _per_bucket(rep, "energy_cost", [])
    return bars(
        "Cost over time",
        labels,
        {
            "paid to cloud backends": cloud.get(OTHERS, [0.0] * len(labels)),
            "local calls at cloud prices": local.get(OTHERS, [0.0] * len(labels)),
            "local energy": energy.get(OTHERS, [0.0] * len(labels)),
        },
    )
