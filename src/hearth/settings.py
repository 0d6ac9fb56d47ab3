"""Typed settings: a YAML file, ``${ENV}`` interpolation, ``HEARTH_*`` overrides; loaded once.

This is the only module that reads the environment. Precedence, lowest first: built-in
defaults, the YAML file, ``HEARTH_<SECTION>__<KEY>`` variables (``HEARTH_SERVER__PORT=8080``,
``HEARTH_BACKENDS__0__URL=...``; values are parsed as YAML scalars), then CLI flags.

``${VAR}`` and ``${VAR:-default}`` are replaced anywhere in the file. A missing variable is an
error naming the key, except in a backend's ``api_key``: such a backend is disabled until the
variable is set, so one config file serves machines with and without cloud keys.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from hearth.errors import ConfigError
from hearth.protocol.ollama import parse_keep_alive

DEFAULT_PORT = 11435
ENV_PREFIX = "HEARTH_"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: str = "~/.local/share/hearth"
    # Bodies above this answer 413. Images travel base64 inside JSON, hence the generous default.
    max_body_bytes: int = 32 * 1024 * 1024
    # Guards /admin/*. Without it, admin endpoints answer only to loopback clients.
    admin_key: str | None = None
    # Guards GET /metrics (Authorization: Bearer KEY). Without it /metrics is open: it holds
    # counts and timings, never prompts or keys, and Prometheus scrapers rarely carry a key.
    metrics_key: str | None = None
    log_level: str = "info"


class TimeoutSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    connect: float = 5.0
    # Longest silence from a backend: until the response starts (a cold model load on Ollama
    # can take minutes) and between two chunks of a stream.
    read: float = 600.0


class BackendSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    kind: Literal["ollama", "openai"]
    url: str
    api_key: str | None = None
    # Static list of models served; if empty, discovered by polling.
    models: list[str] = msgspec.field(default_factory=list)
    # A cloud backend: off-limits to local-only tenants (issue 3) and tried after local ones.
    cloud: bool = False
    enabled: bool = True
    # What the server can hold, for the scheduler (gateway/policy.py). Ollama: set these to the
    # server's OLLAMA_NUM_PARALLEL and OLLAMA_MAX_LOADED_MODELS, and memory_gb to the RAM or VRAM
    # it may fill (unset: only max_loaded_models limits what Hearth loads side by side).
    num_parallel: int = 1
    max_loaded_models: int = 3
    memory_gb: float | None = None
    keep_alive: float = 300.0  # seconds an idle model stays loaded (OLLAMA_KEEP_ALIVE)
    # Ollama: keep models loaded until the scheduler evicts one for another. Hearth sends
    # keep_alive -1 with the calls it forwards (unless the client or an alias sets one), so the
    # server's idle timer never unloads a model Hearth counts on. For a box that serves Hearth
    # alone: its memory stays in use while nothing runs.
    hold_models: bool = False
    # OpenAI-compatible servers: requests in flight at once (vLLM's max_num_seqs, a cloud's
    # concurrency); None: unlimited, no queue.
    max_concurrent: int | None = None
    # Set by the loader when api_key named an environment variable that is not set.
    disabled_reason: str | None = None


class DiscoverySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    interval: float = 10.0
    timeout: float = 5.0


class BreakerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Consecutive failures that open the breaker, and how long it stays open before a probe.
    failures: int = 3
    cooldown: float = 30.0


class RoutingSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # How many candidates (backend, model) one request may try before giving up.
    max_attempts: int = 4
    breaker: BreakerSettings = msgspec.field(default_factory=BreakerSettings)


class ModelDefaults(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Default options for a model or alias. Runner options (num_ctx...) are enforced."""

    options: dict[str, Any] = msgspec.field(default_factory=dict)
    keep_alive: str | int | float | None = None


class AliasSettings(ModelDefaults, forbid_unknown_fields=True, kw_only=True):
    model: str
    fallbacks: list[str] = msgspec.field(default_factory=list)


class StoreSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # SQLAlchemy URL; empty means the embedded SQLite file <data_dir>/hearth.db.
    url: str | None = None
    # Record one row per model call (never prompts or replies).
    log_requests: bool = True
    # Rows are written in batches this often; a crash loses at most this much.
    flush_interval: float = 0.2
    # Rows held while the store is slow; beyond this they are dropped and counted.
    max_pending: int = 100_000
    # Days the request log keeps a call's row (metadata); null: forever. At least 32: the day
    # and month token quotas are seeded from the log at start-up.
    retention_days: float | None = 365.0
    # Seconds between runs of the retention job (it also runs at start-up).
    retention_interval: float = 3600.0

    def __post_init__(self) -> None:
        if self.retention_days is not None and self.retention_days < 32:
            raise ValueError(
                "retention_days: expected 32 or more (token quotas per month are read back from "
                "the request log), or null to keep it forever"
            )
        if self.retention_interval <= 0:
            raise ValueError("retention_interval: expected a positive number of seconds")


class TenantSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A service or person. Tenants created with ``hearth keys create`` get these defaults."""

    # Models and aliases this tenant may see and use; empty means all.
    models: list[str] = msgspec.field(default_factory=list)
    # Never routed to a cloud backend, not even by fallback: health data stays in the house.
    local_only: bool = False
    # May manage models (pull, push, create, delete, copy) and call /admin/*.
    admin: bool = False
    # A header naming the person behind a shared service key (Open WebUI sends
    # X-OpenWebUI-User-Email with ENABLE_FORWARD_USER_INFO_HEADERS): each becomes a sub-tenant
    # "<tenant>/<value>" in the request log.
    user_header: str | None = None
    # Limits; None means unlimited. Tokens count prompt + completion as the backend reports them.
    rpm: int | None = None  # requests per minute (moving window)
    tpm: int | None = None  # tokens per minute (moving window)
    tokens_per_day: int | None = None  # calendar day, UTC
    tokens_per_month: int | None = None  # calendar month, UTC
    max_concurrent: int | None = None  # requests in flight at once
    # The scheduler (gateway/policy.py): interactive requests go before batch ones (until a
    # batch request has waited scheduler.aging seconds); weight is the tenant's share when
    # several wait for the same backend.
    priority: Literal["interactive", "batch"] = "interactive"
    weight: float = 1.0
    # Requests waiting for a backend: beyond max_queue a new one gets 429 at once; one that
    # waited max_wait seconds gets 503. Both with Retry-After.
    max_queue: int = 256
    max_wait: float = 300.0
    # Keep each call's request and reply text (the hub shows them and can replay them) for
    # content_retention_days. Off: metadata only. Sub-tenants share their tenant's choice.
    store_content: bool = False
    content_retention_days: float = 30.0


class SchedulerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The fair, model-aware scheduler (gateway/policy.py explains the policy)."""

    # A batch request that has waited this many seconds competes as an interactive one.
    aging: float = 120.0
    # How much a waiting batch request weighs against an interactive one when deciding to switch
    # a backend to its model.
    batch_weight: float = 0.25
    # Evicting a model costs its reload times the requests expected for it within this many
    # seconds (judged from its recent arrivals).
    horizon: float = 300.0
    # Load time estimate until one is observed: load_fixed + size / load_gbps.
    load_fixed: float = 2.0
    load_gbps: float = 2.0
    # Requests waiting in all, across tenants.
    max_queue: int = 1024
    # An interactive request that cannot start within its bound may abort a batch tenant's
    # call whose client does not stream; the call is sent again later (gateway/policy.py).
    preempt: bool = True
    # A batch request with a bound switches whatever it costs after this share of it (an
    # interactive one after half).
    batch_urgency: float = 0.6
    # Batch work leaves alone a model that served an interactive request this many seconds ago
    # (the next turn of a conversation), until 0.85 of its own bound has passed.
    session_gap: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.batch_urgency <= 1:
            raise ValueError("batch_urgency: expected a share of the bound, above 0 and at most 1")
        for name in ("aging", "horizon", "load_fixed", "session_gap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected 0 or more seconds")
        if self.load_gbps <= 0 or self.batch_weight <= 0 or self.max_queue <= 0:
            raise ValueError("load_gbps, batch_weight and max_queue must be positive")


class LimitSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # A request's token estimate, reserved against token limits until the backend's real count
    # settles it: prompt bytes / bytes_per_token, plus its max tokens (num_predict / max_tokens)
    # or this default when the client sets none.
    bytes_per_token: float = 4.0
    default_completion_tokens: int = 512


class AuthSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Networks whose clients need no key, each mapped to the tenant they act as, for trusted
    # LANs and clients that cannot send a key (the ollama CLI). Empty: every request needs a key.
    trusted_networks: dict[str, str] = msgspec.field(default_factory=dict)


class RedisSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Shares rate limits, token quotas and in-flight counts among several Hearth processes
    # (redis://, rediss:// or unix:// URL of one Redis or Valkey server). None: this process's
    # memory, as a single Hearth needs.
    url: str | None = None
    # Every key Hearth writes starts with this, so several Hearths (or apps) can share a server.
    prefix: str = "hearth:"
    # Seconds a request counts as in flight and holds its token reservation at most: bounds
    # what a crashed process leaves held. A longer request is still charged when it ends.
    reservation_ttl: float = 3600.0

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("url: expected a redis://, rediss:// or unix:// URL")
        if self.reservation_ttl <= 0:
            raise ValueError("reservation_ttl: expected a positive number of seconds")


class Price(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What a cloud model costs per million tokens (USD, or whatever currency you price in)."""

    input: float
    output: float


class EnergySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Average draw of the LLM box while it generates, in watts; 0: no energy cost.
    watts: float = 0.0
    # What a kWh costs, in the currency of `prices`.
    price_per_kwh: float = 0.0


class PricingSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Cost columns of `hearth usage`: cloud calls at their price, local calls at the price of an
    equivalent cloud model and at the energy they took (gateway/usage.py)."""

    # Per model name as the backend serves it: price per million input and output tokens.
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    # A model in `prices`: local calls are also priced as if they had been sent to it.
    local_equivalent: str | None = None
    energy: EnergySettings = msgspec.field(default_factory=EnergySettings)

    def __post_init__(self) -> None:
        for name, p in self.prices.items():
            if p.input < 0 or p.output < 0:
                raise ValueError(f"prices.{name}: expected prices of 0 or more")
        if self.local_equivalent is not None and self.local_equivalent not in self.prices:
            raise ValueError(f"local_equivalent: {self.local_equivalent!r} has no entry in prices")
        if self.energy.watts < 0 or self.energy.price_per_kwh < 0:
            raise ValueError("energy: expected watts and price_per_kwh of 0 or more")


class AlertChannel(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where alert notifications go (observability/alerts.py). Put secrets (webhook URLs, bot
    tokens) in the environment: ``url: ${SLACK_WEBHOOK_URL}``. They are never logged."""

    kind: Literal["webhook", "ntfy", "telegram", "slack"]
    # webhook: POST of the alert as JSON; ntfy: the topic URL; slack: the incoming-webhook URL
    # (Mattermost, and Discord's .../slack URL, take the same). Not used by telegram.
    url: str | None = None
    # telegram: the bot's token and the chat to write to; api_url only changes for a proxy.
    token: str | None = None
    chat_id: int | str | None = None
    api_url: str = "https://api.telegram.org"
    # Extra request headers, e.g. ntfy's `Authorization: Bearer tk_...`.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # How logs and GET /admin/alerts name the channel (never by its URL); default "<kind> #<n>".
    name: str | None = None
    timeout: float = 10.0  # seconds for one delivery


class AlertSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Built-in alert rules (observability/alerts.py). A rule whose threshold is null is off."""

    enabled: bool = True
    interval: float = 30.0  # seconds between evaluations
    # Calls of the last `window` seconds count for slow_responses and error_rate, per model, once
    # there are at least min_calls of them.
    window: float = 300.0
    min_calls: int = 5
    backend_down_after: float | None = 60.0  # seconds of failed health polls
    slow_p95_seconds: float | None = 10.0  # p95 of successful calls' whole duration
    error_rate: float | None = 0.05  # share of calls failing on the server side (5xx, mid-stream)
    quota_fraction: float | None = 0.9  # of a tenant's tokens_per_day or tokens_per_month
    disk_free_gb: float | None = 10.0  # free space of the data directory, GB (10^9 bytes)
    # Seconds after which a notification is sent again while an alert stays firing; null: never.
    repeat_after: float | None = None
    channels: list[AlertChannel] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("interval", "window", "repeat_after"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: expected a positive number of seconds")
        for name in ("backend_down_after", "slow_p95_seconds", "disk_free_gb"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: expected 0 or more (or null to turn the rule off)")
        for name in ("error_rate", "quota_fraction"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a fraction between 0 and 1 (or null)")
        if self.min_calls < 1:
            raise ValueError("min_calls: expected 1 or more")


class HubSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The web hub at /hub (api/hub.py)."""

    enabled: bool = True
    # Admin logins: user name -> Argon2 hash of the password (`hearth hub password NAME` prints
    # one). Tenants log in with one of their API keys; a key of an admin tenant logs in as admin.
    admins: dict[str, str] = msgspec.field(default_factory=dict)
    # Signs the session cookies. Unset: a random secret kept in server.data_dir/hub-secret
    # (give every Hearth behind one address the same secret).
    secret: str | None = None
    session_hours: float = 12.0
    # Send cookies only over HTTPS: turn on when Hearth is served behind TLS.
    secure_cookies: bool = False
    # Failed logins allowed per client address and minute.
    login_attempts_per_minute: int = 10

    def __post_init__(self) -> None:
        if self.session_hours <= 0:
            raise ValueError("session_hours: expected a positive number of hours")
        if self.login_attempts_per_minute < 1:
            raise ValueError("login_attempts_per_minute: expected 1 or more")
        for name, hashed in self.admins.items():
            if not hashed.startswith("$argon2"):
                raise ValueError(
                    f"admins.{name}: expected an Argon2 hash ($argon2id$...), never the password "
                    "itself: `hearth hub password NAME` prints one"
                )


class OtlpSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Export each call as an OpenTelemetry span (observability/otel.py) over OTLP/HTTP."""

    # The collector's base URL (Tempo, Jaeger, an OpenTelemetry Collector: http://host:4318;
    # Langfuse: https://cloud.langfuse.com/api/public/otel); /v1/traces is added. None: off.
    endpoint: str | None = None
    # Sent with every export, e.g. {Authorization: "Basic ${LANGFUSE_AUTH}"}.
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    service_name: str = "hearth"
    timeout: float = 10.0  # seconds for one export

    def __post_init__(self) -> None:
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError("endpoint: expected an http:// or https:// URL")
        if self.timeout <= 0:
            raise ValueError("timeout: expected a positive number of seconds")


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    timeouts: TimeoutSettings = msgspec.field(default_factory=TimeoutSettings)
    discovery: DiscoverySettings = msgspec.field(default_factory=DiscoverySettings)
    routing: RoutingSettings = msgspec.field(default_factory=RoutingSettings)
    backends: list[BackendSettings] = msgspec.field(default_factory=list)
    aliases: dict[str, AliasSettings] = msgspec.field(default_factory=dict)
    models: dict[str, ModelDefaults] = msgspec.field(default_factory=dict)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    tenants: dict[str, TenantSettings] = msgspec.field(default_factory=dict)
    # The policy of tenants not in `tenants:` (created by `hearth keys create --tenant NEW`).
    tenant_defaults: TenantSettings = msgspec.field(default_factory=TenantSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    pricing: PricingSettings = msgspec.field(default_factory=PricingSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    alerts: AlertSettings = msgspec.field(default_factory=AlertSettings)
    otlp: OtlpSettings = msgspec.field(default_factory=OtlpSettings)
    hub: HubSettings = msgspec.field(default_factory=HubSettings)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser()

    @property
    def store_url(self) -> str:
        return self.store.url or f"sqlite:///{self.data_path / 'hearth.db'}"


def _interpolate(node: Any, path: str, env: Mapping[str, str], missing: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), env, missing) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, f"{path}[{i}]", env, missing) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def replace(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing[path] = name
        return ""

    return _ENV_REF.sub(replace, node)


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _apply_overrides(data: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, value in sorted(env.items()):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        keys = var[len(ENV_PREFIX) :].lower().split("__")
        node: Any = data
        for i, key in enumerate(keys):
            last = i == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"{var}: no list item {key!r} to override")
                if last:
                    node[int(key)] = _parse_scalar(value)
                else:
                    node = node[int(key)]
            elif isinstance(node, dict):
                if last:
                    node[key] = _parse_scalar(value)
                else:
                    node = node.setdefault(key, {})
            else:
                raise ConfigError(f"{var}: {'.'.join(keys[:i])} is not a section")


def _friendly(exc: msgspec.ValidationError) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.server.port`"; lead with the key instead.
    text = str(exc)
    msg, sep, where = text.rpartition(" - at `")
    if not sep:
        return text
    key = where.rstrip("`").removeprefix("$").lstrip(".") or "(top level)"
    return f"{key}: {msg}"


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, interpolate, override and validate. Raises ConfigError naming the bad key."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        data = loaded
    missing: dict[str, str] = {}
    data = _interpolate(data, "", env, missing)
    _apply_overrides(data, env)
    aliases = data.get("aliases")
    if isinstance(aliases, dict):
        # `coder: qwen2.5-coder:14b` is shorthand for `coder: {model: qwen2.5-coder:14b}`.
        data["aliases"] = {k: {"model": v} if isinstance(v, str) else v for k, v in aliases.items()}
    if "backends" not in data:
        data["backends"] = [{"name": "local", "kind": "ollama", "url": _default_ollama_url(env)}]
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config: {_friendly(exc)}") from exc
    for key, var in missing.items():
        m = re.fullmatch(r"backends\[(\d+)\]\.api_key", key)
        if m is None:
            raise ConfigError(f"invalid config: {key}: environment variable {var} is not set")
        backend = settings.backends[int(m.group(1))]
        backend.enabled = False
        backend.disabled_reason = f"environment variable {var} is not set"
    _check(settings)
    return settings


def _default_ollama_url(env: Mapping[str, str]) -> str:
    host = env.get("OLLAMA_HOST", "127.0.0.1:11434")
    return host if "://" in host else f"http://{host}"


def _check(s: Settings) -> None:
    names = [b.name for b in s.backends]
    for n in names:
        if names.count(n) > 1:
            raise ConfigError(f"invalid config: backends: name {n!r} is used twice")
    for i, b in enumerate(s.backends):
        if not b.url.startswith(("http://", "https://")):
            raise ConfigError(f"invalid config: backends[{i}].url: expected an http:// or https:// URL")
    if not 0 < s.server.port < 65536:
        raise ConfigError("invalid config: server.port: expected 1-65535")
    if s.server.max_body_bytes <= 0:
        raise ConfigError("invalid config: server.max_body_bytes: expected a positive number")
    for cidr, tenant in s.auth.trusted_networks.items():
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"invalid config: auth.trusted_networks.{cidr}: not a network ({exc})") from exc
        if not tenant:
            raise ConfigError(f"invalid config: auth.trusted_networks.{cidr}: name a tenant")
    for i, b in enumerate(s.backends):
        for key in ("num_parallel", "max_loaded_models", "memory_gb", "max_concurrent"):
            value = getattr(b, key)
            if value is not None and value <= 0:
                raise ConfigError(f"invalid config: backends[{i}].{key}: expected a positive number")
        if b.hold_models and b.kind != "ollama":
            raise ConfigError(
                f"invalid config: backends[{i}].hold_models: only for kind ollama (an OpenAI-compatible "
                "server does not load and unload models on request)"
            )
    for name, t in [*s.tenants.items(), ("tenant_defaults", s.tenant_defaults)]:
        where = name if name == "tenant_defaults" else f"tenants.{name}"
        for key in ("weight", "max_wait", "content_retention_days"):
            if getattr(t, key) <= 0:
                raise ConfigError(f"invalid config: {where}.{key}: expected a positive number")
        if t.max_queue < 0:
            raise ConfigError(f"invalid config: {where}.max_queue: expected 0 or more")
    for name, alias in s.aliases.items():
        if alias.model == name:
            raise ConfigError(f"invalid config: aliases.{name}.model: an alias cannot point at itself")
    defaults: list[tuple[str, ModelDefaults]] = [
        *((f"aliases.{n}", a) for n, a in s.aliases.items()),
        *((f"models.{n}", m) for n, m in s.models.items()),
    ]
    for where, d in defaults:
        try:
            parse_keep_alive(d.keep_alive)
        except ValueError:
            raise ConfigError(
                f"invalid config: {where}.keep_alive: expected seconds or a duration like '5m' or '1h30m'"
            ) from None
    for i, ch in enumerate(s.alerts.channels):
        _check_channel(f"alerts.channels[{i}]", ch)


def _check_channel(where: str, ch: AlertChannel) -> None:
    # Here rather than in __post_init__: a secret from an unset variable is reported as such first.
    if ch.kind == "telegram":
        if not ch.token or ch.chat_id is None or ch.chat_id == "":
            raise ConfigError(f"invalid config: {where}: a telegram channel needs token and chat_id")
        key, url = "api_url", ch.api_url
    else:
        key, url = "url", ch.url or ""
        if not url:
            raise ConfigError(f"invalid config: {where}.url: a {ch.kind} channel needs a url")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"invalid config: {where}.{key}: expected an http:// or https:// URL")
    if ch.timeout <= 0:
        raise ConfigError(f"invalid config: {where}.timeout: expected a positive number of seconds")


EXAMPLE_CONFIG = """\
# Hearth configuration. Every key is optional; these are the defaults unless marked "example".
# ${VAR} and ${VAR:-default} are read from the environment. Any key can also be set with
# HEARTH_<SECTION>__<KEY>, e.g. HEARTH_SERVER__PORT=8080 or HEARTH_BACKENDS__0__URL=http://...

server:
  host: 127.0.0.1          # 0.0.0.0 to serve your LAN
  port: 11435
  data_dir: ~/.local/share/hearth   # the embedded SQLite store lives here
  max_body_bytes: 33554432 # larger bodies answer 413
  # admin_key: ${HEARTH_ADMIN_KEY}  # guards /admin/*; without it only loopback may call them
  # metrics_key: ${HEARTH_METRICS_KEY}  # guards /metrics (Bearer); without it /metrics is open

store:
  # url: postgresql+psycopg://hearth:${PGPASSWORD}@db/hearth   # default: <data_dir>/hearth.db
  log_requests: true       # one row per call: model, backend, status, timings, tokens; never prompts
  flush_interval: 0.2      # seconds between batched writes (a crash loses at most this much)
  retention_days: 365      # days the request log keeps a call (32 or more); null: forever
  retention_interval: 3600 # seconds between runs of the retention job

timeouts:                  # seconds
  connect: 5
  read: 600                # longest silence: first byte (a cold model load) or between chunks

discovery:
  interval: 10             # how often each backend is polled (/api/tags + /api/ps, /v1/models)
  timeout: 5

routing:
  max_attempts: 4          # candidates tried per request (other backend, fallback model...)
  breaker:
    failures: 3            # consecutive failures that take a backend out of rotation
    cooldown: 30           # seconds before one probe request may try it again

backends:
  - name: local
    kind: ollama           # native Ollama API
    url: http://127.0.0.1:11434
    # What the server can hold, for the scheduler: match the server's own settings.
    num_parallel: 1        # OLLAMA_NUM_PARALLEL: requests at once per loaded model
    max_loaded_models: 3   # OLLAMA_MAX_LOADED_MODELS
    memory_gb: null        # RAM/VRAM it may fill, e.g. 48; null: only max_loaded_models limits
    keep_alive: 300        # OLLAMA_KEEP_ALIVE in seconds
    hold_models: false     # true: models stay loaded until Hearth needs the room (a box for Hearth alone)
  # - name: gpu-box        # example: a second Ollama
  #   kind: ollama
  #   url: http://192.168.1.20:11434
  # - name: vllm           # example: any OpenAI-compatible server (vLLM, llama.cpp, LM Studio)
  #   kind: openai
  #   url: http://192.168.1.30:8000/v1
  #   max_concurrent: 16   # requests in flight at once (OpenAI-compatible); null: no limit, no queue
  # - name: openai         # example: a cloud API; disabled while OPENAI_API_KEY is unset
  #   kind: openai
  #   url: https://api.openai.com/v1
  #   api_key: ${OPENAI_API_KEY}
  #   cloud: true
  #   models: [gpt-4o-mini]  # serve only these (skip the huge discovered list)

auth:
  trusted_networks: {}     # no key needed from these networks; every other request needs one
  # trusted_networks:      # example: the ollama CLI cannot send keys, so trust the LAN
  #   127.0.0.1/32: me
  #   192.168.1.0/24: family

tenants: {}
# tenants:                 # example: limits per service or person; keys: hearth keys create --tenant NAME
#   healthrag:
#     models: [healthrag]  # sees and uses only these (empty: all)
#     local_only: true     # never a cloud backend, not even by fallback
#   openwebui:
#     user_header: X-OpenWebUI-User-Email   # one sub-tenant per person behind Open WebUI
#   admin:
#     admin: true          # may pull/delete models and call /admin
#   github-agent:
#     rpm: 30              # requests per minute
#     tpm: 50000           # tokens per minute (prompt + completion)
#     tokens_per_day: 2000000
#     tokens_per_month: 20000000
#     max_concurrent: 2
#     priority: batch      # interactive work goes first (scheduler), batch after waiting `aging`
#     weight: 1            # share when several tenants wait for the same backend
#     max_queue: 256       # requests waiting at once; more get 429
#     max_wait: 1800       # seconds a request may wait for a backend; then 503
#   diary:
#     store_content: true  # keep prompts and replies (hub: read, replay); default: metadata only
#     content_retention_days: 30   # then they are deleted (the call's metadata stays)
# tenant_defaults: {rpm: 60}   # for tenants not listed here (created by `hearth keys create`)

scheduler:                 # fair, model-aware queues in front of each backend (README: the scheduler)
  aging: 120               # seconds after which a batch request competes as interactive
  batch_weight: 0.25       # a waiting batch request's weight against an interactive one
  horizon: 300             # seconds of recent use that make a model costly to evict
  load_fixed: 2            # load time estimate until one is observed: load_fixed + size / load_gbps
  load_gbps: 2
  max_queue: 1024          # requests waiting in all
  preempt: true            # an interactive request may stop a batch call that does not stream (resent later)
  batch_urgency: 0.6       # share of its max_wait after which a batch request switches whatever it costs
  session_gap: 60          # seconds batch work leaves a model alone after an interactive turn

redis:                     # limits shared by several Hearth processes (see README)
  url: null                # e.g. redis://127.0.0.1:6379/0 (Redis or Valkey); null: this process's memory
  prefix: "hearth:"        # start of every key Hearth writes
  reservation_ttl: 3600    # seconds a request holds its in-flight slot and token reservation at most

alerts:                    # built-in alert rules (README: Alerts); null as a threshold turns its rule off
  enabled: true
  interval: 30             # seconds between evaluations
  window: 300              # seconds of calls that slow_responses and error_rate judge, per model
  min_calls: 5             # fewer calls than this in the window: no verdict
  backend_down_after: 60   # seconds of failed health polls
  slow_p95_seconds: 10     # p95 duration of successful calls
  error_rate: 0.05         # share of calls failed on the server side (5xx, a broken stream)
  quota_fraction: 0.9      # of a tenant's tokens_per_day or tokens_per_month
  disk_free_gb: 10         # free space where data_dir lives
  repeat_after: null       # seconds before reminding of an alert still firing; null: never
  channels: []             # notified once when an alert fires and once when it resolves
  # channels:              # example
  #   - kind: ntfy
  #     url: https://ntfy.sh/${NTFY_TOPIC}
  #     headers: {Authorization: "Bearer ${NTFY_TOKEN}"}   # a protected topic
  #   - kind: telegram
  #     token: ${TELEGRAM_BOT_TOKEN}
  #     chat_id: "123456789"
  #   - kind: slack        # Slack, Mattermost, or Discord's .../slack webhook URL
  #     url: ${SLACK_WEBHOOK_URL}
  #   - kind: webhook      # POST {alert, subject, state, value, threshold, message, since, resolved_at}
  #     url: http://n8n.lan:5678/webhook/hearth-alerts

hub:                       # the web hub at http://HOST:11435/hub (README: The hub)
  enabled: true
  admins: {}               # name: Argon2 hash, from `hearth hub password NAME`
  # admins:
  #   alice: "$argon2id$v=19$m=65536,t=3,p=4$..."
  secret: null             # signs session cookies; null: a random one kept in data_dir/hub-secret
  session_hours: 12
  secure_cookies: false    # true when Hearth is served over HTTPS
  login_attempts_per_minute: 10   # failed logins per client address

otlp:                      # one OpenTelemetry span per call (GenAI semantic conventions)
  endpoint: null           # e.g. http://tempo:4318 (/v1/traces is added); null: off
  headers: {}              # e.g. {Authorization: "Basic ${LANGFUSE_AUTH}"}
  service_name: hearth
  timeout: 10              # seconds for one export
  # prompts and replies go into spans only for tenants with store_content: true

aliases: {}
# aliases:                 # example: service-facing names with enforced defaults
#   healthrag:
#     model: llama3.1:8b
#     options: {num_ctx: 8192, temperature: 0.2}   # num_ctx & co. are enforced: no reloads
#     keep_alive: 30m
#     fallbacks: [llama3.2:3b, gpt-4o-mini]        # tried in order when the model is unavailable
#   coder:
#     model: qwen2.5-coder:14b
#     options: {num_ctx: 16384}

models: {}
# models:                  # example: defaults for clients that use a real model name
#   llama3.1:8b:
#     options: {num_ctx: 8192}

pricing:                   # the cost columns of `hearth usage`; prices per million tokens
  prices: {}
  # prices:                # example: cloud models by the name their backend serves them under
  #   gpt-4o-mini: {input: 0.15, output: 0.60}
  #   gpt-4o: {input: 2.50, output: 10.00}
  # local_equivalent: gpt-4o-mini   # example: also price local calls as if sent to this model
  energy:                  # local calls cost busy seconds x watts / 3.6e6 x price_per_kwh
    watts: 0               # average draw of the LLM box while generating, e.g. 350
    price_per_kwh: 0       # in the currency of prices, e.g. 0.30
"""
