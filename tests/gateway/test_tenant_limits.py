"""Tenant limits edited at run time: through the admin API (or any process writing the store),
over the config file's, applied to the very next request on SQLite and within a second on
PostgreSQL, and back to the config file's when cleared."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import ollama
import pytest
import yaml
from click.testing import CliRunner
from tests.conftest import LiveHearth, eventually, make_settings
from tests.fakes import FakeOllama

from hearth.cli import main
from hearth.gateway import limits as limits_module
from hearth.gateway.limits import ConservativeMemoryStorage
from hearth.store.db import Store

MODEL = "llama3.1:8b"
MSG = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL, "messages": MSG, "stream": False}
# "tests" acts from loopback (a trusted network); "family" calls with a key.
TENANTS: dict[str, Any] = {"tests": {"admin": True, "rpm": 100}, "family": {"rpm": 100, "tpm": 100_000}}


def settings_for(fake: FakeOllama, **extra: Any) -> Any:
    return make_settings([{"name": "o", "kind": "ollama", "url": fake.url}], tenants=TENANTS, **extra)


def put_limits(url: str, tenant: str, body: Any) -> httpx.Response:
    return httpx.put(f"{url}/admin/tenants/{tenant}/limits", json=body)


def new_key(url: str, tenant: str) -> dict[str, str]:
    made = httpx.post(url + "/admin/keys", json={"tenant": tenant})
    assert made.status_code == 201
    return {"Authorization": f"Bearer {made.json()['key']}"}


def test_rpm_set_through_the_admin_api_refuses_the_second_request_at_once(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o))
        r = put_limits(hearth.url, "tests", {"rpm": 1})
        assert r.status_code == 200
        assert r.json()["limits"]["rpm"] == 1
        assert r.json()["config"]["rpm"] == 100
        assert r.json()["overridden"] == ["rpm"]
        client = oc(hearth.url)
        client.chat(model=MODEL, messages=MSG, stream=False)
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model=MODEL, messages=MSG, stream=False)
        assert err.value.status_code == 429
        assert "1 requests per minute" in str(err.value)
        assert len(o.requests_to("/api/chat")) == 1


def test_clearing_the_limits_goes_back_to_the_config_files(live: Any, oc: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o))
        assert put_limits(hearth.url, "tests", {"rpm": 0}).status_code == 200
        client = oc(hearth.url)
        with pytest.raises(ollama.ResponseError) as err:
            client.chat(model=MODEL, messages=MSG, stream=False)
        assert err.value.status_code == 429
        cleared = httpx.delete(hearth.url + "/admin/tenants/tests/limits")
        assert cleared.status_code == 200
        assert cleared.json()["limits"]["rpm"] == 100
        assert cleared.json()["overridden"] == []
        assert client.chat(model=MODEL, messages=MSG, stream=False).message.content == "echo: hi"


def test_only_the_fields_given_change_and_null_means_no_limit(live: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o))
        put_limits(hearth.url, "family", {"rpm": 5, "tokens_per_day": 1000})
        r = put_limits(hearth.url, "family", {"tpm": None, "tokens_per_day": 2000})
        assert r.json()["limits"] == {
            "rpm": 5,
            "tpm": None,
            "tokens_per_day": 2000,
            "tokens_per_month": None,
            "max_concurrent": None,
        }
        assert r.json()["overridden"] == ["rpm", "tokens_per_day", "tpm"]
        listed = {t["name"]: t for t in httpx.get(hearth.url + "/admin/tenants").json()["tenants"]}
        assert listed["family"]["limits"] == r.json()["limits"]
        assert listed["family"]["config"]["tpm"] == 100_000
        assert listed["tests"]["overridden"] == []
        assert httpx.get(hearth.url + "/admin/tenants/family/limits").json() == r.json()


def test_limits_written_by_another_process_apply_to_the_next_request_on_sqlite(live: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o))
        family = new_key(hearth.url, "family")
        assert httpx.post(hearth.url + "/api/chat", json=CHAT, headers=family).status_code == 200
        assert httpx.post(hearth.url + "/api/chat", json=CHAT).status_code == 200
        other = Store(hearth.settings.store_url)  # the CLI, or another Hearth on the same file
        try:
            other.set_tenant_limits("family", {"tokens_per_day": 1})
            other.set_tenant_limits("tests", {"tokens_per_day": 1})
            by_key = httpx.post(hearth.url + "/api/chat", json=CHAT, headers=family)
            assert by_key.status_code == 429
            assert "1 tokens per day" in by_key.json()["error"]
            assert httpx.post(hearth.url + "/api/chat", json=CHAT).status_code == 429  # trusted network
            other.clear_tenant_limits("family")
            assert httpx.post(hearth.url + "/api/chat", json=CHAT, headers=family).status_code == 200
        finally:
            other.close()


def test_limits_written_by_another_process_apply_within_a_second_on_postgresql(pg_url: str) -> None:
    with FakeOllama(models=[MODEL]) as o:
        settings = settings_for(o, store={"url": pg_url, "flush_interval": 0.05})
        with LiveHearth(settings) as hearth, httpx.Client(base_url=hearth.url) as http:
            family = new_key(hearth.url, "family")
            assert http.post("/api/chat", json=CHAT, headers=family).status_code == 200
            other = Store(pg_url)
            try:
                started = time.monotonic()
                other.set_tenant_limits("family", {"tokens_per_day": 1})
                refused = eventually(
                    lambda: http.post("/api/chat", json=CHAT, headers=family).status_code == 429, 1.0
                )
                assert refused, "the override did not apply within a second"
                assert time.monotonic() - started < 1.0
                other.clear_tenant_limits("family")
                assert eventually(
                    lambda: http.post("/api/chat", json=CHAT, headers=family).status_code == 200, 1.0
                )
            finally:
                other.close()


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"rpm": -1}, "rpm", "non-negative integer"),
        ({"rpm": 1.5}, "rpm", "non-negative integer"),
        ({"max_concurrent": True}, "max_concurrent", "non-negative integer"),
        ({"tpm": "100"}, "tpm", "non-negative integer"),
        ({"rpm": 5, "weight": 2}, "weight", "unknown limit 'weight'"),
        ([1, 2], None, "JSON object"),
    ],
)
def test_bad_limits_are_a_400_naming_the_field(live: Any, body: Any, param: str | None, words: str) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o))
        r = put_limits(hearth.url, "family", body)
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param
        assert words in error["message"]
        assert httpx.get(hearth.url + "/admin/tenants/family/limits").json()["overridden"] == []


def test_limits_of_an_unknown_tenant_are_a_404(live: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o))
        r = put_limits(hearth.url, "nobody", {"rpm": 1})
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found_error"
        assert "'nobody'" in r.json()["error"]["message"]
        assert httpx.delete(hearth.url + "/admin/tenants/nobody/limits").status_code == 404
        assert httpx.get(hearth.url + "/admin/tenants/nobody/limits").status_code == 404


def test_only_an_admin_edits_limits(live: Any) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o))
        family = new_key(hearth.url, "family")
        r = httpx.put(hearth.url + "/admin/tenants/family/limits", json={"rpm": 1000}, headers=family)
        assert r.status_code == 403
        assert httpx.get(hearth.url + "/admin/tenants/family/limits").json()["overridden"] == []


def test_a_one_per_minute_window_holds_across_a_minute_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """The library floors the previous minute's weighted count (0.997 -> 0), which let a second
    call through just after the boundary; Hearth rounds it up."""
    now = [6000.0 - 0.1]  # a minute boundary in 0.1 s
    monkeypatch.setattr(limits_module.time, "time", lambda: now[0])

    async def calls() -> list[bool]:
        storage = ConservativeMemoryStorage()
        admitted = []
        # 0.1 s after the boundary; 59.9 s after it, when the first call weighs 0.002; and a
        # whole minute after the first call.
        for t in (6000.0 - 0.1, 6000.0 + 0.1, 6000.0 + 59.9, 6060.0 + 0.1):
            now[0] = t
            admitted.append(await storage.acquire_sliding_window_entry("k", 1, 60))
        return admitted

    assert asyncio.run(calls()) == [True, False, False, True]


def test_the_cli_shows_and_sets_limits_for_the_running_server(live: Any, tmp_path: Path) -> None:
    with FakeOllama(models=[MODEL]) as o:
        hearth = live(settings_for(o))
        config = tmp_path / "hearth.yaml"
        config.write_text(yaml.safe_dump(msgspec.to_builtins(hearth.settings)))

        def cli(*args: str) -> str:
            result = CliRunner().invoke(main, ["tenants", "limits", *args, "--config", str(config)])
            assert result.exit_code == 0, result.output
            return result.output

        assert "rpm: 100 (config)" in cli("tests")
        out = cli("tests", "--tokens-per-day", "1", "--rpm", "none")
        assert "tokens_per_day: 1 (set here)" in out
        assert "rpm: none (set here)" in out
        assert httpx.post(hearth.url + "/api/chat", json=CHAT).status_code == 429
        assert "rpm: 100 (config)" in cli("tests", "--reset")
        assert httpx.post(hearth.url + "/api/chat", json=CHAT).status_code == 200
        bad = CliRunner().invoke(main, ["tenants", "limits", "tests", "--rpm", "-3", "--config", str(config)])
        assert bad.exit_code == 1
        assert "non-negative integer" in bad.output
