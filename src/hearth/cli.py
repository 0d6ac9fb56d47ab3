"""The ``hearth`` command: serve, init. Every command takes the same ``--config FILE``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from hearth import __version__
from hearth.errors import ConfigError
from hearth.settings import EXAMPLE_CONFIG, Settings, load_settings

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
    from hearth.store.db import Store

    settings = _load(config_path)
    if settings.store.url is None:
        settings.data_path.mkdir(parents=True, exist_ok=True)
    store = Store(settings.store_url)
    store.migrate()
    store.close()
    click.echo(f"database is up to date: {store.engine.url.render_as_string(hide_password=True)}")


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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
