"""The storage interface: SQL lives here in named methods, never in handlers.

SQLite (the embedded default, a file in the data directory) runs in WAL mode with one writer;
PostgreSQL takes the same calls through SQLAlchemy Core. Calls are synchronous and short.

Writes of the request log are the exception to "run it in a thread": measured under load, a
writer thread gets so little of the GIL next to a busy event loop that a 10k-row batch took
seconds and rows piled up in memory (bench/README.md). For SQLite the log instead writes small
batches of tuples on the loop through one raw connection (~5 us a row) with automatic
checkpoints off; ``checkpoint()``, the only step that waits on fsync, runs in a thread.
Migrations (Alembic) run only when asked: ``hearth migrate`` and ``hearth serve`` start-up.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from hearth.store.schema import REQUEST_COLUMNS, api_keys, requests, tenants

MIGRATIONS = Path(__file__).parent / "migrations"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'hearth.db'}"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, fast commits
    cur.execute("PRAGMA busy_timeout=5000")
    cur.close()


_INSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) VALUES ({', '.join('?' * len(REQUEST_COLUMNS))})"
)


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
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        self._writer: Any = None  # the raw DBAPI connection of the SQLite request-log writer
        self._watch: Any = None  # the connection that asks SQLite's data_version

    def migrate(self) -> None:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    @property
    def inline_writes(self) -> bool:
        """True when insert_requests is cheap enough to call on the event loop."""
        return self.is_sqlite

    def insert_requests(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Rows are tuples in REQUEST_COLUMNS order."""
        if not rows:
            return
        if not self.is_sqlite:
            with self.engine.begin() as conn:
                conn.execute(requests.insert(), [dict(zip(REQUEST_COLUMNS, r, strict=True)) for r in rows])
            return
        if self._writer is None:
            self._writer = self.engine.raw_connection()
            cur = self._writer.cursor()
            cur.execute("PRAGMA wal_autocheckpoint=0")  # checkpoint() does it, off the loop
            cur.close()
        cur = self._writer.cursor()
        try:
            cur.executemany(_INSERT_REQUEST, rows)
            self._writer.commit()
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
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(tenants.c.name).where(tenants.c.name == name)).first()
            if found is not None:
                return False
            conn.execute(tenants.insert().values(name=name, created_at=time.time()))
            return True

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

    def data_version(self) -> int | None:
        """Changes whenever another connection (another process too) commits to the database:
        a cheap way to notice keys created or revoked by the CLI. None if unsupported."""
        if not self.is_sqlite:
            return None
        if self._watch is None:
            self._watch = self.engine.raw_connection()
        cur = self._watch.cursor()
        try:
            cur.execute("PRAGMA data_version")
            return int(cur.fetchone()[0])
        finally:
            cur.close()

    def close(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.dispose()
