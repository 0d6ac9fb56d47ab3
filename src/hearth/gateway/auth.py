"""Key -> tenant: who is calling, and what their tenant's policy lets them do.

Keys look like ``hth_<id>_<secret>``: the id is visible (it names the key in lists and logs),
the whole key is shown once at creation and stored only as its SHA-256. A request's key is
found by id and checked with a constant-time comparison; every failure says the same thing, so
a caller never learns which part of a key was wrong.

Keys created or revoked by another process (the CLI, another Hearth):

- SQLite: they take effect on the very next request. Before each lookup Hearth asks SQLite for
  its ``data_version``, which changes whenever another connection commits, and reloads the
  (small) key table when it moved.
- PostgreSQL: no query ever runs on the request path; lookups read the in-memory table. A
  trigger NOTIFYs on every change to ``api_keys``, ``start()`` keeps one connection LISTENing,
  and each notification rereads the table in a thread. A change therefore takes effect a few
  milliseconds after its commit (notification delivery plus one small SELECT), not on the very
  next request: a request arriving in that window still sees the old table. Measured on one
  machine over a Unix socket: 5 ms median, 20 ms worst of 50 revocations, counted from the
  revoking call; the tests hold it to one second. If the listening connection drops, the table
  is reread as soon as it is back (reconnecting after 0.1 s, backing off to 5 s), and every
  ``RESYNC_SECONDS`` (60 s) anyway: that bounds how stale it gets when notifications cannot
  arrive at all (a PgBouncer in transaction mode, a silently dead TCP connection, which
  keepalives notice within about a minute). A key created through this server's own admin API
  is added to its table at once as well (unless a reread already under way lands just after,
  which the notification's reread then corrects); revocations always travel by notification.

Tenant limits edited at run time (gateway/tenants.py, the ``tenant_limits`` table) travel the
same way: each reread of the key table rereads them too, and PostgreSQL's trigger on that table
notifies the same channel. On SQLite a trusted network's request asks ``data_version`` as well,
so that its tenant's limits follow as promptly as a key's.

Without a Hearth key (none, or some other token such as the dummy key the openai SDK insists
on), a client on a network listed in ``auth.trusted_networks`` acts as that network's tenant;
anyone else gets 401. Anonymous access has no other way in. A Hearth key (``hth_...``) is always
checked, trusted network or not, and always wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from hearth import background
from hearth.backends.pool import canonical_name
from hearth.errors import Unauthorized
from hearth.gateway.tenants import TenantPolicies
from hearth.settings import Settings, TenantSettings
from hearth.store.db import Store

KEY_PREFIX = "hth_"
# PostgreSQL: reread the key table this often even without a notification (seconds).
RESYNC_SECONDS = 60.0

log = logging.getLogger("hearth.auth")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(id, key). 192 random bits of secret: a fast hash is enough to store it."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(24)}"


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    tenant: str  # whose policy applies
    name: str  # how the request log names them: the tenant, or "<tenant>/<person>"
    key_id: str | None  # None when admitted by trusted network
    policy: TenantSettings

    def may_use(self, model: str) -> bool:
        allowed = self.policy.models
        if not allowed:
            return True
        return model in allowed or canonical_name(model, "ollama") in allowed

    @property
    def is_admin(self) -> bool:
        return self.policy.admin


def bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Authenticator:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._keys: dict[str, tuple[str, str]] = {}  # id -> (tenant, hash)
        self._valid: dict[str, tuple[str, str]] = {}  # token -> (tenant, id), for the table in _keys
        self._principals: dict[tuple[str, str | None], Principal] = {}
        self._trusted_hosts: dict[str, str | None] = {}
        # Policies: the config file's with the limits edited at run time, reread with the keys.
        self.tenants = TenantPolicies(settings, store)
        self._version: int | None = None
        self._loaded = False
        # PostgreSQL, once start()ed: the table is kept fresh by _watch, never read on the loop.
        self._watching = False
        self._task: asyncio.Task[None] | None = None
        self._networks = [
            (ipaddress.ip_network(cidr, strict=False), tenant)
            for cidr, tenant in settings.auth.trusted_networks.items()
        ]

    async def start(self) -> None:
        """Keep the key table fresh without any query on the request path, where the store
        pushes key changes (PostgreSQL). Loads the table first, so start-up fails loudly if
        the database is unreachable. SQLite needs nothing: it is asked on each lookup."""
        if not self.store.pushes_key_changes or self._task is not None:
            return
        await self._reload()
        self._watching = True
        self._task = asyncio.create_task(self._watch(asyncio.Event()), name="hearth-keys-watch")

    async def stop(self) -> None:
        await background.stop(self._task)
        self._task = None
        self._watching = False

    async def _reload(self) -> None:
        keys = await asyncio.to_thread(self.store.active_keys)
        overrides = await asyncio.to_thread(self.store.tenant_limits)
        self._keys = {kid: (tenant, h) for kid, tenant, h in keys}
        self.tenants.apply(overrides)
        self._valid = {}  # proven against the old table: prove again (revocations)
        self._loaded = True

    async def _watch(self, stale: asyncio.Event) -> None:
        """Reread the table after each notification (a burst costs one or two reads) and every
        RESYNC_SECONDS; the store's listener sets ``stale``."""

        async def reload_when_stale() -> None:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stale.wait(), RESYNC_SECONDS)
                stale.clear()  # before reading: a change committed during the read sets it again
                try:
                    await self._reload()
                except Exception as exc:  # keep watching whatever happened: revocations matter
                    log.error("could not reload API keys (keeping the previous ones): %s", exc)
                    await asyncio.sleep(1.0)
                    stale.set()

        await asyncio.gather(self.store.watch_keys(stale.set), reload_when_stale())

    def _keys_now(self) -> dict[str, tuple[str, str]]:
        if self._watching:
            return self._keys
        # SQLite; or PostgreSQL not start()ed (the CLI): there every lookup is a query.
        version = self.store.data_version()
        if not self._loaded or version is None or version != self._version:
            self._keys = {kid: (tenant, h) for kid, tenant, h in self.store.active_keys()}
            self.tenants.load()
            self._valid = {}  # proven against the old table: prove again (revocations)
            self._version = version
            self._loaded = True
        return self._keys

    def authenticate(
        self, authorization: str | None, client_host: str | None, headers: Mapping[str, str]
    ) -> Principal:
        token = bearer(authorization)
        key_id: str | None = None
        if token is not None and token.startswith(KEY_PREFIX):
            tenant, key_id = self._check_key(token)
        else:
            trusted = self._trusted(client_host)
            if trusted is None:
                if token is not None:
                    raise Unauthorized("invalid API key")
                raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
            # Clients that insist on sending some key (the openai SDK, Open WebUI) still work
            # from a trusted network; a Hearth key, though, is always checked.
            tenant = trusted
            self._keys_now()  # SQLite: limits edited by another process apply at once here too
        policy = self.tenants.policy(tenant)
        person = headers.get(policy.user_header.lower()) if policy.user_header else None
        name = f"{tenant}/{person.strip()[:100]}" if person else tenant
        cache_key = (name, key_id)
        found = self._principals.get(cache_key)
        if found is None or found.tenant != tenant or found.policy is not policy:
            if len(self._principals) > 10_000:  # person names come from a header: stay bounded
                self._principals.clear()
            found = self._principals[cache_key] = Principal(tenant, name, key_id, policy)
        return found

    def _check_key(self, token: str) -> tuple[str, str]:
        """(tenant, key id) of a valid key. Tokens already proven valid against the current key
        table are remembered (the table reloading forgets them), so the hash runs once a key."""
        keys = self._keys_now()
        known = self._valid.get(token)
        if known is not None:
            return known
        key_id = token[len(KEY_PREFIX) :].split("_", 1)[0]
        entry = keys.get(key_id)
        # Compare even when the id is unknown, so timing says nothing about which part was wrong.
        expected = entry[1] if entry is not None else "0" * 64
        if not hmac.compare_digest(hash_key(token), expected) or entry is None:
            raise Unauthorized("invalid API key")
        if len(self._valid) > 10_000:
            self._valid.clear()
        self._valid[token] = (entry[0], key_id)
        return entry[0], key_id

    def _trusted(self, host: str | None) -> str | None:
        if host is None or not self._networks:
            return None
        if host in self._trusted_hosts:
            return self._trusted_hosts[host]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        found = next((tenant for net, tenant in self._networks if ip in net), None)
        if len(self._trusted_hosts) > 10_000:
            self._trusted_hosts.clear()
        self._trusted_hosts[host] = found
        return found

    def create_key(self, tenant: str, label: str | None = None) -> tuple[str, str]:
        """A new key for ``tenant`` (created with default policy if new): (id, key)."""
        key_id, key = new_key()
        self.store.insert_key(key_id, tenant, hash_key(key), label)
        if self._watching:
            # Usable at once through this server, before the notification's reload lands (that
            # reload, reading after this commit, keeps it).
            self._keys = {**self._keys, key_id: (tenant, hash_key(key))}
        return key_id, key

    def key_tenant(self, key_id: str) -> str | None:
        """The tenant of an active key, None once it is revoked (the hub's sessions ask)."""
        entry = self._keys_now().get(key_id)
        return None if entry is None else entry[0]
