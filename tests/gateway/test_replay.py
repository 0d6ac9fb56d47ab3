"""Replay of a stored call on another model (POST /admin/traces/{id}/replay): it runs as the
tenant that made the call, under that tenant's policy, and is recorded as a new trace."""

from __future__ import annotations

from typing import Any

import httpx
import openai
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI

from hearth.gateway.auth import Authenticator
from hearth.store.db import Store

ADMIN = {"Authorization": "Bearer root-secret"}
SECRET = "my blood pressure is 150 over 95"
USER = [{"role": "user", "content": SECRET}]


def start(live: Any, o: FakeOllama, cloud: FakeOpenAI) -> LiveHearth:
    settings = make_settings(
        [
            {"name": "o", "kind": "ollama", "url": o.url},
            {"name": "cloud", "kind": "openai", "url": cloud.url + "/v1", "cloud": True},
        ],
        server={"admin_key": "root-secret"},
        auth={"trusted_networks": {"127.0.0.0/8": "health"}},
        tenants={"health": {"local_only": True, "store_content": True}, "plain": {}},
        # phi4 answers with two words at most: its reply tells it apart from llama's.
        models={"phi4:14b": {"options": {"num_predict": 2}}},
    )
    return live(settings)  # type: ignore[no-any-return]


def replay(hearth: LiveHearth, trace_id: int, body: Any) -> httpx.Response:
    return httpx.post(f"{hearth.url}/admin/traces/{trace_id}/replay", json=body, headers=ADMIN)


def newest(hearth: LiveHearth) -> dict[str, Any]:
    return httpx.get(hearth.url + "/admin/traces", headers=ADMIN).json()["traces"][0]  # type: ignore[no-any-return]


def test_a_replay_runs_the_stored_request_on_the_other_model_as_the_same_tenant(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b", "phi4:14b"]) as o, FakeOpenAI(models=["gpt-x"]) as cloud:
        hearth = start(live, o, cloud)
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x") as oa:
            stream = oa.chat.completions.create(model="llama3.1:8b", messages=USER, stream=True)  # type: ignore[arg-type]
            assert "".join(e.choices[0].delta.content or "" for e in stream if e.choices) == f"echo: {SECRET}"
        original = newest(hearth)
        resp = replay(hearth, original["id"], {"model": "phi4:14b"})
        assert resp.status_code == 200, resp.text
        got = resp.json()
        assert got["response"] == "echo: my"  # phi4's reply, not llama's
        assert (got["trace_id"], got["tenant"], got["model"], got["backend"], got["status"]) == (
            original["id"],
            "health",
            "phi4:14b",
            "o",
            200,
        )
        assert got["duration_ms"] > 0
        again = newest(hearth)
        assert again["id"] > original["id"]
        assert (again["tenant"], again["model"], again["stream"], again["status"]) == (
            "health",
            "phi4:14b",
            0,
            200,
        )
        content = httpx.get(f"{hearth.url}/admin/traces/{again['id']}", headers=ADMIN).json()["content"]
        assert content["request"]["messages"] == USER
        assert content["response"] == "echo: my"


def test_a_local_only_tenants_prompt_is_never_replayed_on_a_cloud_backend(live: Any, oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o, FakeOpenAI(models=["gpt-x"]) as cloud:
        hearth = start(live, o, cloud)
        oc(hearth.url).chat(model="llama3.1:8b", messages=USER, stream=False)
        trace_id = newest(hearth)["id"]
        resp = replay(hearth, trace_id, {"model": "gpt-x"})
        assert resp.status_code == 400
        assert resp.json()["error"]["param"] == "model"
        assert "gpt-x" in resp.json()["error"]["message"]
        assert cloud.requests_to("/v1/chat/completions") == []


def test_replay_refuses_unknown_traces_calls_without_stored_content_and_bad_models(
    live: Any, oc: Any
) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o, FakeOpenAI(models=["gpt-x"]) as cloud:
        hearth = start(live, o, cloud)
        store = Store(hearth.settings.store_url)
        try:
            key = Authenticator(hearth.settings, store).create_key("plain")[1]
        finally:
            store.close()
        httpx.post(
            hearth.url + "/api/generate",
            json={"model": "llama3.1:8b", "prompt": "hi", "stream": False},
            headers={"Authorization": f"Bearer {key}"},
        ).raise_for_status()
        plain = newest(hearth)
        assert plain["tenant"] == "plain"
        oc(hearth.url).chat(model="llama3.1:8b", messages=USER, stream=False)
        stored = newest(hearth)["id"]

        unknown = replay(hearth, stored + 100, {"model": "llama3.1:8b"})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["type"] == "not_found_error"
        nothing = replay(hearth, plain["id"], {"model": "llama3.1:8b"})
        assert nothing.status_code == 409
        assert "no stored request" in nothing.json()["error"]["message"]
        for body in ({}, {"model": ""}, {"model": 3}, {"model": "no-such-model"}):
            bad = replay(hearth, stored, body)
            assert bad.status_code == 400, body
            assert bad.json()["error"]["param"] == "model"
        anonymous = httpx.post(f"{hearth.url}/admin/traces/{stored}/replay", json={"model": "llama3.1:8b"})
        assert anonymous.status_code == 403  # the trusted network's tenant is not an admin
