"""Per-tenant limits, checked before a request is routed; a refusal is a 429 with Retry-After.

Limits apply to each principal (a tenant, or a person behind a shared key, see auth.py) with
its tenant's policy: requests in flight, requests per minute, tokens per minute, tokens per UTC
day and per UTC month.

Token limits are exact under concurrency by reservation. Admission reserves the request's
estimate (prompt bytes / ``limits.bytes_per_token`` plus its max tokens, or
``limits.default_completion_tokens``) and admits only if used + reserved + estimate fits; the
end of the request releases the reservation and charges the backend's real count. So however
many requests race, every admitted one fitted when it was admitted, and the total can exceed a
limit only by how much admitted requests outran their own estimates.

Request and token rates use the ``limits`` library's sliding-window counters (two counters a
key, weighted by how far into the minute we are). Its moving window is exact but keeps one
timestamp per unit of cost: measured at 850 us a request for a token window, against 15 us for
the sliding counter (docs/decisions.md). The asyncio flavour of its in-memory storage is used:
the threaded one starts a timer thread every 10 ms under load, which fights the event loop for
the GIL; the same API fronts Redis when several Hearth processes share limits.

A per-minute token window cannot hand tokens back, so it is charged the estimate at admission
and only the excess at the end.

The previous minute's weighted share is rounded up, not down as the library does: rounding
down let a 1-per-minute tenant through twice across a minute boundary (one call at 59.9 s
weighs 0.998 a moment later, which floors to 0). ``ConservativeMemoryStorage`` and the Lua
script swapped into the Redis storage (``RedisQuotas.rate_storage``) differ from the library's
only there.

In-flight counts, reservations and day/month totals live in a ``QuotaStore``:

- ``MemoryQuotas`` (no ``redis.url``): plain counters in this process, the day and month totals
  seeded at start-up from the request log so a restart forgets nothing.
- ``RedisQuotas`` (``redis.url`` set): shared by every Hearth process using the same Redis (or
  Valkey) server and ``redis.prefix``. Per principal: ``used:<name>:<day>`` and
  ``used:<name>:<month>`` (token totals, expiring a day after their period),
  ``reserved:<name>`` and ``inflight:<name>`` (counters), and ``holds:<name>``, a sorted set of
  the live reservations (``<id>:<estimate>``) scored by their deadline, now +
  ``redis.reservation_ttl`` by the Redis server's clock. Admission is one Lua script: drop
  holds past their deadline (giving back their tokens and in-flight slot), check
  max_concurrent and used + reserved + estimate against the day and month limits, and on
  success add the hold and raise both counters, all atomically. Settlement is another: remove
  the hold, and only if it was still there lower the counters, then charge the real count.
  The rate windows use the ``limits`` library's Redis storage on the same connection pool.

  A process that dies holding reservations leaves them until their deadline: at most
  ``reservation_ttl`` (an hour by default) of a too-low headroom, never an overspend. A request
  still running past its deadline stops counting as in flight and reserved (it is still charged
  at its end). Totals persist in Redis itself, so ``load`` does nothing here: run Redis with
  persistence, or a Redis restart forgets the day's and month's usage. Day and month keys are
  named by each process's clock (UTC), so keep the hosts' clocks in sync. A single server, not
  a cluster: the scripts touch several keys of one principal. If Redis cannot be reached,
  requests are refused with a 503 rather than admitted unchecked.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter

from hearth.errors import HearthError, RateLimited
from hearth.gateway.auth import Principal
from hearth.settings import LimitSettings, RedisSettings, TenantSettings
from hearth.store.db import Store

log = logging.getLogger("hearth.limits")

# The current UTC day and month keys, and seconds until each ends.
Period = tuple[str, str, float, float]


class LimitsUnavailable(HearthError):
    """The shared limits store (Redis) cannot be reached: refuse rather than admit unchecked."""

    status = 503


class _Calendar:
    """Keys of the current UTC day and month and when they end, recomputed only at day's end
    (datetime arithmetic on every request showed in profiles)."""

    __slots__ = ("day", "day_end", "month", "month_end")

    def __init__(self) -> None:
        self.day_end = 0.0
        self.month_end = 0.0
        self.day = self.month = ""

    def at(self, now: float) -> Period:
        """Keys of the current UTC day and month, and seconds until each ends."""
        if now >= self.day_end:
            t = datetime.fromtimestamp(now, UTC)
            self.day_end = (datetime(t.year, t.month, t.day, tzinfo=UTC) + timedelta(days=1)).timestamp()
            self.month_end = datetime(t.year + t.month // 12, t.month % 12 + 1, 1, tzinfo=UTC).timestamp()
            self.day, self.month = t.strftime("%Y-%m-%d"), t.strftime("%Y-%m")
        return self.day, self.month, self.day_end - now, self.month_end - now


class ConservativeMemoryStorage(MemoryStorage):
    """The library's in-memory storage, but the previous window's weighted count rounds up."""

    async def acquire_sliding_window_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = time.time()
        previous_key, current_key = self.sliding_window_keys(key, expiry, now)
        previous, previous_ttl, current, _ = await self._get_sliding_window_info(
            previous_key, current_key, expiry, now
        )
        weighted = math.ceil(previous * previous_ttl / expiry)
        if weighted + current + amount > limit:
            return False
        if weighted + await self.incr(current_key, 2 * expiry, amount=amount) > limit:
            await self.decr(current_key, amount)  # another hit got in between: it wins
            return False
        return True


# The library's acquire_sliding_window.lua (limits 5.8.0) with the previous window's share
# rounded up instead of down.
_ACQUIRE_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local expiry = tonumber(ARGV[2]) * 1000
local amount = tonumber(ARGV[3])
if amount > limit then
    return false
end
local current_ttl = tonumber(redis.call('pttl', KEYS[2]))
if current_ttl > 0 and current_ttl < expiry then
    redis.call('rename', KEYS[2], KEYS[1])
    redis.call('set', KEYS[2], 0, 'PX', current_ttl + expiry)
end
local previous_count = tonumber(redis.call('get', KEYS[1])) or 0
local previous_ttl = tonumber(redis.call('pttl', KEYS[1])) or 0
local current_count = tonumber(redis.call('get', KEYS[2])) or 0
if previous_ttl <= 0 then
    previous_ttl = 0
end
local weighted_count = math.ceil(previous_count * previous_ttl / expiry) + current_count
if (weighted_count + amount) > limit then
    return false
end
if redis.call('exists', KEYS[2]) == 1 then
    redis.call('incrby', KEYS[2], amount)
else
    redis.call('set', KEYS[2], amount, 'PX', expiry * 2)
end
return true
"""


