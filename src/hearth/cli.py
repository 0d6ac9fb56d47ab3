"""The ``hearth`` command: serve, init. Every command takes the same ``--config FILE``."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hearth import __version__
from hearth.errors import ConfigError, HearthError, TenantNotFound
from hearth.gateway.auth import Authenticator
from hearth.gateway.tenants import TenantPolicies
from hearth.settings import EXAMPLE_CONFIG, Settings, load_settings
from hearth.store.db import Store
from hearth.store.schema import USAGE_GROUPS

if TYPE_CHECKING:
    from hearth.sim.floor import Floor

DEFAULT_CONFIG = Path("hearth.yaml")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="HEARTH_CONFIG",
    help="YAML settings file (default: ./hearth.yaml if present, else built-in defaults).",
)


def _load(config_path: Path | None) -> Settings:
    if config_path is None and DEFAULT_CONFIG.exists():
        config_path = DEFAULT_CONFIG
    try:
        return load_settings(config_path)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from exc


@click.group()
@click.version_option(__version__, prog_name="hearth")
def main() -> None:
    """Hearth: one gateway in front of every LLM server in the house."""


@main.command()
@config_option
@click.option("--host", help="Address to listen on (overrides server.host).")
@click.option("--port", type=int, help="Port to listen on (overrides server.port; default 11435).")
def serve(config_path: Path | None, host: str | None, port: int | None) -> None:
    """Start the gateway."""
    import uvicorn

    from hearth.app import create_app

    settings = _load(config_path)
    if host:
        settings.server.host = host
    if port:
        settings.server.port = port
    logging.basicConfig(
        level=settings.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings.data_path.mkdir(parents=True, exist_ok=True)
    for b in settings.backends:
        state = "enabled" if b.enabled else f"disabled ({b.disabled_reason})"
        click.echo(f"backend {b.name}: {b.kind} {b.url} {state}", err=True)
    uvicorn.run(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level=settings.server.log_level,
        timeout_graceful_shutdown=30,
    )


@main.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_CONFIG,
    show_default=True,
    help="Where to write the example settings file.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(config_path: Path, force: bool) -> None:
    """Write a commented example settings file."""
    if config_path.exists() and not force:
        raise click.ClickException(f"{config_path} exists; use --force to overwrite it")
    config_path.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    click.echo(f"wrote {config_path}; start with: hearth serve --config {config_path}")


@main.command()
@config_option
def migrate(config_path: Path | None) -> None:
    """Create or upgrade the database schema (serve also does this at start-up)."""
    store = _store(_load(config_path))
    store.close()
    click.echo(f"database is up to date: {store.engine.url.render_as_string(hide_password=True)}")


def _store(settings: Settings) -> Store:
    """The configured store, migrated: the CLI may run before the server ever has."""
    if settings.store.url is None:
        settings.data_path.mkdir(parents=True, exist_ok=True)
    store = Store(settings.store_url)
    store.migrate()
    return store


@main.group()
def keys() -> None:
    """Create, list and revoke API keys (they take effect on the running server at once)."""


@keys.command("create")
@config_option
@click.option("--tenant", required=True, help="The tenant the key acts as; created if new.")
@click.option("--label", help="A note to recognise the key by (e.g. the host using it).")
def keys_create(config_path: Path | None, tenant: str, label: str | None) -> None:
    """Create a key and print it once: it is stored only as a hash."""
    settings = _load(config_path)
    store = _store(settings)
    try:
        key_id, key = Authenticator(settings, store).create_key(tenant, label)
    finally:
        store.close()
    click.echo(key)
    click.echo(f"key id {key_id} for tenant {tenant}; this is the only time the key is shown", err=True)


@keys.command("list")
@config_option
def keys_list(config_path: Path | None) -> None:
    """Every key: id, tenant, label, created, revoked. Never the secret."""
    store = _store(_load(config_path))
    try:
        rows = store.list_keys()
    finally:
        store.close()
    click.echo(f"{'id':<10} {'tenant':<24} {'created (UTC)':<20} {'revoked (UTC)':<20} label")
    for r in rows:
        click.echo(
            f"{r['id']:<10} {r['tenant']:<24} {_when(r['created_at']):<20} "
            f"{_when(r['revoked_at']):<20} {r['label'] or ''}"
        )


@keys.command("revoke")
@config_option
@click.argument("key_id")
def keys_revoke(config_path: Path | None, key_id: str) -> None:
    """Revoke a key by id; the next request with it gets 401."""
    store = _store(_load(config_path))
    try:
        done = store.revoke_key(key_id)
    finally:
        store.close()
    if not done:
        raise click.ClickException(f"no active key with id {key_id}")
    click.echo(f"revoked {key_id}")


@main.group()
def tenants() -> None:
    """List and create tenants (services or people)."""


@tenants.command("list")
@config_option
def tenants_list(config_path: Path | None) -> None:
    """Tenants from the config file and the store, with their policy."""
    settings = _load(config_path)
    store = _store(settings)
    try:
        names = sorted({t["name"] for t in store.list_tenants()} | set(settings.tenants))
    finally:
        store.close()
    for name in names:
        policy = settings.tenants.get(name)
        if policy is None:
            click.echo(f"{name}: defaults (not in the config file)")
            continue
        models = ", ".join(policy.models) if policy.models else "all models"
        flags = [f for f, on in (("local-only", policy.local_only), ("admin", policy.admin)) if on]
        click.echo(f"{name}: {models}{'; ' + ', '.join(flags) if flags else ''}")


@tenants.command("create")
@config_option
@click.argument("name")
def tenants_create(config_path: Path | None, name: str) -> None:
    """Create a tenant with default limits (declare it in the config file to set its policy)."""
    store = _store(_load(config_path))
    try:
        created = store.ensure_tenant(name)
    finally:
        store.close()
    click.echo(f"{'created' if created else 'already exists'}: {name}")


@tenants.command("limits")
@config_option
@click.argument("name")
@click.option("--rpm", help="Requests per minute ('none': no limit).")
@click.option("--tpm", help="Tokens per minute ('none': no limit).")
@click.option("--tokens-per-day", help="Tokens per UTC day ('none': no limit).")
@click.option("--tokens-per-month", help="Tokens per UTC month ('none': no limit).")
@click.option("--max-concurrent", help="Requests in flight at once ('none': no limit).")
@click.option("--reset", is_flag=True, help="Drop every limit set here: back to the config file's.")
def tenants_limits(config_path: Path | None, name: str, reset: bool, **given: str | None) -> None:
    """Show a tenant's limits, or change them over the config file's: the running servers
    follow at once (SQLite) or within a second (PostgreSQL)."""
    changes: dict[str, object] = {}
    for field, value in given.items():
        if value is not None:
            changes[field] = None if value.lower() == "none" else int(value) if value.isdigit() else value
    settings = _load(config_path)
    store = _store(settings)
    try:
        policies = TenantPolicies(settings, store)
        policies.load()
        if reset:
            shown = policies.clear_limits(name)
        elif changes:
            shown = policies.set_limits(name, changes)
        else:
            if not policies.known(name):
                raise TenantNotFound(name)
            shown = policies.effective_limits(name)
    except HearthError as exc:
        raise click.ClickException(exc.message) from exc
    finally:
        store.close()
    for field, value in shown["limits"].items():
        source = "set here" if field in shown["overridden"] else "config"
        click.echo(f"{field}: {'none' if value is None else value} ({source})")


@main.group()
def hub() -> None:
    """The web hub at /hub."""


@hub.command("password")
@click.argument("name")
@click.password_option("--password", prompt="Password for the hub", help="asked for when not given")
def hub_password(name: str, password: str) -> None:
    """Print an Argon2 hash of a password, as a line for hub.admins in the config file."""
    from hearth.hub.session import hash_password

    if len(password) < 8:
        raise click.UsageError("use a password of at least 8 characters")
    click.echo(f'hub:\n  admins:\n    {name}: "{hash_password(password)}"')


def _when(ts: float | None) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@main.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate the settings file and print what it resolves to."""
    settings = _load(config_path)
    for b in settings.backends:
        click.echo(f"backend {b.name}: {b.kind} {b.url} {'enabled' if b.enabled else b.disabled_reason}")
    for name, alias in settings.aliases.items():
        click.echo(
            f"alias {name} -> {alias.model}"
            + (f" (fallbacks: {', '.join(alias.fallbacks)})" if alias.fallbacks else "")
        )


