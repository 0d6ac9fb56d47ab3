"""The real entry point: `hearth serve` as its own process, as the README starts it."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ollama
from tests.fakes import FakeOllama

HEARTH = Path(sys.executable).with_name("hearth")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "exited"
        try:
            if httpx.get(url + "/api/version", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)  # polling a starting process, not papering over a race
    raise AssertionError("hearth serve did not start")


def test_serve_starts_from_a_config_file_serves_and_shuts_down_gracefully(tmp_path: Path) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as fake:
        port = free_port()
        cfg = tmp_path / "hearth.yaml"
        cfg.write_text(
            f"server: {{data_dir: '{tmp_path / 'data'}', log_level: warning}}\n"
            f"backends: [{{name: box, kind: ollama, url: '{fake.url}'}}]\n"
            "auth: {trusted_networks: {127.0.0.1/32: me}}\n"
            # flushed only at shutdown: the rows below prove the graceful path writes them
            "store: {flush_interval: 3600}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEARTH_")}
        proc = subprocess.Popen(
            [str(HEARTH), "serve", "--config", str(cfg), "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc)
            with ollama.Client(host=url) as client:
                assert [m.model for m in client.list().models] == ["llama3.1:8b"]
                reply = client.chat(
                    model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}], stream=False
                )
            assert reply.message.content == "echo: hi"
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal so the exit status says SIGTERM.
        assert proc.returncode in (0, -signal.SIGTERM), out.decode()
        con = sqlite3.connect(tmp_path / "data" / "hearth.db")
        try:
            rows = con.execute("SELECT tenant, model, status FROM requests").fetchall()
        finally:
            con.close()
        assert rows == [("me", "llama3.1:8b", 200)]


def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "hearth.yaml"
    cfg.write_text("server: {port: high}\n")
    done = subprocess.run([str(HEARTH), "serve", "--config", str(cfg)], capture_output=True, timeout=30)
    assert done.returncode != 0
    assert b"server.port" in done.stderr
    assert b"Traceback" not in done.stderr
