"""Built-in alerts: five rules evaluated in one background task, one notification when an alert
fires and one when it resolves, and a history in the store.

Rules, each per subject (thresholds are the ``alerts:`` settings; a null threshold turns its
rule off):

- ``backend_down`` (a backend): its health polls have failed for ``backend_down_after`` seconds,
  counted from the first failed poll (the pool tells us after every poll);
- ``slow_responses`` (a model): the p95 duration of its successful calls in the last ``window``
  seconds is above ``slow_p95_seconds``, once there are ``min_calls`` of them;
- ``error_rate`` (a model): the share of its calls in the window that failed on the server side
  (status 5xx, or a backend that broke off a stream after its 200; never 4xx or a client that hung
  up) is above ``error_rate``, once there are ``min_calls`` calls;
- ``quota_nearly_used`` (a tenant's ``tokens_per_day`` or ``tokens_per_month``): it has used
  ``quota_fraction`` of it, counted from the request log like the limits' own start-up seed;
- ``disk_low`` (the data directory): less than ``disk_free_gb`` GB (10^9 bytes) free.

Calls reach us through ``Metrics.listeners``, i.e. from ``Trace.finish``, where every call ends:
one append of (time, duration, failure reason) to a bounded deque per model label. Labels are
bounded too (an alias or a model some backend serves, else ``other``), and the window is cut when
the rules run, not per call. The token totals and the disk are read in a thread, never on the
request path.

De-duplication: an alert (rule + subject) notifies once when it starts firing and once when it
resolves, saying how long it fired; while it stays firing only ``repeat_after`` (off by default)
sends a reminder. Alerts that were firing when Hearth stopped are taken up again from the
history at start, so a restart neither repeats them nor forgets to resolve them. A rule that
could not be evaluated (the store did not answer) leaves its alerts as they were. Each Hearth
process evaluates on its own: where several share a store, enable alerts on one of them.

Notifications go out through observability/notify.py's channels (webhook, ntfy, Telegram,
Slack-compatible), each with its own worker and bounded queue: a slow or dead channel never
holds up the evaluation or another channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import sqlite3
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import sqlalchemy.exc

from hearth import background
from hearth.observability.notify import MAX_QUEUED, TITLES, Channel, Event, Notice
from hearth.settings import Settings
from hearth.store.db import Store

log = logging.getLogger("hearth.alerts")

RULES = ("backend_down", "slow_responses", "error_rate", "quota_nearly_used", "disk_low")
# Calls remembered per model: a window busier than this judges its latest calls only.
MAX_CALLS = 4096
# Error reasons (observability/metrics.py) that count against error_rate.
_SERVER_FAILURES = frozenset({"server_error", "mid_stream"})
_STORE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error)
GB = 1e9


class BackendView(Protocol):
    """What the alerts read of a backend after each poll (backends/pool.py's BackendState)."""

    @property
    def name(self) -> str: ...

    @property
    def up(self) -> bool: ...

    @property
    def last_error(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule's verdict on one subject: this is wrong now."""

    rule: str
    subject: str
    value: float
    threshold: float
    message: str


@dataclass(slots=True)
class Alert:
    """A rule + subject that is firing."""

    rule: str
    subject: str
    value: float
    threshold: float
    message: str
    since: float
    notified: float  # when a channel was last told (for repeat_after)

    def notice(self, event: Event, now: float) -> Notice:
        message = self.message
        if event == "resolved":
            title = TITLES[self.rule].format(self.subject)
            message = f"{title}: resolved after {duration(now - self.since)}"
        elif event == "reminder":
            message = f"firing for {duration(now - self.since)}: {self.message}"
        resolved_at = now if event == "resolved" else None
        return Notice(
            event, self.rule, self.subject, self.value, self.threshold, message, self.since, resolved_at
        )

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "subject": self.subject,
            "title": TITLES[self.rule].format(self.subject),
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "since": self.since,
            "firing_for_s": round(now - self.since, 3),
        }


def duration(seconds: float) -> str:
    """``45 s``, ``5 min 12 s``, ``2 h 3 min``, ``1 d 4 h``."""
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s" if s else f"{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def _month_start(now: float) -> float:
    t = datetime.fromtimestamp(now, UTC)
    return datetime(t.year, t.month, 1, tzinfo=UTC).timestamp()


def _free_bytes(path: Path) -> int:
    """Free space of the file system holding ``path`` (or its nearest existing parent)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


class Alerts:
    """The rules' state, the evaluation task and the channels, for one app."""

    def __init__(
        self, settings: Settings, store: Store, flush: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.settings = settings
        self.cfg = settings.alerts
        self.store = store
        # Writes the request log's pending rows, so token totals include the latest calls.
        self._flush = flush
        self.firing: dict[tuple[str, str], Alert] = {}
        self.channels = [Channel(c, i) for i, c in enumerate(self.cfg.channels)]
        self._calls: dict[str, deque[tuple[float, float, str | None]]] = {}
        self._down: dict[str, tuple[float, BackendView]] = {}  # name -> (first failed poll, state)
        # Tokens per principal in this month's days before today, and the day they were read on.
        self._past: tuple[float, dict[str, int]] = (0.0, {})
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []

    # -- inputs, called on the loop ------------------------------------------------------------

    def observe(self, model: str, backend: str, status: int, reason: str | None, seconds: float) -> None:
        """A call finished (a ``Metrics.listeners`` entry): about a microsecond."""
        calls = self._calls.get(model)
        if calls is None:
            calls = self._calls[model] = deque(maxlen=MAX_CALLS)
        calls.append((time.monotonic(), seconds, reason))

    def backend_polled(self, state: BackendView) -> None:
        """A health poll ended (a ``Pool.listeners`` entry)."""
        if state.up:
            self._down.pop(state.name, None)
        elif state.name not in self._down:
            self._down[state.name] = (time.time(), state)

    # -- life ----------------------------------------------------------------------------------

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Take up the alerts still firing in the history, then evaluate every ``interval``."""
        if not self.cfg.enabled:
            return
        await self.restore()
        self._workers = [
            asyncio.create_task(ch.run(session), name=f"hearth-alert-channel-{i}")
            for i, ch in enumerate(self.channels)
        ]
        self._task = asyncio.create_task(self._loop(), name="hearth-alerts")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
        if self._workers:
            with contextlib.suppress(TimeoutError):  # a second for what is queued, then give up
                await asyncio.wait_for(self.notified(), timeout=1.0)
        for task in self._workers:
            await background.stop(task)
        self._workers = []

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.interval)
            try:
                await self.evaluate_now()
            except Exception:
                log.exception("alerts: evaluation failed")

    async def restore(self) -> None:
        """Take up the alerts the history says were firing when the last process stopped."""
        try:
            rows = await asyncio.to_thread(self.store.open_alerts)
        except _STORE_ERRORS as exc:
            log.warning("alerts: could not read the alerts firing before the restart: %s", exc)
            return
        now = time.time()
        for r in rows:
            if r["rule"] in RULES:
                self.firing[(r["rule"], r["subject"])] = Alert(
                    r["rule"],
                    r["subject"],
                    r["value"] or 0.0,
                    r["threshold"] or 0.0,
                    r["message"],
                    since=r["since"],
                    notified=now,
                )

    async def notified(self) -> None:
        """Wait until every queued notification has been delivered or given up on."""
        if self._workers:
            for ch in self.channels:
                await ch.queue.join()

    # -- evaluation ----------------------------------------------------------------------------

    async def evaluate_now(self) -> list[Notice]:
        """Run every rule once, record and send what changed; returns the notices sent."""
        async with self._lock:
            now = time.time()
            findings = self._backend_findings(now) + self._call_findings()
            evaluated = {"backend_down", "slow_responses", "error_rate"}
            try:
                findings += await self._quota_findings(now)
                evaluated.add("quota_nearly_used")
            except _STORE_ERRORS as exc:
                log.warning("alerts: could not read token usage: %s", exc)
            try:
                findings += await self._disk_findings()
                evaluated.add("disk_low")
            except OSError as exc:
                log.warning("alerts: could not read free disk space: %s", exc)
            notices = self._transitions(findings, evaluated, now)
            await self._record(notices, now)
            for n in notices:
                self._notify(n)
            return notices

    def _backend_findings(self, now: float) -> list[Finding]:
        after = self.cfg.backend_down_after
        if after is None:
            return []
        out = []
        for name, (since, state) in self._down.items():
            down_for = now - since
            # Once firing, it fires until a poll succeeds (also when taken up after a restart,
            # whose first failed poll is recent).
            if down_for >= after or ("backend_down", name) in self.firing:
                why = f": {state.last_error[:200]}" if state.last_error else ""
                message = f"backend {name} has failed its health checks for {duration(down_for)}{why}"
                out.append(Finding("backend_down", name, round(down_for, 3), after, message))
        return out

    def _call_findings(self) -> list[Finding]:
        cfg = self.cfg
        cutoff = time.monotonic() - cfg.window
        window = duration(cfg.window)
        out = []
        for model in list(self._calls):
            calls = self._calls[model]
            while calls and calls[0][0] < cutoff:
                calls.popleft()
            if not calls:
                del self._calls[model]
                continue
            slow = cfg.slow_p95_seconds
            if slow is not None:
                ok = sorted(d for _, d, reason in calls if reason is None)
                if len(ok) >= cfg.min_calls:
                    p95 = ok[math.ceil(0.95 * len(ok)) - 1]  # nearest rank
                    if p95 > slow:
                        message = (
                            f"p95 of {len(ok)} successful calls to {model} in the last {window}: "
                            f"{p95:.2f} s, above {slow:g} s"
                        )
                        out.append(Finding("slow_responses", model, round(p95, 3), slow, message))
            limit = cfg.error_rate
            if limit is not None and len(calls) >= cfg.min_calls:
                failed = sum(1 for _, _, reason in calls if reason in _SERVER_FAILURES)
                rate = failed / len(calls)
                if rate > limit:
                    message = (
                        f"{failed} of {len(calls)} calls to {model} in the last {window} failed on the "
                        f"server side ({rate:.0%}, above {limit:.0%})"
                    )
                    out.append(Finding("error_rate", model, round(rate, 4), limit, message))
        return out

    async def _quota_findings(self, now: float) -> list[Finding]:
        fraction = self.cfg.quota_fraction
        s = self.settings
        policies = [s.tenant_defaults, *s.tenants.values()]
        if fraction is None or not any(p.tokens_per_day or p.tokens_per_month for p in policies):
            return []
        today, month = await self._token_totals(now, monthly=any(p.tokens_per_month for p in policies))
        out = []
        for name in sorted(month):
            # A person behind a shared key ("svc/alice") has its tenant's limits, as in limits.py.
            p = s.tenants.get(name.partition("/")[0], s.tenant_defaults)
            for key, limit, used, per in (
                ("tokens_per_day", p.tokens_per_day, today.get(name, 0), "day"),
                ("tokens_per_month", p.tokens_per_month, month[name], "month"),
            ):
                if limit and used >= fraction * limit:
                    share = used / limit
                    message = f"tenant {name} has used {used:,} of {limit:,} tokens per {per} ({share:.0%})"
                    subject = f"{name} {key}"
                    out.append(Finding("quota_nearly_used", subject, round(share, 4), fraction, message))
        return out

    async def _token_totals(self, now: float, monthly: bool) -> tuple[dict[str, int], dict[str, int]]:
        """Tokens per principal today and this month (UTC), from the request log. The days of the
        month before today do not change: they are summed once a day, then only today is read."""
        day_start = now - now % 86400
        if self._flush is not None:
            await self._flush()  # the latest calls too
        since = day_start
        if monthly and self._past[0] != day_start:
            since = _month_start(now)
        rows = await asyncio.to_thread(self.store.token_totals_since, since)
        today: defaultdict[str, int] = defaultdict(int)
        past: defaultdict[str, int] = defaultdict(int)
        for name, day, tokens in rows:
            (today if day >= day_start else past)[name] += tokens
        if since != day_start:
            self._past = (day_start, dict(past))
        month = defaultdict(int, today)
        if monthly:
            for name, tokens in self._past[1].items():
                month[name] += tokens
        return today, month

    async def _disk_findings(self) -> list[Finding]:
        limit = self.cfg.disk_free_gb
        if limit is None:
            return []
        path = self.settings.data_path
        free = await asyncio.to_thread(_free_bytes, path) / GB
        if free >= limit:
            return []
        message = f"{free:.1f} GB free where {path} lives, under {limit:g} GB"
        return [Finding("disk_low", str(path), round(free, 3), limit, message)]

    def _transitions(self, findings: list[Finding], evaluated: set[str], now: float) -> list[Notice]:
        out = []
        seen = set()
        repeat = self.cfg.repeat_after
        for f in findings:
            key = (f.rule, f.subject)
            seen.add(key)
            a = self.firing.get(key)
            if a is None:
                a = self.firing[key] = Alert(f.rule, f.subject, f.value, f.threshold, f.message, now, now)
                log.warning("alert firing: %s: %s", TITLES[a.rule].format(a.subject), a.message)
                out.append(a.notice("fired", now))
                continue
            a.value, a.threshold, a.message = f.value, f.threshold, f.message
            if repeat is not None and now - a.notified >= repeat:
                a.notified = now
                out.append(a.notice("reminder", now))
        for key, a in list(self.firing.items()):
            if key[0] in evaluated and key not in seen:
                del self.firing[key]
                n = a.notice("resolved", now)
                log.info("alert %s", n.message)
                out.append(n)
        return out

    async def _record(self, notices: list[Notice], now: float) -> None:
        rows = [n.row(now) for n in notices if n.event != "reminder"]
        if not rows:
            return

        def write() -> None:
            for row in rows:
                self.store.insert_alert_event(row)

        try:
            await asyncio.to_thread(write)
        except _STORE_ERRORS as exc:
            log.error("alerts: could not record %d alert events: %s", len(rows), exc)

    def _notify(self, n: Notice) -> None:
        if not self._workers:
            return  # not started: no session to send with
        for ch in self.channels:
            try:
                ch.queue.put_nowait(n)
            except asyncio.QueueFull:
                ch.dropped += 1
                log.warning("alert channel %s: %d notifications waiting; dropped one", ch.name, MAX_QUEUED)

    # -- the admin view ------------------------------------------------------------------------

    def rules(self) -> list[dict[str, Any]]:
        """Each rule with its threshold and the settings it reads."""
        c = self.cfg

        def rule(name: str, subject: str, key: str, unit: str, what: str, **more: Any) -> dict[str, Any]:
            threshold = getattr(c, key)
            return {
                "name": name,
                "subject": subject,
                "enabled": c.enabled and threshold is not None,
                "threshold": threshold,
                "unit": unit,
                "description": what,
                "settings": {key: threshold, **more},
            }

        return [
            rule("backend_down", "backend", "backend_down_after", "s", "health polls have failed this long"),
            rule(
                "slow_responses",
                "model",
                "slow_p95_seconds",
                "s",
                "p95 duration of successful calls in the window is above the threshold",
                window=c.window,
                min_calls=c.min_calls,
            ),
            rule(
                "error_rate",
                "model",
                "error_rate",
                "fraction",
                "share of calls in the window failed on the server side (5xx, broken stream)",
                window=c.window,
                min_calls=c.min_calls,
            ),
            rule(
                "quota_nearly_used",
                "tenant and limit",
                "quota_fraction",
                "fraction",
                "a tenant has used this share of its tokens_per_day or tokens_per_month",
            ),
            rule(
                "disk_low",
                "data directory",
                "disk_free_gb",
                "GB",
                "free space of the data directory is under the threshold",
                path=str(self.settings.data_path),
            ),
        ]

    async def snapshot(self, limit: int = 100) -> dict[str, Any]:
        """Rules, the alerts firing now, the latest ``limit`` events and the channels' counts."""
        history = await asyncio.to_thread(self.store.alert_events, limit)
        now = time.time()
        return {
            "enabled": self.cfg.enabled,
            "interval": self.cfg.interval,
            "repeat_after": self.cfg.repeat_after,
            "rules": self.rules(),
            "firing": [a.as_json(now) for a in sorted(self.firing.values(), key=lambda a: a.since)],
            "history": history,
            "channels": [ch.as_json() for ch in self.channels],
        }
