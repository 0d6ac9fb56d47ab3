"""Trace queries over the request log (one row per model call is one trace's metadata): the
filterable list, newest first in keyset pages, and the aggregates of the hub's overview.
``Store.list_traces``, ``get_trace`` and ``overview`` run what this module builds.

A list page is "the rows that match, with an id below the cursor, newest id first, at most n".
That is fast only when an index yields the rows already in id order, so the database walks it
backwards and stops after n rows instead of collecting and sorting every match: migration 0006
gives each filter a ``(column, id)`` index (errors and error statuses get partial ones).

Two filters are an OR of two indexed conditions: a model as asked or as served, and a
sub-tenant together with the names below it. An OR makes both SQLite and PostgreSQL gather
every match and sort, so each alternative runs as its own ordered, limited branch and the page is
the newest n of the branches' ids (the newest n of a union are among the newest n of each part).
A tenant with its sub-tenants ("t" and "t/...") is a single equality on the name's root (the part
before the first "/"), indexed as an expression. The index expressions, the error predicate and
the PostgreSQL collation below must read exactly as in migration 0006, or the indexes go unused;
tests/store/test_traces.py checks the SQLite plans.

SQLite keeps no statistics (Hearth never runs ANALYZE), so each condition tells it its usual
share of the rows (``likelihood()``) and it walks the narrowest index; PostgreSQL has statistics.

The time filters are on ``ts`` (when the call started) while pages are ordered by id (when its
row was written, as the call ended): ids follow start times closely but not exactly, so no index
serves both. ``since`` alone costs next to nothing (its rows are the newest). With ``until``,
``window_share`` places the window among the ids with a few index seeks and picks the cheaper
plan: walk back from the cursor past the calls that started later, or read the window through
the ``ts`` index and sort it. Either way that cost grows with the log, like that of
``min_duration_ms``, which has no index: a threshold few calls pass reads most of the log
(bench/README.md, "Trace list", has the figures).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from hearth.store.schema import requests

DEFAULT_LIMIT = 50
MAX_LIMIT = 500

# Literal SQL, never bound parameters: SQLite uses an expression or partial index only when the
# query repeats the index's expression, and PostgreSQL cannot prove a partial index's predicate
# from a parameter once psycopg prepares the statement.
_ROOT = {
    "sqlite": "substr(tenant, 1, instr(tenant || '/', '/') - 1)",
    "postgresql": "split_part(tenant, '/', 1)",
}
_ERROR = "status >= 400 OR error IS NOT NULL"


@dataclass(frozen=True, slots=True)
class TraceFilter:
    """What a trace list keeps; None (or False) means no condition. Every condition must hold."""

    tenant: str | None = None  # this tenant and, with ``subtenants``, the names "tenant/..."
    subtenants: bool = True
    model: str | None = None  # as the client asked (an alias, say) or as the backend served it
    backend: str | None = None
    status: int | None = None
    errors_only: bool = False  # HTTP status >= 400, or an error after the reply started
    since: float | None = None  # ts >= since (epoch seconds)
    until: float | None = None  # ts < until
    min_duration_ms: float | None = None


def error_condition() -> ColumnElement[Any]:
    """A failed call, as the partial indexes of migration 0006 spell it."""
    return sa.literal_column(f"({_ERROR})")  # untyped: a Boolean would render "(...) = 1" on SQLite


def _tenant(dialect: str) -> ColumnElement[Any]:
    # PostgreSQL compares tenants bytewise ("C"), like SQLite, so that a sub-tenant range is
    # exactly the names under it whatever the database's collation; the index is built so too.
    col = requests.c.tenant
    return col.collate("C") if dialect == "postgresql" else col


def _root(dialect: str) -> ColumnElement[Any]:
    return sa.literal_column(_ROOT["postgresql" if dialect == "postgresql" else "sqlite"])


# What a row read through the ts index and then sorted costs, in rows walked past in id order
# (bench/traces.py on 1M rows: SQLite walks its table very cheaply).
_INDEX_ROW_COST = {"sqlite": 8, "postgresql": 2}

# The share of the rows each filter is expected to keep, told to SQLite (below).
_SHARE = {"status": 0.002, "errors": 0.02, "tenant": 0.02, "root": 0.05, "model": 0.05, "backend": 0.2}


def _conditions(f: TraceFilter, dialect: str, window: float | None) -> tuple[list[Any], list[list[Any]]]:
    """(conditions that must all hold, OR groups: each holds if one of its conditions does)."""
    r = requests.c
    sqlite = dialect != "postgresql"

    def expect(cond: Any, kind: str) -> Any:
        # SQLite keeps no statistics unless ANALYZE runs, which Hearth never does: it then takes
        # every equality to match ~10 rows and picks among several indexes at random (a backend,
        # matching a third of the log, over a person's name cost 0.2 s on 1M rows). likelihood()
        # tells it the usual share instead; the term still drives its index. PostgreSQL has
        # statistics (autovacuum analyzes).
        if not sqlite:
            return cond
        return sa.func.likelihood(cond, sa.literal_column(repr(_SHARE[kind])))

    common: list[Any] = []
    groups: list[list[Any]] = []
    if f.tenant is not None:
        tenant = _tenant(dialect)
        if not f.subtenants:
            common.append(expect(tenant == f.tenant, "tenant"))
        elif "/" not in f.tenant:
            # root == t  <=>  tenant == t or tenant starts with "t/", for a t without "/".
            common.append(expect(_root(dialect) == f.tenant, "root"))
        else:
            # Names under a sub-tenant: bytewise, "t/" <= name < "t0" ("0" follows "/").
            below = sa.and_(tenant >= f.tenant + "/", tenant < f.tenant + "0")
            groups.append([expect(tenant == f.tenant, "tenant"), below])
    if f.model is not None:
        groups.append([expect(r.model == f.model, "model"), expect(r.served_model == f.model, "model")])
    if f.backend is not None:
        common.append(expect(r.backend == f.backend, "backend"))
    if f.status is not None:
        common.append(expect(r.status == f.status, "status"))
        if f.status >= 400:
            common.append(error_condition())  # always true here; lets the partial index serve it
    if f.errors_only:
        common.append(expect(error_condition(), "errors"))
    if f.since is not None:
        common.append(r.ts >= f.since)
    if f.until is not None:
        until = r.ts < f.until
        if window is not None and sqlite:  # SQLite is told how few rows the window holds
            until = sa.func.likelihood(until, sa.literal_column(repr(min(max(window, 1e-6), 1.0))))
        common.append(until)
    if f.min_duration_ms is not None:
        common.append(r.duration_ms >= f.min_duration_ms)
    return common, groups


def window_share(conn: sa.Connection, f: TraceFilter, before_id: int | None) -> float | None:
    """With ``until`` set: the rough share of the rows below the cursor that started inside the
    time window, when reading the window through the ``ts`` index costs less than walking back
    from the cursor past every row that started later; else None.

    Ids follow start times closely enough to place a time: the first call started at or after a
    time (one ``ts`` index seek) says where it sits among the ids. Only the plan depends on this
    guess, never the rows returned."""
    if f.until is None:
        return None
    r = requests.c
    # Two statements: SQLite reads min(id) and max(id) from the primary key only one at a time.
    first = conn.execute(sa.select(sa.func.min(r.id))).scalar()
    last = conn.execute(sa.select(sa.func.max(r.id))).scalar()
    if first is None or last is None:
        return None
    low, high = int(first), int(last)

    def position(ts: float) -> int:
        found = conn.execute(sa.select(r.id).where(r.ts >= ts).order_by(r.ts).limit(1)).scalar()
        return high + 1 if found is None else int(found)

    top = high + 1 if before_id is None else min(before_id, high + 1)
    end = position(f.until)
    start = low if f.since is None else position(f.since)
    later = top - end  # rows the usual plan walks past before the window starts
    inside = max(min(top, end) - start, 0)
    if _INDEX_ROW_COST.get(conn.dialect.name, 8) * inside >= later:
        return None
    return max(inside, 1) / max(top - low, 1)


def list_query(
    f: TraceFilter, limit: int, before_id: int | None, dialect: str, window: float | None = None
) -> sa.Select[Any]:
    """Up to ``limit`` rows matching ``f`` with ids below ``before_id``, newest first.

    ``window`` (from ``window_share``) reads the rows of the time window and sorts them instead:
    ordering by ``id + 0`` keeps the database from walking the id order."""
    r = requests.c
    common, groups = _conditions(f, dialect, window)
    order = r.id.desc() if window is None else (r.id + 0).desc()
    if before_id is not None:
        common.append(r.id < before_id)
    branches = list(itertools.product(*groups))
    if len(branches) == 1:
        return sa.select(requests).where(*common, *branches[0]).order_by(order).limit(limit)
    parts = [
        sa.select(r.id).where(*common, *branch).order_by(order).limit(limit).subquery() for branch in branches
    ]
    # The newest ids of the branches first, then only those rows: joined to an IN list instead,
    # PostgreSQL may walk the primary key down to the oldest of them.
    ids = sa.union(*(sa.select(p.c.id) for p in parts)).subquery()
    top = sa.select(ids.c.id).order_by(ids.c.id.desc()).limit(limit).subquery()
    return sa.select(requests).join(top, r.id == top.c.id).order_by(top.c.id.desc())


def overview_queries(since: float, now: float) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """(the last five minutes' calls and errors, with the last minute's; today's calls, errors
    and tokens per model). Both read only their time range through the ``ts`` index. A call counts
    at its start time; the model is the one served, or the one asked for a call never served."""
    r = requests.c
    failed = error_condition()
    minute = r.ts >= now - 60

    def count(cond: Any) -> ColumnElement[Any]:
        return sa.func.coalesce(sa.func.sum(sa.case((cond, 1), else_=0)), 0)

    recent = sa.select(
        sa.func.count().label("requests_5m"),
        count(failed).label("errors_5m"),
        count(minute).label("requests_1m"),
        count(sa.and_(minute, failed)).label("errors_1m"),
    ).where(r.ts >= now - 300, r.ts <= now)
    model = sa.func.coalesce(r.served_model, r.model)
    today = (
        sa.select(
            model.label("model"),
            sa.func.count().label("requests"),
            count(failed).label("errors"),
            sa.func.coalesce(sa.func.sum(r.prompt_tokens), 0).label("prompt_tokens"),
            sa.func.coalesce(sa.func.sum(r.completion_tokens), 0).label("completion_tokens"),
        )
        .where(r.ts >= since, r.ts <= now)
        .group_by(model)
    )
    return recent, today


def clamp_limit(limit: int) -> int:
    if limit < 1:
        raise ValueError("limit must be at least 1")
    return min(limit, MAX_LIMIT)
