"""Tenants and keys: who may call, what each tenant sees and uses, and keys managed while the
server runs (the CLI is another process writing the same SQLite file)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import openai
import pytest
from click.testing import CliRunner
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI

from hearth.cli import main
from hearth.settings import Settings

MSG = [{"role": "user", "content": "hi"}]
TENANTS = {
    "health": {"models": ["healthrag"], "local_only": True},
    "coder": {"models": ["qwen2.5-coder:14b"]},
    "webui": {"user_header": "X-OpenWebUI-User-Email"},
    "ops": {"admin": True},
}


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[LiveHearth, Settings, Any, Any]]:
    with (
        FakeOllama(models=["llama3.1:8b", "qwen2.5-coder:14b"]) as local,
        FakeOpenAI(models=["gpt-4o-mini"], api_key="sk-cloud") as cloud,
    ):
        settings = make_settings(
            [
                {"name": "local", "kind": "ollama", "url": local.url},
                {
                    "name": "cloud",
                    "kind": "openai",
                    "url": cloud.url + "/v1",
                    "api_key": "sk-cloud",
                    "cloud": True,
                },
            ],
            auth={"trusted_networks": {}},
            tenants=TENANTS,
            aliases={"healthrag": {"model": "llama3.1:8b", "fallbacks": ["gpt-4o-mini"]}},
        )
        with LiveHearth(settings) as hearth:
            yield hearth, settings, local, cloud


def cli(settings: Settings, *args: str) -> str:
    """Run the hearth CLI against the same data directory as the running server."""
    env = {"HEARTH_SERVER__DATA_DIR": settings.server.data_dir}
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def new_key(settings: Settings, tenant: str) -> str:
    return cli(settings, "keys", "create", "--tenant", tenant).strip()


def key_id(key: str) -> str:
    return key.split("_")[1]


@pytest.fixture
def clients() -> Iterator[Any]:
    made: list[Any] = []

    def make(url: str, key: str | None, dialect: str = "ollama") -> Any:
        if dialect == "ollama":
            c: Any = ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"} if key else {})
        else:
            c = openai.OpenAI(base_url=url + "/v1", api_key=key or "none", max_retries=0)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_a_request_without_a_key_is_a_401_in_each_dialect(env: Any) -> None:
    hearth = env[0]
    r = httpx.post(hearth.url + "/api/chat", json={"model": "llama3.1:8b", "messages": MSG})
    assert r.status_code == 401
    assert set(r.json()) == {"error"}
    r = httpx.get(hearth.url + "/v1/models")
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error"


def test_heartbeat_and_version_need_no_key(env: Any) -> None:
    hearth = env[0]
    assert httpx.head(hearth.url + "/").status_code == 200
    assert httpx.get(hearth.url + "/api/version").status_code == 200


def test_a_key_created_by_the_cli_works_at_once_with_both_official_clients(env: Any, clients: Any) -> None:
    hearth, settings, _, _ = env
    key = new_key(settings, "family")
    assert key.startswith("hth_")
    reply = clients(hearth.url, key).chat(model="llama3.1:8b", messages=MSG, stream=False)
    assert reply.message.content == "echo: hi"
    out = clients(hearth.url, key, "openai").chat.completions.create(model="llama3.1:8b", messages=MSG)
    assert out.choices[0].message.content == "echo: hi"


def test_a_key_revoked_by_the_cli_fails_on_the_very_next_request(env: Any, clients: Any) -> None:
    hearth, settings, _, _ = env
    key = new_key(settings, "family")
    client = clients(hearth.url, key)
    client.chat(model="llama3.1:8b", messages=MSG, stream=False)
    cli(settings, "keys", "revoke", key_id(key))
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3.1:8b", messages=MSG, stream=False)
    assert err.value.status_code == 401


@pytest.mark.parametrize("mangle", ["unknown-id", "wrong-secret", "no-prefix", "truncated"])
def test_every_bad_key_gets_the_same_answer(env: Any, mangle: str) -> None:
    hearth, settings, _, _ = env
    key = new_key(settings, "family")
    kid = key_id(key)
    bad = {
        "unknown-id": key.replace(kid, "ffffffff" if kid != "ffffffff" else "eeeeeeee"),
        "wrong-secret": key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB"),
        "no-prefix": key.removeprefix("hth_"),
        "truncated": key[:12],
    }[mangle]
    r = httpx.get(hearth.url + "/api/tags", headers={"Authorization": f"Bearer {bad}"})
    assert r.status_code == 401
    assert r.json() == {"error": "invalid API key"}


def test_keys_are_stored_only_as_hashes(env: Any) -> None:
    _, settings, _, _ = env
    key = new_key(settings, "family")
    db = settings.data_path / "hearth.db"
    con = sqlite3.connect(db)
    try:
        stored = [tuple(r) for r in con.execute("SELECT * FROM api_keys")]
    finally:
        con.close()
    assert stored
    assert all(key not in map(str, row) for row in stored)
    assert key not in cli(settings, "keys", "list")


def test_a_tenant_sees_and_uses_only_its_models(env: Any, clients: Any) -> None:
    hearth, settings, _, _ = env
    key = new_key(settings, "coder")
    client = clients(hearth.url, key)
    assert [m.model for m in client.list().models] == ["qwen2.5-coder:14b"]
    oai = clients(hearth.url, key, "openai")
    assert [m.id for m in oai.models.list()] == ["qwen2.5-coder:14b"]
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="llama3.1:8b", messages=MSG, stream=False)
    assert err.value.status_code == 404
    client.chat(model="qwen2.5-coder:14b", messages=MSG, stream=False)
    clients(hearth.url, new_key(settings, "family")).chat(model="llama3.1:8b", messages=MSG, stream=False)
    everyone = clients(hearth.url, new_key(settings, "ops")).ps().models
    assert {m.model for m in everyone} == {"qwen2.5-coder:14b", "llama3.1:8b"}  # both loaded
    assert [m.model for m in client.ps().models] == ["qwen2.5-coder:14b"]
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="llama3.1:8b", messages=MSG)  # type: ignore[arg-type]


def test_a_local_only_tenant_never_reaches_the_cloud_even_by_fallback(env: Any, clients: Any) -> None:
    hearth, settings, local, cloud = env
    key = new_key(settings, "health")
    before = len(cloud.requests_to("/v1/chat/completions"))
    local.fail_next(503)
    with pytest.raises(ollama.ResponseError) as err:
        clients(hearth.url, key).chat(model="healthrag", messages=MSG, stream=False)
    assert err.value.status_code == 503
    assert len(cloud.requests_to("/v1/chat/completions")) == before


def test_the_same_alias_falls_back_to_the_cloud_for_other_tenants(env: Any, clients: Any) -> None:
    hearth, settings, local, cloud = env
    key = new_key(settings, "family")
    before = len(cloud.requests_to("/v1/chat/completions"))
    local.fail_next(503)
    reply = clients(hearth.url, key).chat(model="healthrag", messages=MSG, stream=False)
    assert reply.message.content == "echo: hi"
    assert len(cloud.requests_to("/v1/chat/completions")) == before + 1


def test_model_management_needs_an_admin_tenant(env: Any, clients: Any) -> None:
    hearth, settings, _, _ = env
    with pytest.raises(ollama.ResponseError) as err:
        clients(hearth.url, new_key(settings, "family")).pull("phi4:14b", stream=False)
    assert err.value.status_code == 403
    status = clients(hearth.url, new_key(settings, "ops")).delete("qwen2.5-coder:14b")
    assert status.status == "success"


def test_admin_endpoints_need_an_admin_tenant(env: Any) -> None:
    hearth, settings, _, _ = env
    user = new_key(settings, "family")
    admin = new_key(settings, "ops")
    assert (
        httpx.get(hearth.url + "/admin/backends", headers={"Authorization": f"Bearer {user}"}).status_code
        == 403
    )
    assert httpx.get(hearth.url + "/admin/backends").status_code == 401
    ok = httpx.get(hearth.url + "/admin/keys", headers={"Authorization": f"Bearer {admin}"})
    assert ok.status_code == 200
    assert all("key_hash" not in k for k in ok.json()["keys"])


def test_the_admin_api_creates_a_key_shown_once_and_revokes_it(env: Any) -> None:
    hearth, settings, _, _ = env
    admin = {"Authorization": f"Bearer {new_key(settings, 'ops')}"}
    made = httpx.post(hearth.url + "/admin/keys", json={"tenant": "n8n", "label": "workflows"}, headers=admin)
    assert made.status_code == 201
    key = made.json()["key"]
    assert httpx.get(hearth.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    gone = httpx.delete(hearth.url + f"/admin/keys/{made.json()['id']}", headers=admin)
    assert gone.status_code == 204
    assert httpx.get(hearth.url + "/api/tags", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    tenants = httpx.get(hearth.url + "/admin/tenants", headers=admin).json()["tenants"]
    assert "n8n" in [t["name"] for t in tenants]


def test_open_webui_user_header_names_a_sub_tenant_in_the_request_log(env: Any) -> None:
    hearth, settings, _, _ = env
    key = new_key(settings, "webui")
    headers = {"Authorization": f"Bearer {key}", "X-OpenWebUI-User-Email": "alice@example.com"}
    httpx.post(
        hearth.url + "/api/chat",
        json={"model": "llama3.1:8b", "messages": MSG, "stream": False},
        headers=headers,
    ).raise_for_status()
    admin = {"Authorization": f"Bearer {new_key(settings, 'ops')}"}
    rows = httpx.get(hearth.url + "/admin/requests", params={"limit": 1}, headers=admin).json()["requests"]
    assert rows[0]["tenant"] == "webui/alice@example.com"
    assert rows[0]["key_id"] == key_id(key)


def test_a_trusted_network_needs_no_key_and_acts_as_its_tenant(live: Any, oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b", "phi4:14b"]) as o:
        hearth = live(
            make_settings(
                [{"name": "o", "kind": "ollama", "url": o.url}],
                auth={"trusted_networks": {"127.0.0.1/32": "lan"}},
                tenants={"lan": {"models": ["phi4:14b"]}},
            )
        )
        assert [m.model for m in oc(hearth.url).list().models] == ["phi4:14b"]


def test_a_hearth_key_is_checked_even_from_a_trusted_network(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o:
        hearth = live(make_settings([{"name": "o", "kind": "ollama", "url": o.url}]))
        bad = {"Authorization": "Bearer hth_00000000_notarealsecret"}
        assert httpx.get(hearth.url + "/api/tags", headers=bad).status_code == 401
        dummy = {"Authorization": "Bearer sk-whatever-the-sdk-wants"}
        assert httpx.get(hearth.url + "/api/tags", headers=dummy).status_code == 200
