"""Each tenant's policy: the config file's, with limits edited at run time laid over it.

The admin API and the hub set a tenant's limits (``rpm``, ``tpm``, ``tokens_per_day``,
``tokens_per_month``, ``max_concurrent``) in the store's ``tenant_limits`` table: a JSON object of
the fields that override the config file (``null``: no limit; an absent field: as in the config).
``TenantPolicies`` keeps every override in memory and builds each tenant's effective policy from
them; the Authenticator (auth.py) rereads them whenever it rereads its key table, so a change made
by any process applies like a key change: on the very next request with SQLite, within
milliseconds with PostgreSQL (migration 0007 makes ``tenant_limits`` notify ``hearth_keys``).
gateway/limits.py reads the policy of each request's principal, so nothing else is cached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from hearth.errors import BadRequest, TenantNotFound
from hearth.settings import Settings, TenantSettings
from hearth.store.db import Store

# The TenantSettings fields that can be edited at run time.
LIMIT_FIELDS = ("rpm", "tpm", "tokens_per_day", "tokens_per_month", "max_concurrent")
MAX_NAME = 128


def validate_limits(changes: Any) -> dict[str, int | None]:
    """``changes`` as limit fields, or BadRequest naming the first bad one: each must be one of
    LIMIT_FIELDS, with a non-negative integer or None (no limit) as its value."""
    if not isinstance(changes, Mapping):
        raise BadRequest("limits must be a JSON object of " + ", ".join(LIMIT_FIELDS))
    out: dict[str, int | None] = {}
    for field, value in changes.items():
        if field not in LIMIT_FIELDS:
            raise BadRequest(
                f"unknown limit {field!r}: expected one of {', '.join(LIMIT_FIELDS)}", param=str(field)
            )
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise BadRequest(f"{field}: expected a non-negative integer, or null for no limit", param=field)
        out[field] = value
    return out


def within(name: str | None, scope: str) -> bool:
    """Whether a caller named ``name`` in the request log is ``scope`` or one of its sub-tenants
    ("scope/..."): what a tenant may see of usage and traces."""
    return name is not None and (name == scope or name.startswith(scope + "/"))


def limits_of(policy: TenantSettings) -> dict[str, int | None]:
    return {f: getattr(policy, f) for f in LIMIT_FIELDS}


class TenantPolicies:
    """Policies from the config file with the store's overrides applied; the effective policy
    object of a tenant stays the same one until its overrides change (principals cache it)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        # (overrides: tenant -> {"limits", "updated_at"}, effective policies built from them),
        # swapped as one: set_limits reloads from a thread while the loop reads.
        self._state: tuple[dict[str, dict[str, Any]], dict[str, TenantSettings]] = ({}, {})

    def configured(self, tenant: str) -> TenantSettings:
        """The config file's policy (``tenant_defaults`` for tenants it does not list)."""
        return self.settings.tenants.get(tenant, self.settings.tenant_defaults)

    def policy(self, tenant: str) -> TenantSettings:
        """The policy in force: the config's with this tenant's overrides applied."""
        overrides, policies = self._state
        found = policies.get(tenant)
        if found is None:
            found = self.configured(tenant)
            override = overrides.get(tenant)
            if override:
                found = msgspec.structs.replace(found, **override["limits"])
            # Tenants come from keys and trusted networks, never from headers: few of them.
            policies[tenant] = found
        return found

    def load(self) -> None:
        """Reread the overrides (a query: off the loop on PostgreSQL)."""
        self.apply(self.store.tenant_limits())

    def apply(self, overrides: dict[str, dict[str, Any]]) -> None:
        """Use these overrides (``Store.tenant_limits()``) from now on. Unchanged ones keep the
        policy objects as they are, so a reload that found nothing new costs no cache misses."""
        if overrides != self._state[0]:
            self._state = (overrides, {})

    def known(self, tenant: str) -> bool:
        """Named by the config file, the store's tenants, a trusted network or an override."""
        if tenant in self.settings.tenants or tenant in self._state[0]:
            return True
        if tenant in self.settings.auth.trusted_networks.values():
            return True
        return any(t["name"] == tenant for t in self.store.list_tenants())

    def names(self) -> list[str]:
        """Every tenant the config file or the store names, sorted (a query: off the loop)."""
        return sorted({t["name"] for t in self.store.list_tenants()} | set(self.settings.tenants))

    def effective_limits(self, tenant: str) -> dict[str, Any]:
        """``{"tenant", "limits": {field: value in force}, "config": {field: the config file's},
        "overridden": [fields set at run time], "updated_at": epoch seconds or None}``; a value of
        None means no limit."""
        override = self._state[0].get(tenant)
        return {
            "tenant": tenant,
            "limits": limits_of(self.policy(tenant)),
            "config": limits_of(self.configured(tenant)),
            "overridden": sorted(override["limits"]) if override else [],
            "updated_at": override["updated_at"] if override else None,
        }

    def set_limits(self, tenant: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Override some of ``tenant``'s limits (the fields given; the others keep their current
        override or the config's value) and return ``effective_limits``. BadRequest for a bad
        field or value, TenantNotFound for an unknown tenant. Blocking: call it in a thread."""
        valid = validate_limits(changes)
        self._check_name(tenant)
        if not self.known(tenant):
            raise TenantNotFound(tenant)
        if valid:
            self.store.set_tenant_limits(tenant, valid)
        # At once in this process; other processes follow through the key-change path.
        self.load()
        return self.effective_limits(tenant)

    def clear_limits(self, tenant: str) -> dict[str, Any]:
        """Drop every override of ``tenant``: back to the config file. Returns
        ``effective_limits``. Blocking: call it in a thread."""
        self._check_name(tenant)
        if not self.known(tenant):
            raise TenantNotFound(tenant)
        self.store.clear_tenant_limits(tenant)
        self.load()
        return self.effective_limits(tenant)

    @staticmethod
    def _check_name(tenant: str) -> None:
        if not tenant or len(tenant) > MAX_NAME or "/" in tenant:
            raise BadRequest(f"tenant: expected a name of 1 to {MAX_NAME} characters without '/'")