def month_start(now: float) -> float:
    t = datetime.fromtimestamp(now, UTC)
    return datetime(t.year, t.month, 1, tzinfo=UTC).timestamp()


@dataclass(frozen=True, slots=True)
class Refused:
    """Which quota refused a request (``in_flight``: how many it had, for max_concurrent)."""

    limit: Literal["max_concurrent", "tokens_per_day", "tokens_per_month"]
    in_flight: int = 0


class QuotaStore(Protocol):
    """In-flight counts, reservations and day/month token totals, per principal."""

    def load(self, store: Store) -> None:
        """Seed the totals from the request log, where the store does not keep them itself."""

    async def reserve(self, name: str, policy: TenantSettings, estimate: int, when: Period) -> str | Refused:
        """Check max_concurrent and the day and month limits; if all fit, take one in-flight
        slot and reserve ``estimate`` tokens, returning the hold's id, all atomically."""

    def release(self, name: str, hold: str, estimate: int, tokens: int, when: Period) -> None:
        """Give back a hold and charge ``tokens`` (called synchronously at a request's end)."""

    async def close(self) -> None: ...


@dataclass(slots=True)
class _Usage:
    reserved: int = 0
    in_flight: int = 0


class MemoryQuotas:
    """This process's counters: exact, as admission runs on one event loop without awaiting."""

    def __init__(self) -> None:
        self.live: defaultdict[str, _Usage] = defaultdict(_Usage)
        self.used: defaultdict[tuple[str, str], int] = defaultdict(int)  # (name, day|month) -> tokens

    def load(self, store: Store) -> None:
        now = time.time()
        day, month, _, _ = _Calendar().at(now)
        for name, ts, tokens in store.token_totals_since(month_start(now)):
            self.used[(name, month)] += tokens
            if _Calendar().at(ts)[0] == day:
                self.used[(name, day)] += tokens

    async def reserve(self, name: str, policy: TenantSettings, estimate: int, when: Period) -> str | Refused:
        live = self.live[name]
        if policy.max_concurrent is not None and live.in_flight >= policy.max_concurrent:
            return Refused("max_concurrent", live.in_flight)
        used = self.used
        day, month = when[0], when[1]
        held = live.reserved + estimate
        if policy.tokens_per_day is not None and used[(name, day)] + held > policy.tokens_per_day:
            return Refused("tokens_per_day")
        if policy.tokens_per_month is not None and used[(name, month)] + held > policy.tokens_per_month:
            return Refused("tokens_per_month")
        live.in_flight += 1
        live.reserved += estimate
        return ""

    def release(self, name: str, hold: str, estimate: int, tokens: int, when: Period) -> None:
        live = self.live[name]
        live.in_flight -= 1
        live.reserved -= estimate
        if tokens:
            self.used[(name, when[0])] += tokens
            self.used[(name, when[1])] += tokens

    async def close(self) -> None:
        pass