@main.command()
@config_option
@click.option(
    "--since",
    default="30d",
    show_default=True,
    help="How far back: a span (24h, 7d, 30d, 2w) or an ISO date or date-time (UTC).",
)
@click.option(
    "--by",
    type=click.Choice(USAGE_GROUPS),
    default="tenant",
    show_default=True,
    help="Group calls by tenant, model (as asked: alias or real), backend, or served_model.",
)
@click.option("--tenant", help="Only this tenant and its sub-tenants.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def usage(config_path: Path | None, since: str, by: str, tenant: str | None, as_json: bool) -> None:
    """Calls, tokens and cost per tenant, model or backend, from the request log."""
    from hearth.gateway.usage import parse_since, report, table

    settings = _load(config_path)
    try:
        start = parse_since(since)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    store = _store(settings)
    try:
        groups = store.usage_summary(start, by, tenant)
    finally:
        store.close()
    rep = report(groups, settings, start, by)
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    click.echo(f"since {_when(start)} UTC, by {by}")
    click.echo(table(rep))


@main.command()
@click.option(
    "--workload",
    "workload_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Workload YAML file (format: hearth/sim/workload.py; default: the packaged reference homelab).",
)
@click.option("--seed", type=int, help="Draw the arrivals with this seed instead of the file's.")
@click.option(
    "--duration", type=float, help="Simulated seconds of arrivals instead of the file's duration_s."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "--live",
    is_flag=True,
    help="Over real HTTP: emulated Ollama servers, and a real Hearth in front of them for the hearth policy.",
)
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    help="With --live: simulated seconds per real second  [default: 100]",
)
@click.option(
    "--floor",
    "floor_s",
    type=click.FloatRange(min=0, min_open=True),
    help="Also solve for the fewest loads any scheduler meeting every bound could make on this trace, "
    "spending at most this many seconds (needs OR-Tools, in the dev extra).",
)
@click.option(
    "--servers",
    type=click.IntRange(min=1),
    help="Identical Ollama servers instead of the file's (Ollama alone: service i on server i mod N).",
)
@click.option(
    "--hold-models",
    is_flag=True,
    help="Hearth holds models (the backend setting hold_models): its calls carry keep_alive -1.",
)
def sim(
    workload_path: Path | None,
    seed: int | None,
    duration: float | None,
    as_json: bool,
    live: bool,
    speed: float | None,
    floor_s: float | None,
    servers: int | None,
    hold_models: bool,
) -> None:
    """Replay a workload against Ollama alone and through Hearth's scheduler, and compare.

    A measurement, not a test: it exits 0 whether the targets are met or not.
    """
    import asyncio

    from hearth.sim.des import POLICIES, simulate
    from hearth.sim.report import compare, render_table, summarize
    from hearth.sim.workload import load_workload, offered_load

    if speed is not None and not live:
        raise click.UsageError("--speed applies only with --live")
    try:
        wl = load_workload(workload_path, seed=seed, duration_s=duration)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from exc
    if servers is not None:
        wl = dataclasses.replace(wl, servers=servers)

    lags: dict[str, dict[str, float]] = {}
    if live:
        from hearth.sim.live import LiveResult, run_live

        speed = 100.0 if speed is None else speed

        async def run_both(speed: float) -> list[LiveResult]:
            return [await run_live(wl, policy, speed, hold_models=hold_models) for policy in POLICIES]

        try:
            results = asyncio.run(run_both(speed))
        except ValueError as exc:  # refused before anything starts (run_live checks its input)
            raise click.UsageError(str(exc)) from exc
        rows = [summarize(r.policy, r.outcomes, r.loads, wl.tenants) for r in results]
        for row, r in zip(rows, results, strict=True):
            row["preempted"] = r.preemptions  # clients cannot see it; the gateway counts it
        lags = {r.policy: {"p99": r.loop_lag_p99_s, "max": r.loop_lag_max_s} for r in results}
    else:
        simulated = [simulate(wl, policy, hold_models=hold_models) for policy in POLICIES]
        rows = [summarize(r.policy, r.outcomes, r.loads, wl.tenants) for r in simulated]
    verdict = compare(rows[0], rows[1])
    floor = None
    if floor_s is not None:
        from hearth.sim.floor import loads_floor

        try:
            floor = loads_floor(wl, time_limit=floor_s)
        except ImportError as exc:
            raise click.ClickException(f"--floor needs OR-Tools: pip install ortools ({exc})") from exc

    if as_json:
        out: dict[str, object] = {
            "workload": wl.name,
            "seed": wl.seed,
            "duration_s": wl.duration_s,
            "servers": wl.servers,
            "mode": "live" if live else "des",
            "hold_models": hold_models,
            "policies": rows,
            "compare": verdict,
        }
        if live:
            out["speed"] = speed
            out["loop_lag_s"] = lags
        if floor is not None:
            out["loads_floor"] = dataclasses.asdict(floor)
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(
        f"{wl.name}: seed {wl.seed}, {len(wl.arrivals)} requests over {wl.duration_s:g} s on "
        f"{wl.servers} server{'s' if wl.servers > 1 else ''} (offered load {offered_load(wl):.2f} "
        f"runners), {'live at speed ' + format(speed, 'g') if live else 'discrete-event simulation'}"
        f"{', Hearth holding models' if hold_models else ''}\n"
    )
    click.echo(render_table(rows))
    click.echo(f"targets ({verdict['candidate']} against {verdict['baseline']}):")
    for line in _sim_targets(verdict):
        click.echo("  " + line)
    if floor is not None:
        click.echo("\n" + _floor_line(floor, rows[0]))
    if live:
        assert speed is not None
        # Every timer fires this late at worst: the live run's error, in simulated seconds.
        click.echo("\nevent loop lag (simulated s):")
        for policy, lag in lags.items():
            click.echo(f"  {policy}: p99 {lag['p99'] * speed:.2f}, max {lag['max'] * speed:.2f}")


