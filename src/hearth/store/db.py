"""The storage interface: SQL lives here in named methods, never in handlers.

SQLite (the embedded default, a file in the data directory) runs in WAL mode with one writer;
PostgreSQL (``store.url: postgresql+psycopg://...``; a plain ``postgresql://`` URL gets the
psycopg 3 driver too) takes the same calls through SQLAlchemy Core and the same migrations.
Calls are synchronous and short; on PostgreSQL every one of them waits on the network, so
callers on the event loop run them in a thread (the request log does, see ``inline_writes``).

Writes of the request log are the exception to "run it in a thread": measured under load, a
writer thread gets so little of the GIL next to a busy event loop that a 10k-row batch took
seconds and rows piled up in memory (bench/README.md). For SQLite the log instead writes small
batches of tuples on the loop through one raw connection (~5 us a row) with automatic
checkpoints off; ``checkpoint()``, the only step that waits on fsync, runs in a thread.
Migrations (Alembic) run only when asked: ``hearth migrate`` and ``hearth serve`` start-up.

Keys changed by another process: SQLite's ``data_version()`` is asked before each lookup (a
pragma, no I/O when nothing changed). PostgreSQL has no such pragma, so a trigger (migration
0004) NOTIFYs ``hearth_keys`` on every change to ``api_keys`` and ``watch_keys()`` LISTENs on
one dedicated psycopg connection of its own (gateway/auth.py reloads its key table off the loop).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from hearth.store.schema import (
    CONTENT_COLUMNS,
    REQUEST_COLUMNS,
    USAGE_GROUPS,
    alert_events,
    api_keys,
    requests,
    tenant_limits,
    tenants,
    trace_contents,
    usage_hourly,
)
from hearth.store.traces import TraceFilter, clamp_limit, list_query, overview_queries, window_share

MIGRATIONS = Path(__file__).parent / "migrations"
# The channel migration 0004's trigger NOTIFYs on every statement that changes api_keys.
KEYS_CHANNEL = "hearth_keys"

log = logging.getLogger("hearth.store")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, fast commits
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


_INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
)
_INSERT_CONTENT = (
    f"INSERT INTO trace_contents ({', '.join(CONTENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(CONTENT_COLUMNS))}) RETURNING id"
)
assert REQUEST_COLUMNS[-1] == "content_id"  # insert_requests sets it last in each row

_HOURLY_KEYS = ("hour", "tenant", "model", "backend", "served_model")
_HOURLY_SUMS = ("requests", "errors", "prompt_tokens", "completion_tokens", "estimated", "busy_ms")
_UPSERT_HOURLY = (
    f"INSERT INTO usage_hourly ({', '.join(_HOURLY_KEYS + _HOURLY_SUMS)}) "
    f"VALUES ({', '.join('?' * (len(_HOURLY_KEYS) + len(_HOURLY_SUMS)))}) "
    f"ON CONFLICT ({', '.join(_HOURLY_KEYS)}) DO UPDATE SET "
    + ", ".join(f"{c} = usage_hourly.{c} + excluded.{c}" for c in _HOURLY_SUMS)
)


def hourly_sums(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """A batch of request-log rows as usage_hourly rows (_HOURLY_KEYS + _HOURLY_SUMS), sorted:
    processes adding overlapping batches then lock the rows in one order and never deadlock."""
    at = REQUEST_COLUMNS.index
    ts, tenant, model, backend = at("ts"), at("tenant"), at("model"), at("backend")
    served, status, error, estimated = at("served_model"), at("status"), at("error"), at("tokens_estimated")
    prompt, completion = at("prompt_tokens"), at("completion_tokens")
    duration, wait = at("duration_ms"), at("queue_wait_ms")
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for r in rows:
        key = (int(r[ts] // 3600) * 3600, r[tenant] or "", r[model], r[backend] or "", r[served] or "")
        s = sums.get(key)
        if s is None:
            s = sums[key] = [0, 0, 0, 0, 0, 0.0]
        s[0] += 1
        if r[status] >= 400 or r[error] is not None:
            s[1] += 1
        s[2] += r[prompt] or 0
        s[3] += r[completion] or 0
        if r[estimated]:
            s[4] += 1
        s[5] += r[duration] - (r[wait] or 0.0)
    return [(*k, *v) for k, v in sorted(sums.items())]


def _tenant_and_subtenants(
    tenant: str, column: sa.ColumnElement[str] = requests.c.tenant
) -> sa.ColumnElement[bool]:
    """Calls of ``tenant`` and of its sub-tenants ("t" and "t/..."), never of "t_x" or "tx"."""
    return sa.or_(column == tenant, column.startswith(f"{tenant}/", autoescape=True))


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = sa.create_engine(
                url, pool_size=4, max_overflow=0, connect_args={"check_same_thread": False}
            )
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            target = sa.make_url(url)
            if target.drivername in ("postgresql", "postgres"):
                target = target.set(drivername="postgresql+psycopg")  # psycopg 3, not psycopg2
            self.engine = sa.create_engine(target, pool_pre_ping=True)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        self._writer: Any = None  # the raw DBAPI connection of the SQLite request-log writer
        self._watch: Any = None  # the connection that asks SQLite's data_version
        self._watch_db: Any = None  # its sqlite3.Connection

    def migrate(self, revision: str = "head", *, down: bool = False) -> None:
        """Upgrade the schema to ``revision`` (or, with ``down``, downgrade to it)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)

    @property
    def inline_writes(self) -> bool:
        """True when insert_requests is cheap enough to call on the event loop."""
        return self.is_sqlite

    def insert_requests(
        self, rows: Sequence[tuple[Any, ...]], contents: Sequence[tuple[int, tuple[Any, ...]]] = ()
    ) -> None:
        """Rows are tuples in REQUEST_COLUMNS order. ``contents`` are (index of a row, its
        trace_contents row in CONTENT_COLUMNS order): written first, in the same transaction,
        and the row's content_id set to the new id."""
        if not rows:
            return
        if not self.is_sqlite:
            with self.engine.begin() as conn:
                if contents:
                    tc = trace_contents
                    insert = tc.insert().returning(tc.c.id, sort_by_parameter_order=True)
                    params = [dict(zip(CONTENT_COLUMNS, c, strict=True)) for _, c in contents]
                    ids = conn.execute(insert, params).scalars().all()
                    rows = list(rows)
                    for (i, _), content_id in zip(contents, ids, strict=True):
                        rows[i] = (*rows[i][:-1], content_id)
                conn.execute(requests.insert(), [dict(zip(REQUEST_COLUMNS, r, strict=True)) for r in rows])
                if sums := hourly_sums(rows):  # an empty list would run the statement once, bare
                    conn.exec_driver_sql(_UPSERT_HOURLY.replace("?", "%s"), sums)
            return
        if self._writer is None:
            self._writer = self.engine.raw_connection()
            cur = self._writer.cursor()
            cur.execute("PRAGMA wal_autocheckpoint=0")  # checkpoint() does it, off the loop
            cur.close()
        cur = self._writer.cursor()
        try:
            if contents:
                rows = list(rows)
                for i, content in contents:
                    cur.execute(_INSERT_CONTENT, content)
                    rows[i] = (*rows[i][:-1], cur.fetchone()[0])
            cur.executemany(_INSERT_REQUEST, rows)
            cur.executemany(_UPSERT_HOURLY, hourly_sums(rows))
            self._writer.commit()
        except BaseException:
            self._writer.rollback()  # no content row without the call that points at it
            raise
        finally:
            cur.close()

    def checkpoint(self) -> None:
        """Fold the SQLite WAL back into the database (waits on fsync: call it in a thread)."""
        if self.is_sqlite:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def recent_requests(self, limit: int) -> list[dict[str, Any]]:
        query = sa.select(requests).order_by(requests.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def token_totals_since(self, since: float) -> list[tuple[str, float, int]]:
        """(tenant, UTC day start, tokens) per tenant and day since ``since``, from the log."""
        # SQLite may lack floor(); its CAST truncates, which is floor for these positive values.
        days = requests.c.ts / 86400
        day = (sa.cast(days, sa.Integer) if self.is_sqlite else sa.func.floor(days)) * 86400
        tokens = sa.func.sum(
            sa.func.coalesce(requests.c.prompt_tokens, 0) + sa.func.coalesce(requests.c.completion_tokens, 0)
        )
        query = (
            sa.select(requests.c.tenant, day.label("day"), tokens.label("tokens"))
            .where(requests.c.ts >= since, requests.c.tenant.is_not(None))
            .group_by(requests.c.tenant, day)
        )
        with self.engine.connect() as conn:
            return [(r.tenant, float(r.day), int(r.tokens or 0)) for r in conn.execute(query)]

    # -- tenants and keys --------------------------------------------------------------------

    def ensure_tenant(self, name: str) -> bool:
        """Create the tenant if it does not exist; True if it was created."""
        try:
            with self.engine.begin() as conn:
                found = conn.execute(sa.select(tenants.c.name).where(tenants.c.name == name)).first()
                if found is not None:
                    return False
                conn.execute(tenants.insert().values(name=name, created_at=time.time()))
                return True
        except sa.exc.IntegrityError:
            return False  # another process created it between the two statements

    def list_tenants(self) -> list[dict[str, Any]]:
        query = sa.select(tenants).order_by(tenants.c.name)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def insert_key(self, key_id: str, tenant: str, key_hash: str, label: str | None) -> None:
        self.ensure_tenant(tenant)
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key_id, tenant=tenant, key_hash=key_hash, label=label, created_at=time.time()
                )
            )

    def list_keys(self) -> list[dict[str, Any]]:
        """Every key without its hash, newest first."""
        cols = [c for c in api_keys.columns if c.name != "key_hash"]
        query = sa.select(*cols).order_by(api_keys.c.created_at.desc())
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def revoke_key(self, key_id: str) -> bool:
        query = (
            api_keys.update()
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=time.time())
        )
        with self.engine.begin() as conn:
            return conn.execute(query).rowcount == 1

    def active_keys(self) -> list[tuple[str, str, str]]:
        """(id, tenant, key_hash) of every key not revoked."""
        query = sa.select(api_keys.c.id, api_keys.c.tenant, api_keys.c.key_hash).where(
            api_keys.c.revoked_at.is_(None)
        )
        with self.engine.connect() as conn:
            return [(r.id, r.tenant, r.key_hash) for r in conn.execute(query)]

    def tenant_limits(self) -> dict[str, dict[str, Any]]:
        """Every tenant's limits set at run time: tenant -> {"limits": {field: value or None},
        "updated_at": epoch seconds} (gateway/tenants.py)."""
        with self.engine.connect() as conn:
            return {
                r.tenant: {"limits": msgspec.json.decode(r.limits), "updated_at": r.updated_at}
                for r in conn.execute(sa.select(tenant_limits))
            }

    def set_tenant_limits(self, tenant: str, changes: Mapping[str, int | None]) -> dict[str, int | None]:
        """Merge ``changes`` into ``tenant``'s overrides (validated by the caller); returns them."""
        t = tenant_limits.c
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    query = sa.select(t.limits).where(t.tenant == tenant)
                    old = conn.execute(query.with_for_update() if self.is_postgres else query).first()
                    merged = {**(msgspec.json.decode(old.limits) if old else {}), **changes}
                    values = {"limits": msgspec.json.encode(merged).decode(), "updated_at": time.time()}
                    if old is None:
                        conn.execute(tenant_limits.insert().values(tenant=tenant, **values))
                    else:
                        conn.execute(tenant_limits.update().where(t.tenant == tenant).values(**values))
                    return merged
            except sa.exc.IntegrityError:
                # Another process inserted the row between the read and the insert: once more,
                # merging into theirs.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def clear_tenant_limits(self, tenant: str) -> bool:
        """Drop ``tenant``'s overrides; True if it had any."""
        with self.engine.begin() as conn:
            return conn.execute(tenant_limits.delete().where(tenant_limits.c.tenant == tenant)).rowcount == 1

    def data_version(self) -> int | None:
        """Changes whenever another connection (another process too) commits to the database:
        a cheap way to notice keys created or revoked by the CLI. None if unsupported (PostgreSQL
        pushes key changes instead: ``watch_keys``)."""
        if not self.is_sqlite:
            return None
        if self._watch is None:
            self._watch = self.engine.raw_connection()
            # Asked on every request: talk to sqlite3 directly, not through the pool's proxy.
            self._watch_db = self._watch.dbapi_connection
        row = self._watch_db.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    @property
    def pushes_key_changes(self) -> bool:
        """True when ``watch_keys`` works: the database tells Hearth about key changes."""
        return self.is_postgres

    async def watch_keys(self, changed: Callable[[], None], *, max_retry: float = 5.0) -> None:
        """PostgreSQL: call ``changed()`` after every commit that touched ``api_keys``, by any
        process, until cancelled. Also once as soon as it listens, and again after each
        reconnect, since notifications sent while no one listened are lost: the caller then
        rereads what it caches. ``changed`` runs on the loop and must be quick.

        One dedicated connection LISTENs (never the pool: it must stay open). A dropped
        connection is retried with backoff up to ``max_retry`` seconds; TCP keepalives notice a
        silently dead peer within about a minute (Unix sockets notice at once).
        """
        import psycopg

        if not self.is_postgres:
            raise NotImplementedError("watch_keys needs PostgreSQL")
        _, params = self.engine.dialect.create_connect_args(self.engine.url)
        params.pop("context", None)  # SQLAlchemy's type adapters: not needed to LISTEN
        # TCP keepalives: a dead peer is noticed in about a minute; the URL's own settings win.
        for key, value in {"keepalives": 1, "idle": 30, "interval": 10, "count": 3}.items():
            params.setdefault(key if key == "keepalives" else f"keepalives_{key}", value)
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(autocommit=True, **params)
                async with conn:
                    await conn.execute(f"LISTEN {KEYS_CHANNEL}")
                    delay = 0.1
                    changed()
                    async for _ in conn.notifies():
                        changed()
            except Exception as exc:  # psycopg.Error mostly; whatever it is, listen again
                log.warning("key-change listener: %s; reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max_retry)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.dispose()

    # -- alerts ------------------------------------------------------------------------------

    def insert_alert_event(self, event: Mapping[str, Any]) -> None:
        """One row of alert history: ts, rule, subject, event (fired | resolved), value,
        threshold, message, since."""
        with self.engine.begin() as conn:
            conn.execute(alert_events.insert().values(**event))

    def alert_events(self, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` alert events, newest first."""
        query = sa.select(alert_events).order_by(alert_events.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def open_alerts(self) -> list[dict[str, Any]]:
        """Alerts whose latest event is ``fired``: firing when the previous process stopped."""
        c = alert_events.c
        latest = sa.select(sa.func.max(c.id)).group_by(c.rule, c.subject)
        query = sa.select(alert_events).where(c.id.in_(latest), c.event == "fired").order_by(c.id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # -- usage -------------------------------------------------------------------------------

    def usage_summary(self, since: float, by: str, tenant: str | None = None) -> list[dict[str, Any]]:
        """Model calls since ``since`` (epoch seconds) per group, the column named by ``by``
        (tenant | model | backend | served_model), busiest first.

        Each group holds requests, errors (HTTP status >= 400, or an error after the reply
        started), prompt and completion tokens, ``estimated`` (calls whose counts are estimates),
        mean duration and busy seconds (duration less queue wait), and ``parts``: the same sums
        per (backend, served_model), which is what pricing needs (gateway/usage.py). ``tenant``
        keeps only that tenant's calls and its sub-tenants' ("t" and "t/...")."""
        if by not in USAGE_GROUPS:
            raise ValueError(f"cannot group usage by {by!r}")
        r = requests.c
        busy = r.duration_ms - sa.func.coalesce(r.queue_wait_ms, 0.0)
        query = (
            sa.select(
                r[by].label("group"),
                r.backend,
                r.served_model,
                sa.func.count().label("requests"),
                sa.func.sum(sa.case((sa.or_(r.status >= 400, r.error.is_not(None)), 1), else_=0)).label(
                    "errors"
                ),
                sa.func.sum(sa.func.coalesce(r.prompt_tokens, 0)).label("prompt_tokens"),
                sa.func.sum(sa.func.coalesce(r.completion_tokens, 0)).label("completion_tokens"),
                sa.func.sum(sa.case((r.tokens_estimated, 1), else_=0)).label("estimated"),
                sa.func.sum(r.duration_ms).label("duration_ms"),
                sa.func.sum(busy).label("busy_ms"),
            )
            .where(r.ts >= since)
            .group_by(r[by], r.backend, r.served_model)
        )
        if tenant is not None:
            query = query.where(_tenant_and_subtenants(tenant))
        groups: dict[str | None, dict[str, Any]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                part = {
                    "backend": row.backend,
                    "served_model": row.served_model,
                    "requests": int(row.requests),
                    "errors": int(row.errors or 0),
                    "prompt_tokens": int(row.prompt_tokens or 0),
                    "completion_tokens": int(row.completion_tokens or 0),
                    "estimated": int(row.estimated or 0),
                    "duration_ms": float(row.duration_ms or 0.0),
                    "busy_s": float(row.busy_ms or 0.0) / 1000,
                }
                g = groups.get(row.group)
                if g is None:
                    g = groups[row.group] = {"group": row.group, "parts": []}
                g["parts"].append(part)
        out = []
        for g in groups.values():
            parts = g["parts"]
            for key in ("requests", "errors", "prompt_tokens", "completion_tokens", "estimated"):
                g[key] = sum(p[key] for p in parts)
            g["mean_duration_ms"] = sum(p.pop("duration_ms") for p in parts) / g["requests"]
            g["busy_s"] = sum(p["busy_s"] for p in parts)
            out.append(g)
        out.sort(key=lambda g: (-g["requests"], str(g["group"])))
        return out

    def usage_series(
        self,
        since: float,
        until: float,
        bucket: int,
        by: str,
        tenant: str | None = None,
        *,
        cloud: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Model calls that started in the hours from the one holding ``since`` to the one
        holding ``until`` (whole UTC hours: usage_hourly's), summed per time bucket of ``bucket``
        seconds (a multiple of 3600, aligned on multiples of it since the epoch, so days start at
        00:00 UTC), per group (the column named by ``by``, as in usage_summary) and per
        (backend, served_model), which is what pricing needs. One row each: ``start`` (the
        bucket's, epoch seconds), ``group``, ``backend``, ``served_model``, ``requests``,
        ``errors``, ``prompt_tokens``, ``completion_tokens``, ``estimated`` and ``busy_s``;
        ordered by start. ``tenant`` keeps that tenant's calls and its sub-tenants'.

        ``cloud``: the cloud backends. When given, only their calls keep backend and served
        model apart; every other backend's calls are summed as one part, backend ``"*"`` and
        served_model None, since pricing treats all local calls alike (a few parts per group
        and bucket instead of one per backend and model: a week hourly per tenant shrinks from
        ~27k rows to ~8k)."""
        if by not in USAGE_GROUPS:
            raise ValueError(f"cannot group usage by {by!r}")
        if bucket < 3600 or bucket % 3600:
            raise ValueError("bucket: expected a whole number of hours")
        h = usage_hourly.c
        # Inlined, not bound: PostgreSQL must see the same expression in SELECT and GROUP BY.
        # Integer division on both databases (hours are positive).
        width: sa.ColumnElement[int] = sa.literal_column(str(int(bucket)), sa.BigInteger)
        start = h.hour // width * width
        backend: sa.ColumnElement[str] = h.backend
        served: sa.ColumnElement[str] = h.served_model
        if cloud is not None:
            priced_apart = h.backend.in_(sorted(cloud)) if cloud else sa.false()
            backend = sa.case((priced_apart, h.backend), (h.backend == "", ""), else_="*")
            served = sa.case((priced_apart, h.served_model), else_="")
        # Grouped by the labels: the same bound parameters twice are not the same expression to
        # PostgreSQL. Named unlike any column, which PostgreSQL's GROUP BY would take first.
        backend_part, served_part = backend.label("part_backend"), served.label("part_model")
        query = (
            sa.select(
                start.label("start"),
                h[by].label("group"),
                backend_part,
                served_part,
                sa.func.sum(h.requests).label("requests"),
                sa.func.sum(h.errors).label("errors"),
                sa.func.sum(h.prompt_tokens).label("prompt_tokens"),
                sa.func.sum(h.completion_tokens).label("completion_tokens"),
                sa.func.sum(h.estimated).label("estimated"),
                sa.func.sum(h.busy_ms).label("busy_ms"),
            )
            .where(h.hour >= int(since // 3600) * 3600, h.hour < until)
            .group_by(start, h[by], backend_part, served_part)
        )
        if tenant is not None:
            query = query.where(_tenant_and_subtenants(tenant, h.tenant))
        with self.engine.connect() as conn:
            # Plain tuples (unpacked, not Row attributes): a week hourly per tenant is ~30k rows.
            out: list[dict[str, Any]] = [
                {
                    "start": float(start_),
                    "group": group or None,  # '' in usage_hourly
                    "backend": backend or None,
                    "served_model": served or None,
                    "requests": int(n),
                    "errors": int(errors),
                    "prompt_tokens": int(prompt),
                    "completion_tokens": int(completion),
                    "estimated": int(estimated),
                    "busy_s": float(busy_ms) / 1000,
                }
                for start_, group, backend, served, n, errors, prompt, completion, estimated, busy_ms in (
                    conn.execute(query)
                )
            ]
        out.sort(key=lambda x: x["start"])
        return out

    # -- traces ------------------------------------------------------------------------------

    def list_traces(
        self, filters: TraceFilter | None = None, limit: int = 50, before_id: int | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """A page of the request log, newest first: up to ``limit`` (at most 500) rows that match
        ``filters`` with ids below ``before_id``, and the cursor for the next page (None on the
        last). store/traces.py says which index serves which filter."""
        limit = clamp_limit(limit)
        f = filters or TraceFilter()
        with self.engine.connect() as conn:
            window = window_share(conn, f, before_id)
            query = list_query(f, limit + 1, before_id, self.engine.dialect.name, window)
            rows = [dict(r._mapping) for r in conn.execute(query)]
        if len(rows) <= limit:
            return rows, None
        del rows[limit:]
        return rows, rows[-1]["id"]

    def get_trace(self, trace_id: int) -> dict[str, Any] | None:
        """One call's row, with ``content``: {"request": the body as the client sent it,
        parsed, "response": the reply's text}, or None when nothing was stored (or retention
        has deleted it)."""
        r, c = requests.c, trace_contents.c
        # SQLite may reuse the id of a deleted content row: its ts and tenant must match too.
        joined = requests.outerjoin(
            trace_contents,
            sa.and_(c.id == r.content_id, c.ts == r.ts, c.tenant.is_not_distinct_from(r.tenant)),
        )
        query = (
            sa.select(requests, c.id.label("_content"), c.request.label("_request"))
            .add_columns(c.response.label("_response"))
            .select_from(joined)
            .where(r.id == trace_id)
        )
        with self.engine.connect() as conn:
            found = conn.execute(query).first()
        if found is None:
            return None
        row = dict(found._mapping)
        has, request, response = row.pop("_content"), row.pop("_request"), row.pop("_response")
        row["content"] = None
        if has is not None:
            try:
                body = json.loads(request)
            except ValueError:
                body = request  # not JSON after all: shown as it came
            row["content"] = {"request": body, "response": response}
        return row

    def delete_requests_before(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` request-log rows of calls started before ``before``; how many
        went. Small batches keep SQLite's write lock short."""
        r = requests.c
        batch = sa.select(r.id).where(r.ts < before).limit(limit)
        with self.engine.begin() as conn:
            return int(conn.execute(requests.delete().where(r.id.in_(batch.scalar_subquery()))).rowcount)

    def delete_contents(
        self,
        keep: Mapping[str, float | None],
        default: float | None,
        before: float | None,
        limit: int,
    ) -> int:
        """Delete up to ``limit`` stored prompts and replies; how many went. ``keep`` maps a
        tenant (with its sub-tenants "t/...") to the time before which its content goes, or None
        when all of it goes; ``default`` is that time for every other tenant; and anything
        older than ``before`` goes whoever it belongs to."""
        c = trace_contents.c

        def older(cutoff: float | None) -> Any:
            return sa.true() if cutoff is None else c.ts < cutoff

        conds = []
        named = []
        for tenant, cutoff in keep.items():
            mine = sa.or_(c.tenant == tenant, c.tenant.startswith(f"{tenant}/", autoescape=True))
            named.append(mine)
            conds.append(sa.and_(mine, older(cutoff)))
        others = sa.or_(c.tenant.is_(None), sa.not_(sa.or_(*named))) if named else sa.true()
        conds.append(sa.and_(others, older(default)))
        if before is not None:
            conds.append(c.ts < before)
        batch = sa.select(c.id).where(sa.or_(*conds)).limit(limit).scalar_subquery()
        with self.engine.begin() as conn:
            return int(conn.execute(trace_contents.delete().where(c.id.in_(batch))).rowcount)

    def overview(self, since: float | None = None, now: float | None = None) -> dict[str, Any]:
        """What the hub's overview needs from the log: calls and errors in the last minute and
        the last five minutes before ``now``; calls, errors and tokens since ``since`` (default:
        the start of now's UTC day), in all and per model, busiest first. Calls count by when
        they started."""
        now = time.time() if now is None else now
        since = now - now % 86400 if since is None else since
        recent_query, today_query = overview_queries(since, now)
        with self.engine.connect() as conn:
            recent = conn.execute(recent_query).one()
            models = [
                {
                    "model": r.model,
                    "requests": int(r.requests),
                    "errors": int(r.errors),
                    "prompt_tokens": int(r.prompt_tokens),
                    "completion_tokens": int(r.completion_tokens),
                }
                for r in conn.execute(today_query)
            ]
        models.sort(key=lambda m: (-m["requests"], str(m["model"])))
        today = {
            key: sum(m[key] for m in models)
            for key in ("requests", "errors", "prompt_tokens", "completion_tokens")
        }
        return {
            "now": now,
            "last_minute": {"requests": int(recent.requests_1m), "errors": int(recent.errors_1m)},
            "last_5_minutes": {"requests": int(recent.requests_5m), "errors": int(recent.errors_5m)},
            "today": {"since": since, **today, "tokens": today["prompt_tokens"] + today["completion_tokens"]},
            "models_today": models,
        }