# KEYS: inflight, reserved, holds. Drops holds past their deadline, giving back their slot and
# tokens; leaves `now` (the server's clock, so the processes' clocks never disagree on it).
_PRUNE = """
if redis.replicate_commands then redis.replicate_commands() end  -- TIME before writes, Redis < 5
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
if #expired > 0 then
  local freed = 0
  for _, m in ipairs(expired) do
    freed = freed + tonumber(string.match(m, ':(%d+)$'))
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('DECRBY', KEYS[2], freed)
  redis.call('DECRBY', KEYS[1], #expired)
end
"""

# KEYS: inflight, reserved, holds, used:<day>, used:<month>
# ARGV: max_concurrent, tokens_per_day, tokens_per_month (-1: no limit), estimate, hold, ttl
# Returns {0, 0} admitted, {1, in flight} max_concurrent, {2, 0} per day, {3, 0} per month.
_ADMIT = (
    _PRUNE
    + """
local inflight = tonumber(redis.call('GET', KEYS[1]) or '0')
local max_concurrent = tonumber(ARGV[1])
if max_concurrent >= 0 and inflight >= max_concurrent then
  return {1, inflight}
end
local reserved = tonumber(redis.call('GET', KEYS[2]) or '0')
local estimate = tonumber(ARGV[4])
for i = 2, 3 do
  local limit = tonumber(ARGV[i])
  if limit >= 0 and tonumber(redis.call('GET', KEYS[i + 2]) or '0') + reserved + estimate > limit then
    return {i, 0}
  end
end
redis.call('INCR', KEYS[1])
redis.call('INCRBY', KEYS[2], estimate)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[6]), ARGV[5])
return {0, 0}
"""
)

# KEYS: inflight, reserved, holds, used:<day>, used:<month>
# ARGV: hold, estimate, tokens, seconds to keep the day's total, the month's
_SETTLE = """
if redis.call('ZREM', KEYS[3], ARGV[1]) == 1 then
  redis.call('DECR', KEYS[1])
  redis.call('DECRBY', KEYS[2], ARGV[2])
end
local tokens = tonumber(ARGV[3])
if tokens > 0 then
  redis.call('INCRBY', KEYS[4], tokens)
  redis.call('EXPIRE', KEYS[4], ARGV[4])
  redis.call('INCRBY', KEYS[5], tokens)
  redis.call('EXPIRE', KEYS[5], ARGV[5])
end
return 0
"""

# KEYS: inflight, reserved, holds, used:<day>, used:<month>
_REFUSALS: dict[int, Literal["max_concurrent", "tokens_per_day", "tokens_per_month"]] = {
    1: "max_concurrent",
    2: "tokens_per_day",
    3: "tokens_per_month",
}

# Totals stay readable this long after their day or month ends.
_KEEP_AFTER_PERIOD = 86400