def _sim_targets(verdict: dict[str, object]) -> list[str]:
    """One line per target of report.compare: met or not, and the measured ratio."""
    targets = verdict["targets"]
    assert isinstance(targets, dict)

    def ratio(key: str, need: str) -> str:
        value = verdict.get(key)
        return f"{value:g} ({need})" if isinstance(value, int | float) else f"unmeasured ({need})"

    over = verdict.get("tenants_over_bound")
    checks = [
        ("loads_3x_fewer", "3x fewer model loads", ratio("loads_ratio", "baseline/candidate, >= 3")),
        (
            "interactive_p95_halved",
            "interactive p95 wait halved",
            ratio("interactive_p95_ratio", "candidate/baseline, <= 0.5"),
        ),
        (
            "no_tenant_over_bound",
            "no tenant over its bound",
            "over: " + ", ".join(over) if isinstance(over, list) and over else "none over",
        ),
        (
            "throughput_not_lower",
            "throughput not lower",
            ratio("throughput_ratio", "candidate/baseline, >= 1") + _throughput_parts(verdict),
        ),
    ]
    width = max(len(label) for _, label, _ in checks)
    return [
        f"{label:<{width}}  {'met' if targets.get(key) else 'not met':<7}  {detail}"
        for key, label, detail in checks
    ]


