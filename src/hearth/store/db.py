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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from hearth.store.schema import REQUEST_COLUMNS, requests

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

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.dispose()
