"""Alert notifications: what a channel is told, and the channels that tell it.

Four kinds, each one POST (observability/alerts.py decides when):

- ``webhook``: the alert as JSON, ``{alert, subject, state, value, threshold, message, since,
  resolved_at}`` (``state``: firing | resolved; times in epoch seconds);
- ``ntfy``: the message as text to the topic URL, with ntfy's ``Title``, ``Priority`` and
  ``Tags`` headers (non-ASCII titles RFC 2047-encoded, which ntfy decodes);
- ``telegram``: ``{chat_id, text}`` to ``<api_url>/bot<token>/sendMessage``;
- ``slack``: ``{"text": ...}`` to an incoming-webhook URL (Mattermost and Discord's ``/slack``
  URLs take the same).

Each channel has one worker and a bounded queue, so a slow or dead channel delays only itself.
A failed delivery is logged under the channel's name, never its URL, token or headers (any of
them may be a secret), counted, and not retried.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp

from hearth.settings import AlertChannel

log = logging.getLogger("hearth.alerts")

# How each rule names what is wrong with its subject, in notifications.
TITLES = {
    "backend_down": "backend {} down",
    "slow_responses": "slow responses from {}",
    "error_rate": "server errors from {}",
    "quota_nearly_used": "{} nearly used",
    "disk_low": "low disk space at {}",
}
# Notifications waiting per channel; beyond this they are dropped and counted.
MAX_QUEUED = 100
Event = Literal["fired", "resolved", "reminder"]


@dataclass(frozen=True, slots=True)
class Notice:
    """What a channel is told: an alert fired, resolved, or is still firing (a reminder)."""

    event: Event
    rule: str
    subject: str
    value: float
    threshold: float
    message: str
    since: float
    resolved_at: float | None = None

    @property
    def state(self) -> Literal["firing", "resolved"]:
        return "resolved" if self.event == "resolved" else "firing"

    @property
    def title(self) -> str:
        return TITLES[self.rule].format(self.subject)

    def text(self) -> str:
        head = {"fired": "FIRING", "resolved": "RESOLVED", "reminder": "STILL FIRING"}[self.event]
        return f"[Hearth] {head}: {self.title}\n{self.message}"

    def payload(self) -> dict[str, Any]:
        """The generic webhook's JSON body."""
        return {
            "alert": self.rule,
            "subject": self.subject,
            "state": self.state,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "since": self.since,
            "resolved_at": self.resolved_at,
        }

    def row(self, ts: float) -> dict[str, Any]:
        """The history row (store/schema.py's alert_events)."""
        return {
            "ts": ts,
            "rule": self.rule,
            "subject": self.subject,
            "event": self.event,
            "value": self.value,
            "threshold": self.threshold,
            "message": self.message,
            "since": self.since,
        }


class _Undelivered(Exception):
    """The channel answered, but not with a success."""


class Channel:
    """One notification target: its queue, its worker, and what it delivered."""

    def __init__(self, cfg: AlertChannel, index: int) -> None:
        self.cfg = cfg
        self.name = cfg.name or f"{cfg.kind} #{index + 1}"
        self.queue: asyncio.Queue[Notice] = asyncio.Queue(MAX_QUEUED)
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None

    def request(self, n: Notice) -> tuple[str, dict[str, Any]]:
        """(URL, aiohttp request arguments) of the notification in this channel's shape."""
        cfg = self.cfg
        if cfg.kind == "telegram":
            url = f"{cfg.api_url.rstrip('/')}/bot{cfg.token}/sendMessage"
            return url, {"json": {"chat_id": cfg.chat_id, "text": n.text()}}
        assert cfg.url is not None  # settings.py checks it for the other kinds
        if cfg.kind == "slack":
            return cfg.url, {"json": {"text": n.text()}}
        if cfg.kind == "ntfy":
            # ntfy's header API: Title, Priority (min, low, default, high, urgent), Tags (emoji
            # short codes). The body is the message, plain UTF-8 text.
            headers = {
                "Title": _header(f"Hearth: {n.title}" + (" (resolved)" if n.event == "resolved" else "")),
                "Priority": "high" if n.event == "fired" else "default",
                "Tags": "rotating_light" if n.state == "firing" else "white_check_mark",
            }
            return cfg.url, {"data": n.message, "headers": headers}
        return cfg.url, {"json": n.payload()}

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            n = await self.queue.get()
            try:
                await self.deliver(session, n)
            finally:
                self.queue.task_done()

    async def deliver(self, session: aiohttp.ClientSession, n: Notice) -> None:
        url, kwargs = self.request(n)
        headers = {**kwargs.pop("headers", {}), **self.cfg.headers}
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout)
        try:
            async with session.post(url, headers=headers, timeout=timeout, **kwargs) as resp:
                await resp.read()
                if resp.status >= 300:
                    raise _Undelivered(f"HTTP {resp.status}")
        except Exception as exc:  # whatever went wrong, the alert loop carries on
            self.failed += 1
            self.last_error = _describe(exc)
            self.last_error_at = time.time()
            log.warning("alert channel %s: could not deliver %r: %s", self.name, n.title, self.last_error)
        else:
            self.sent += 1

    def as_json(self) -> dict[str, Any]:
        """Counts and the last error; never the URL, token or headers (they may be secrets)."""
        return {
            "name": self.name,
            "kind": self.cfg.kind,
            "sent": self.sent,
            "failed": self.failed,
            "dropped": self.dropped,
            "queued": self.queue.qsize(),
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


def _describe(exc: BaseException) -> str:
    """Why a delivery failed, with nothing that could hold a secret: aiohttp's messages carry
    the URL, and a Telegram URL holds the bot's token."""
    if isinstance(exc, _Undelivered):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {getattr(exc.os_error, 'strerror', None) or 'connection failed'}"
    return type(exc).__name__


def _header(text: str) -> str:
    """A header value: ASCII as it is, anything else RFC 2047-encoded (ntfy decodes it)."""
    text = " ".join(text.split())
    if text.isascii():
        return text
    return f"=?UTF-8?B?{base64.b64encode(text.encode()).decode()}?="
