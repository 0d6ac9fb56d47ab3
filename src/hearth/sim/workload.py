"""The simulator's input: a server, its models, the tenants that share it, and their request trace.

A workload file is YAML. Every tenant describes its traffic as a list of entries, each drawn
from a random stream of its own, so adding a tenant (or an entry) leaves every other tenant's
arrivals as they were; the same seed gives the same arrivals::

    name: example
    seed: 42
    duration_s: 3600          # arrivals fall in [0, duration_s)
    server:                   # ServerSpec fields; any left out keep their defaults
      memory_gb: 48
      max_loaded_models: 3
    servers: 1                # identical Ollama servers
    models:                   # ModelSpec fields except name
      llama3.1:8b: {size_gb: 4.9, kv_gb: 0.6, tokens_per_s: 12, prompt_tokens_per_s: 120}
      qwen2.5-coder:14b: {size_gb: 9.0, kv_gb: 1.0, tokens_per_s: 7, prompt_tokens_per_s: 80}
    tenants:
      health-chat:
        priority: interactive # or batch
        weight: 1.0           # share in Hearth's weighted fair queueing
        max_wait_s: 60        # the queue wait Hearth must keep this tenant under (optional)
        max_queue: 50         # the longest queue Hearth keeps for it (optional)
        stream: true          # its client streams (the default); a batch client that does not
                              # may have a run aborted for an interactive request, and resent
        keep_alive_s: -1      # the keep_alive its client sends (optional; negative: forever)
        traffic:
          - kind: sessions    # a person chatting: Poisson session starts, messages think_s apart
            model: llama3.1:8b
            sessions_per_hour: 4
            messages: [2, 6]
            think_s: [20, 90]
            prompt_tokens: [1000, 2500]
            output_tokens: [150, 400]
          - kind: poisson     # independent requests, exponential inter-arrivals
            model: llama3.1:8b
            per_hour: 10
            prompt_tokens: [200, 800]
            output_tokens: [50, 200]
      github-review:
        priority: batch
        traffic:
          - kind: bursts      # a PR's files queued at once; bursts_per_hour (Poisson) or every_s
            model: qwen2.5-coder:14b
            every_s: 1800     # fixed bursts at start_s, start_s + every_s, ...
            start_s: 120
            size: [10, 30]    # requests per burst
            spread_s: 60      # each request lands uniformly within this after the burst starts
            prompt_tokens: [2000, 6000]
            output_tokens: [200, 600]
    requests:                 # optional hand-written trace; the priority comes from the tenant
      - {t: 5.0, tenant: health-chat, model: llama3.1:8b, prompt_tokens: 900, output_tokens: 120}

``[min, max]`` pairs are drawn uniformly, integers for tokens, messages and sizes. In a session
the next message comes ``think_s`` after the previous reply would end on an idle server (its
service time): the same trace for every policy, and people who wait for an answer before they
ask again. Hand-written requests at or after ``duration_s`` are dropped, so a shorter
duration cuts any workload; the generated traffic of a shorter run is likewise a prefix of the
longer one's. Errors are ``ConfigError``s naming the key (``tenants.x.traffic[0].per_hour: ...``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import yaml

from hearth.errors import ConfigError
from hearth.sim.specs import ModelSpec, Priority, ServerSpec

__all__ = [
    "Arrival",
    "TenantSpec",
    "Workload",
    "load_workload",
    "offered_load",
    "reference_workload",
    "service_seconds",
]

REFERENCE = "reference.yaml"


@dataclass(slots=True, frozen=True)
class TenantSpec:
    """A service or person sharing the server, and what Hearth promises it."""

    name: str
    priority: Priority
    weight: float = 1.0  # share in Hearth's weighted fair queueing
    max_wait_s: float | None = None  # the bound on queue wait Hearth must keep for this tenant
    max_queue: int | None = None  # longest queue Hearth keeps for this tenant
    stream: bool = True  # its client streams; if not, Hearth may abort and resend its batch calls
    # The keep_alive its client sends, in seconds (negative: forever, as Home Assistant's -1);
    # None: it sends none, and the server's default applies.
    keep_alive_s: float | None = None


@dataclass(slots=True, frozen=True)
class Arrival:
    """One request of the trace, as its client sends it."""

    t: float  # seconds since the start
    tenant: str
    model: str
    prompt_tokens: int
    output_tokens: int
    priority: Priority


@dataclass(slots=True, frozen=True)
class Workload:
    name: str
    seed: int
    duration_s: float
    server: ServerSpec
    servers: int  # how many identical Ollama servers
    models: dict[str, ModelSpec]
    tenants: dict[str, TenantSpec]
    arrivals: tuple[Arrival, ...]  # sorted by t, then tenant


def service_seconds(model: ModelSpec, prompt_tokens: int, output_tokens: int) -> float:
    """What one request takes on an idle runner that has its model loaded: prompt eval + output."""
    return prompt_tokens / model.prompt_tokens_per_s + output_tokens / model.tokens_per_s


def offered_load(workload: Workload) -> float:
    """Busy runner-seconds the trace asks for, per second of duration.

    2.0 means the work would keep two runners busy for the whole run. Loads, queueing and
    the CPU the runners share are left out: this is the floor any scheduler pays.
    """
    busy = sum(
        service_seconds(workload.models[a.model], a.prompt_tokens, a.output_tokens) for a in workload.arrivals
    )
    return busy / workload.duration_s


def reference_workload(*, seed: int | None = None, duration_s: float | None = None) -> Workload:
    """The packaged reference homelab (reference-homelabs.md, set-up 1)."""
    return load_workload(None, seed=seed, duration_s=duration_s)


def load_workload(
    path: str | Path | None = None, *, seed: int | None = None, duration_s: float | None = None
) -> Workload:
    """Read and validate a workload file (None: the packaged reference) and draw its arrivals.

    ``seed`` and ``duration_s`` override the file's. Raises ConfigError naming the bad key.
    """
    if path is None:
        source = REFERENCE
        text = resources.files("hearth.sim").joinpath(REFERENCE).read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read workload file {source}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"workload file {source} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"workload file {source} must hold a mapping at the top level")
    if seed is not None:
        data["seed"] = seed
    if duration_s is not None:
        data["duration_s"] = duration_s
    return _Loader(source).build(data)


# The file format. Entries are converted one by one so that errors can name mapping keys
# (tenant and model names), which msgspec's own paths leave out.

_PosFloat = Annotated[float, msgspec.Meta(gt=0)]
_NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
_PosInt = Annotated[int, msgspec.Meta(ge=1)]


class _Server(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # UNSET fields keep ServerSpec's defaults, so they are written down once, in specs.py.
    memory_gb: _PosFloat | msgspec.UnsetType = msgspec.UNSET
    max_loaded_models: _PosInt | msgspec.UnsetType = msgspec.UNSET
    num_parallel: _PosInt | msgspec.UnsetType = msgspec.UNSET
    max_queue: _PosInt | msgspec.UnsetType = msgspec.UNSET
    keep_alive_s: float | msgspec.UnsetType = msgspec.UNSET  # negative: never unload, as in Ollama
    load_fixed_s: _NonNegFloat | msgspec.UnsetType = msgspec.UNSET
    load_gbps: _PosFloat | msgspec.UnsetType = msgspec.UNSET
    fit_fraction: Annotated[float, msgspec.Meta(gt=0, le=1)] | msgspec.UnsetType = msgspec.UNSET
    compute_runners: _PosFloat | msgspec.UnsetType | None = msgspec.UNSET


class _Model(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    size_gb: _PosFloat
    kv_gb: _NonNegFloat | msgspec.UnsetType = msgspec.UNSET
    tokens_per_s: _PosFloat | msgspec.UnsetType = msgspec.UNSET
    prompt_tokens_per_s: _PosFloat | msgspec.UnsetType = msgspec.UNSET


class _Traffic(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, tag_field="kind"):
    model: str
    prompt_tokens: tuple[_PosInt, _PosInt]
    output_tokens: tuple[_PosInt, _PosInt]


class _Poisson(_Traffic, kw_only=True, tag="poisson"):
    per_hour: _NonNegFloat


class _Sessions(_Traffic, kw_only=True, tag="sessions"):
    sessions_per_hour: _NonNegFloat
    messages: tuple[_PosInt, _PosInt]
    think_s: tuple[_NonNegFloat, _NonNegFloat]


class _Bursts(_Traffic, kw_only=True, tag="bursts"):
    bursts_per_hour: _NonNegFloat | None = None
    every_s: _PosFloat | None = None
    start_s: _NonNegFloat = 0.0  # the first fixed burst (every_s only)
    size: tuple[_PosInt, _PosInt]
    spread_s: _NonNegFloat = 0.0


_AnyTraffic = _Poisson | _Sessions | _Bursts


class _Tenant(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    priority: Priority
    weight: _PosFloat = 1.0
    max_wait_s: _PosFloat | None = None
    max_queue: _PosInt | None = None
    stream: bool = True
    keep_alive_s: float | None = None
    traffic: list[_AnyTraffic] = msgspec.field(default_factory=list)


class _Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    t: _NonNegFloat
    tenant: str
    model: str
    prompt_tokens: _PosInt
    output_tokens: _PosInt


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    seed: int = 0
    duration_s: _PosFloat
    server: dict[str, Any] = msgspec.field(default_factory=dict)
    servers: _PosInt = 1
    models: dict[str, Any]
    tenants: dict[str, Any]
    requests: list[_Request] = msgspec.field(default_factory=list)


_T = TypeVar("_T")
_AT = re.compile(r"^(?P<msg>.*) - at `\$(?P<where>[^`]*)`$", re.DOTALL)
_FIELD = re.compile(r"^Object (?:contains unknown|missing required) field `(?P<key>[^`]+)`$")


class _Loader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"invalid workload {self.source}: {key or '(top level)'}: {message}")

    def convert(self, data: object, typ: type[_T], key: str) -> _T:
        try:
            return msgspec.convert(data, typ)
        except msgspec.ValidationError as exc:
            # msgspec says "Object contains unknown field `x` - at `$.a[0]`": lead with the key.
            msg, where = str(exc), ""
            if m := _AT.match(msg):
                msg, where = m["msg"], m["where"]
            full = key + where
            if m := _FIELD.match(msg):
                full = f"{full}.{m['key']}" if full else m["key"]
                msg = "unknown key" if "unknown" in msg else "missing"
            elif full.endswith(".kind") and msg.startswith("Invalid value"):
                msg += " (expected poisson, sessions or bursts)"
            raise self.fail(full.lstrip("."), msg) from exc

    def check_range(self, key: str, r: tuple[float, float]) -> None:
        if r[0] > r[1]:
            raise self.fail(key, f"min {r[0]} is above max {r[1]}")

    def build(self, data: dict[str, Any]) -> Workload:
        f = self.convert(data, _File, "")
        server = self.convert(f.server, _Server, "server")
        models = {
            name: ModelSpec(name=name, **_set_fields(self.convert(raw, _Model, f"models.{name}")))
            for name, raw in f.models.items()
        }
        tenants: dict[str, TenantSpec] = {}
        traffic: dict[str, list[_AnyTraffic]] = {}
        for name, raw in f.tenants.items():
            key = f"tenants.{name}"
            if isinstance(raw, dict) and isinstance(raw.get("traffic"), dict):
                raw = {**raw, "traffic": [raw["traffic"]]}  # one entry needs no list
            spec = self.convert(raw, _Tenant, key)
            for i, entry in enumerate(spec.traffic):
                self.check_traffic(f"{key}.traffic[{i}]", entry, models)
            tenants[name] = TenantSpec(
                name,
                spec.priority,
                spec.weight,
                spec.max_wait_s,
                spec.max_queue,
                spec.stream,
                spec.keep_alive_s,
            )
            traffic[name] = spec.traffic

        arrivals: list[Arrival] = []
        for i, r in enumerate(f.requests):
            if r.tenant not in tenants:
                raise self.fail(f"requests[{i}].tenant", f"unknown tenant {r.tenant!r}")
            if r.model not in models:
                raise self.fail(f"requests[{i}].model", f"unknown model {r.model!r} (not in models)")
            if r.t < f.duration_s:
                prio = tenants[r.tenant].priority
                arrivals.append(Arrival(r.t, r.tenant, r.model, r.prompt_tokens, r.output_tokens, prio))
        for name, entries in traffic.items():
            for i, entry in enumerate(entries):
                # str seeds go through SHA-512 in the random module: stable across runs and
                # machines, unlike hash(), and one stream per entry keeps the others unchanged.
                rng = random.Random(f"{f.seed}/{name}/{i}")
                prio = tenants[name].priority
                for t, prompt, output in _draw(rng, entry, f.duration_s, models[entry.model]):
                    arrivals.append(Arrival(t, name, entry.model, prompt, output, prio))
        arrivals.sort(key=lambda a: (a.t, a.tenant, a.model, a.prompt_tokens, a.output_tokens))
        return Workload(
            name=f.name,
            seed=f.seed,
            duration_s=f.duration_s,
            server=ServerSpec(**_set_fields(server)),
            servers=f.servers,
            models=models,
            tenants=tenants,
            arrivals=tuple(arrivals),
        )

    def check_traffic(self, key: str, entry: _AnyTraffic, models: dict[str, ModelSpec]) -> None:
        if entry.model not in models:
            raise self.fail(f"{key}.model", f"unknown model {entry.model!r} (not in models)")
        self.check_range(f"{key}.prompt_tokens", entry.prompt_tokens)
        self.check_range(f"{key}.output_tokens", entry.output_tokens)
        if isinstance(entry, _Sessions):
            self.check_range(f"{key}.messages", entry.messages)
            self.check_range(f"{key}.think_s", entry.think_s)
        elif isinstance(entry, _Bursts):
            self.check_range(f"{key}.size", entry.size)
            if (entry.bursts_per_hour is None) == (entry.every_s is None):
                raise self.fail(key, "give exactly one of bursts_per_hour and every_s")


def _set_fields(s: msgspec.Struct) -> dict[str, Any]:
    return {k: v for k, v in msgspec.structs.asdict(s).items() if v is not msgspec.UNSET}


def _poisson(rng: random.Random, per_hour: float, duration_s: float) -> Iterator[float]:
    if per_hour <= 0:
        return
    rate = per_hour / 3600.0
    t = rng.expovariate(rate)
    while t < duration_s:
        yield t
        t += rng.expovariate(rate)


def _every(start_s: float, every_s: float, duration_s: float) -> Iterator[float]:
    k = 0
    while (t := start_s + k * every_s) < duration_s:
        yield t
        k += 1


def _draw(
    rng: random.Random, entry: _AnyTraffic, duration_s: float, model: ModelSpec
) -> Iterator[tuple[float, int, int]]:
    """Times and token counts of one traffic entry, in [0, duration_s).

    Every request of a session or burst is drawn even past the end, so the stream's later
    draws do not depend on duration_s: a shorter run sees a prefix of a longer one.
    """

    def tokens() -> tuple[int, int]:
        return rng.randint(*entry.prompt_tokens), rng.randint(*entry.output_tokens)

    if isinstance(entry, _Poisson):
        for t in _poisson(rng, entry.per_hour, duration_s):
            yield (t, *tokens())
    elif isinstance(entry, _Sessions):
        for start in _poisson(rng, entry.sessions_per_hour, duration_s):
            t = start
            drawn = (0, 0)
            for k in range(rng.randint(*entry.messages)):
                if k:
                    # The person reads the previous reply (as long as an idle server takes to
                    # write it), then thinks.
                    t += service_seconds(model, *drawn) + rng.uniform(*entry.think_s)
                drawn = tokens()
                if t < duration_s:
                    yield (t, *drawn)
    else:
        if entry.every_s is not None:
            starts: Iterator[float] = _every(entry.start_s, entry.every_s, duration_s)
        else:
            starts = _poisson(rng, entry.bursts_per_hour or 0.0, duration_s)
        for start in starts:
            for _ in range(rng.randint(*entry.size)):
                t = start + rng.uniform(0.0, entry.spread_s)
                drawn = tokens()
                if t < duration_s:
                    yield (t, *drawn)