class RedisQuotas:
    """Quotas shared by every Hearth process on one Redis server (see the module docstring)."""

    def __init__(self, cfg: RedisSettings) -> None:
        import redis.asyncio

        assert cfg.url is not None
        self.url = cfg.url
        self.prefix = cfg.prefix
        self.ttl = cfg.reservation_ttl
        # A bounded pool that queues for a free connection: a burst of admissions waits a few
        # microseconds each rather than opening a connection apiece. Options in the URL's query
        # string (?max_connections=...&timeout=...) win over these defaults.
        self.pool = redis.asyncio.BlockingConnectionPool.from_url(
            cfg.url, max_connections=32, timeout=5, socket_connect_timeout=5, socket_timeout=5
        )
        self.client = redis.asyncio.Redis(connection_pool=self.pool)
        self._admit = self.client.register_script(_ADMIT)
        self._settle = self.client.register_script(_SETTLE)
        self.errors: tuple[type[Exception], ...] = (redis.RedisError,)
        # Hold ids: unique across processes, cheap within one.
        self._hold_prefix = secrets.token_hex(6)
        self._seq = itertools.count()
        self._pending: set[asyncio.Future[Any]] = set()

    def rate_storage(self) -> Storage:
        """The ``limits`` library's Redis storage for the rate windows, on this connection pool."""
        from limits.aio.storage import RedisStorage

        scheme, rest = self.url.split("://", 1)
        uri = f"async+{'redis+unix' if scheme == 'unix' else scheme}://{rest}"
        options: dict[str, Any] = {"connection_pool": self.pool}
        storage = RedisStorage(uri, implementation="redispy", key_prefix=self.prefix + "rate", **options)
        bridge: Any = storage.bridge  # the redis-py bridge registers its scripts as attributes
        bridge.lua_acquire_sliding_window = self.client.register_script(_ACQUIRE_SLIDING_WINDOW)
        return storage

    def _keys(self, name: str, when: Period) -> list[str]:
        p = self.prefix
        return [
            f"{p}inflight:{name}",
            f"{p}reserved:{name}",
            f"{p}holds:{name}",
            f"{p}used:{name}:{when[0]}",
            f"{p}used:{name}:{when[1]}",
        ]

    def load(self, store: Store) -> None:
        pass  # the totals persist in Redis

    async def reserve(self, name: str, policy: TenantSettings, estimate: int, when: Period) -> str | Refused:
        hold = f"{self._hold_prefix}{next(self._seq)}:{estimate}"
        args: list[int | float | str] = [
            -1 if policy.max_concurrent is None else policy.max_concurrent,
            -1 if policy.tokens_per_day is None else policy.tokens_per_day,
            -1 if policy.tokens_per_month is None else policy.tokens_per_month,
            estimate,
            hold,
            self.ttl,
        ]
        try:
            code, value = await self._admit(keys=self._keys(name, when), args=args)
        except self.errors as exc:
            raise unavailable(exc) from exc
        if code:
            return Refused(_REFUSALS[int(code)], int(value))
        return hold

    def release(self, name: str, hold: str, estimate: int, tokens: int, when: Period) -> None:
        args: list[int | float | str] = [
            hold,
            estimate,
            tokens,
            int(when[2]) + _KEEP_AFTER_PERIOD,
            int(when[3]) + _KEEP_AFTER_PERIOD,
        ]
        track(self._pending, asyncio.ensure_future(self._settle(keys=self._keys(name, when), args=args)))

    async def close(self) -> None:
        await drain(self._pending)
        await self.client.aclose()
        await self.pool.aclose()


def unavailable(exc: Exception) -> LimitsUnavailable:
    """The client learns that limits cannot be checked; the log says why (and where Redis is)."""
    log.warning("limits store unavailable: %s", exc)
    return LimitsUnavailable("limits cannot be checked right now; try again shortly")


def track(pending: set[asyncio.Future[Any]], task: asyncio.Future[Any]) -> None:
    """Keep a reference to a fire-and-forget task (the loop holds tasks weakly) and log its
    failure instead of leaving it unretrieved."""
    pending.add(task)
    task.add_done_callback(_finished(pending))


def _finished(pending: set[asyncio.Future[Any]]) -> Any:
    def done(task: asyncio.Future[Any]) -> None:
        pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not update limits: %s", task.exception())

    return done


async def drain(pending: set[asyncio.Future[Any]]) -> None:
    if pending:
        await asyncio.gather(*list(pending), return_exceptions=True)


class Reservation:
    """One admitted request's hold on its limits; released exactly once."""

    __slots__ = ("_done", "_limits", "estimate", "hold", "name", "policy_tpm")

    def __init__(self, limits: Limits, name: str, estimate: int, policy_tpm: int | None, hold: str) -> None:
        self._limits = limits
        self.name = name
        self.estimate = estimate
        self.policy_tpm = policy_tpm
        self.hold = hold
        self._done = False

    def settle(self, tokens: int | None) -> None:
        """Release the hold and charge ``tokens`` (None: the backend reported none, charge the
        estimate, which errs on the side of the limit)."""
        if self._done:
            return
        self._done = True
        self._limits._settle(self, self.estimate if tokens is None else tokens)