def _throughput_parts(verdict: dict[str, object]) -> str:
    """The throughput ratio's two factors, in words: requests answered, and the drain time."""
    done, span = verdict.get("completed"), verdict.get("makespan_s")
    if not (isinstance(done, list) and isinstance(span, list)) or None in (*done, *span):
        return ""
    later = span[1] - span[0]
    drained = (
        "at the same time" if abs(later) < 0.5 else f"{abs(later):.0f} s {'later' if later > 0 else 'sooner'}"
    )
    return f": {done[1]:g} answered against {done[0]:g}, the last {drained}"


def _floor_line(floor: Floor, baseline: dict[str, object]) -> str:
    """What the floor says of the loads target, in a sentence."""
    took = f"{floor.seconds:.0f} s"
    if floor.feasible is False:
        return f"loads floor: no schedule meets every bound on this trace (proven in {took})"
    if floor.loads is None:
        return f"loads floor: at least {floor.bound}; no plan meeting every bound found in {took}"
    base = baseline.get("model_loads")
    best = (
        f"; at best {base / floor.bound:.2f}x fewer than {baseline['policy']}"
        if isinstance(base, int)
        else ""
    )
    if floor.optimal:
        proof = f"proven in {took}: no scheduler meeting every bound loads fewer{best}"
        return f"loads floor: {floor.bound} ({proof})"
    return f"loads floor: at least {floor.bound}, a plan with {floor.loads} found in {took}{best}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
