"""The retention job: deletes what Hearth no longer keeps, at start-up and every
``store.retention_interval`` seconds.

- request-log rows (metadata) of calls older than ``store.retention_days`` (null: kept forever);
- stored prompts and replies older than their tenant's ``content_retention_days``, all of a
  tenant's once it no longer has ``store_content`` on, and any older than the metadata.

Deletes run in batches of ``BATCH`` rows, each its own short transaction in a thread: SQLite has
one writer, and the request log writes on the event loop, so no batch may hold the lock for long.
A trace whose content is gone shows ``content: null``; its ``content_id`` stays (the store joins
on it, never trusts it alone). Each run is counted in ``hearth_retention_deleted_total{table}``
and ``hearth_retention_last_run_timestamp_seconds``, and ``Retention.last`` holds the figures of
the last run. Several Hearths sharing PostgreSQL each run the job; the deletes are idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy.exc
from prometheus_client import CollectorRegistry, Counter, Gauge

from hearth import background
from hearth.settings import Settings
from hearth.store.db import Store

log = logging.getLogger("hearth.retention")

DAY = 86400.0


class Retention:
    # Rows per delete: a few milliseconds of SQLite's write lock each.
    BATCH = 1000

    def __init__(self, settings: Settings, store: Store, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.store = store
        self.interval = settings.store.retention_interval
        self.last: dict[str, Any] | None = None  # {"at", "requests", "contents", "seconds"}
        self._task: asyncio.Task[None] | None = None
        self._deleted = Counter(
            "hearth_retention_deleted",
            "Rows deleted by the retention job, by table (requests: metadata; trace_contents: "
            "stored prompts and replies).",
            ["table"],
            registry=registry,
        )
        self._last_run = Gauge(
            "hearth_retention_last_run_timestamp_seconds",
            "When the retention job last finished a run (epoch seconds).",
            registry=registry,
        )

    def cutoffs(self, now: float) -> tuple[dict[str, float | None], float | None, float | None]:
        """(per configured tenant: content older than this goes, None: all of it; the same for
        every other tenant; metadata older than this goes, None: kept forever)."""

        def content(days: float, stored: bool) -> float | None:
            return now - days * DAY if stored else None

        keep = {
            name: content(t.content_retention_days, t.store_content)
            for name, t in self.settings.tenants.items()
        }
        d = self.settings.tenant_defaults
        days = self.settings.store.retention_days
        return (
            keep,
            content(d.content_retention_days, d.store_content),
            None if days is None else now - days * DAY,
        )

    async def run(self, now: float | None = None) -> dict[str, Any]:
        """One pass over both tables as of ``now`` (default: the clock); the figures of it."""
        now = time.time() if now is None else now
        started = time.perf_counter()
        keep, default, before = self.cutoffs(now)
        contents = await self._in_batches(
            lambda: self.store.delete_contents(keep, default, before, self.BATCH)
        )
        requests = 0
        if before is not None:
            requests = await self._in_batches(lambda: self.store.delete_requests_before(before, self.BATCH))
        self._deleted.labels("trace_contents").inc(contents)
        self._deleted.labels("requests").inc(requests)
        self._last_run.set(time.time())
        self.last = {
            "at": now,
            "requests": requests,
            "contents": contents,
            "seconds": time.perf_counter() - started,
        }
        if requests or contents:
            log.info("retention: deleted %d request rows and %d stored contents", requests, contents)
        return self.last

    async def _in_batches(self, delete: Callable[[], int]) -> int:
        total = 0
        while True:
            n = await asyncio.to_thread(delete)
            total += n
            if n < self.BATCH:
                return total

    async def _loop(self) -> None:
        while True:
            try:
                await self.run()
            except sqlalchemy.exc.SQLAlchemyError as exc:
                log.error("retention run failed (trying again in %.0f s): %s", self.interval, exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="hearth-retention")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
