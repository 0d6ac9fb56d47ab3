"""Key -> tenant: who is calling, and what their tenant's policy lets them do.

Keys look like ``hth_<id>_<secret>``: the id is visible (it names the key in lists and logs),
the whole key is shown once at creation and stored only as its SHA-256. A request's key is
found by id and checked with a constant-time comparison; every failure says the same thing, so
a caller never learns which part of a key was wrong.

Keys created or revoked by another process (the CLI) take effect on the very next request:
before each lookup Hearth asks SQLite for its ``data_version``, which changes whenever another
connection commits, and reloads the (small) key table when it moved.

Without a Hearth key (none, or some other token such as the dummy key the openai SDK insists
on), a client on a network listed in ``auth.trusted_networks`` acts as that network's tenant;
anyone else gets 401. Anonymous access has no other way in. A Hearth key (``hth_...``) is always
checked, trusted network or not, and always wins.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from hearth.backends.pool import canonical_name
from hearth.errors import Unauthorized
from hearth.settings import Settings, TenantSettings
from hearth.store.db import Store

KEY_PREFIX = "hth_"


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
        self._version: int | None = None
        self._loaded = False
        self._networks = [
            (ipaddress.ip_network(cidr, strict=False), tenant)
            for cidr, tenant in settings.auth.trusted_networks.items()
        ]

    def _keys_now(self) -> dict[str, tuple[str, str]]:
        version = self.store.data_version()
        if not self._loaded or version is None or version != self._version:
            self._keys = {kid: (tenant, h) for kid, tenant, h in self.store.active_keys()}
            self._version = version
            self._loaded = True
        return self._keys

    def authenticate(
        self, authorization: str | None, client_host: str | None, headers: Mapping[str, str]
    ) -> Principal:
        token = bearer(authorization)
        key_id: str | None = None
        trusted = self._trusted(client_host)
        if token is not None and (trusted is None or token.startswith(KEY_PREFIX)):
            tenant = self._check_key(token)
            key_id = token[len(KEY_PREFIX) :].split("_", 1)[0]
        elif trusted is not None:
            # Clients that insist on sending some key (the openai SDK, Open WebUI) still work
            # from a trusted network; a Hearth key, though, is always checked.
            tenant = trusted
        else:
            raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
        policy = self.settings.tenants.get(tenant, self.settings.tenant_defaults)
        name = tenant
        if policy.user_header:
            person = headers.get(policy.user_header.lower())
            if person:
                name = f"{tenant}/{person.strip()[:100]}"
        return Principal(tenant, name, key_id, policy)

    def _check_key(self, token: str) -> str:
        bad = Unauthorized("invalid API key")
        if not token.startswith(KEY_PREFIX):
            raise bad
        key_id = token[len(KEY_PREFIX) :].split("_", 1)[0]
        entry = self._keys_now().get(key_id)
        # Compare even when the id is unknown, so timing says nothing about which part was wrong.
        expected = entry[1] if entry is not None else "0" * 64
        if not hmac.compare_digest(hash_key(token), expected) or entry is None:
            raise bad
        return entry[0]

    def _trusted(self, host: str | None) -> str | None:
        if host is None or not self._networks:
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        for net, tenant in self._networks:
            if ip in net:
                return tenant
        return None

    def create_key(self, tenant: str, label: str | None = None) -> tuple[str, str]:
        """A new key for ``tenant`` (created with default policy if new): (id, key)."""
        key_id, key = new_key()
        self.store.insert_key(key_id, tenant, hash_key(key), label)
        return key_id, key