class Limits:
    def __init__(
        self, settings: LimitSettings, store: Store | None, redis: RedisSettings | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.quotas: QuotaStore
        storage: Storage
        # Exceptions of the shared store: such a failure is a 503, not a crash.
        self._errors: tuple[type[Exception], ...] = ()
        if redis is not None and redis.url is not None:
            shared = RedisQuotas(redis)
            self.quotas, storage, self._errors = shared, shared.rate_storage(), shared.errors
        else:
            self.quotas, storage = MemoryQuotas(), ConservativeMemoryStorage()
        self._window = SlidingWindowCounterRateLimiter(storage)
        self._items: dict[tuple[str, int], RateLimitItem] = {}
        self._calendar = _Calendar()
        self._pending: set[asyncio.Future[Any]] = set()

    def load(self) -> None:
        """Seed this month's and today's totals from the request log (after a restart); with
        Redis the totals persist there instead."""
        if self.store is not None:
            self.quotas.load(self.store)

    def _item(self, kind: str, amount: int) -> RateLimitItem:
        item = self._items.get((kind, amount))
        if item is None:
            item = self._items[(kind, amount)] = RateLimitItemPerMinute(amount, namespace=kind)
        return item

    def estimate(self, body_bytes: int, max_tokens: int | None) -> int:
        prompt = int(body_bytes / self.settings.bytes_per_token) + 1
        completion = max_tokens if max_tokens and max_tokens > 0 else self.settings.default_completion_tokens
        return prompt + completion

    async def admit(self, who: Principal, estimate: int) -> Reservation:
        """Reserve ``estimate`` tokens and one request, or raise RateLimited naming the limit."""
        p = who.policy
        name = who.name
        when = self._calendar.at(time.time())
        hold = await self.quotas.reserve(name, p, estimate, when)
        if isinstance(hold, Refused):
            raise self._refusal(name, p, hold, when)
        # Windows last: hit() records only when it fits, so one call tests and takes. A request
        # refused by the token window has used one request of the minute: refusals count.
        try:
            if p.rpm is not None:
                await self._hit("rpm", p.rpm, name, 1, "requests per minute")
            if p.tpm is not None:
                await self._hit("tpm", p.tpm, name, min(estimate, p.tpm), "tokens per minute")
        except BaseException:
            self.quotas.release(name, hold, estimate, 0, when)
            raise
        return Reservation(self, name, estimate, p.tpm, hold)

    @staticmethod
    def _refusal(name: str, p: TenantSettings, refused: Refused, when: Period) -> RateLimited:
        if refused.limit == "max_concurrent":
            return RateLimited(f"tenant '{name}' already has {refused.in_flight} requests in flight", 1)
        if refused.limit == "tokens_per_day":
            return RateLimited(
                f"tenant '{name}' reached its limit of {p.tokens_per_day} tokens per day", when[2]
            )
        return RateLimited(
            f"tenant '{name}' reached its limit of {p.tokens_per_month} tokens per month", when[3]
        )

    async def _hit(self, kind: str, amount: int, name: str, cost: int, what: str) -> None:
        item = self._item(kind, amount)
        try:
            if await self._window.hit(item, name, cost=cost):
                return
            reset = (await self._window.get_window_stats(item, name)).reset_time
        except self._errors as exc:
            raise unavailable(exc) from exc
        raise RateLimited(
            f"tenant '{name}' reached its limit of {amount} {what}", max(1.0, reset - time.time())
        )

    def _settle(self, r: Reservation, tokens: int) -> None:
        self.quotas.release(r.name, r.hold, r.estimate, tokens, self._calendar.at(time.time()))
        if r.policy_tpm is not None and tokens > r.estimate:
            # The window holds the estimate already; add what the request used beyond it.
            excess = min(tokens - r.estimate, r.policy_tpm)
            track(
                self._pending,
                asyncio.ensure_future(self._window.hit(self._item("tpm", r.policy_tpm), r.name, cost=excess)),
            )

    async def close(self) -> None:
        """Wait for pending settlements, then close the Redis connections if any."""
        await drain(self._pending)
        await self.quotas.close()
