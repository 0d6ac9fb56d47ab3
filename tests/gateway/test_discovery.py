"""Discovery and health: what Hearth knows about each backend, and the admin endpoint showing it."""

from __future__ import annotations

from typing import Any

import httpx
from tests.conftest import make_settings
from tests.fakes import FakeOllama, FakeOpenAI


def test_admin_backends_lists_models_and_loaded_models_with_sizes(live: Any) -> None:
    with (
        FakeOllama(models=["llama3.1:8b", "phi4:14b"], loaded=["phi4:14b"]) as o,
        FakeOpenAI(models=["gpt-x"]) as c,
    ):
        hearth = live(
            make_settings(
                [
                    {"name": "o", "kind": "ollama", "url": o.url},
                    {"name": "c", "kind": "openai", "url": c.url + "/v1"},
                ]
            )
        )
        tags = httpx.get(o.url + "/api/tags").json()["models"]
        data = httpx.get(hearth.url + "/admin/backends").json()
        by = {b["name"]: b for b in data["backends"]}
        assert by["o"]["up"] and by["c"]["up"]
        assert {(m["name"], m["size"]) for m in by["o"]["models"]} == {(m["model"], m["size"]) for m in tags}
        assert [m["name"] for m in by["o"]["loaded"]] == ["phi4:14b"]
        assert by["o"]["loaded"][0]["size"] > 0
        assert by["o"]["loaded"][0]["expires_at"]
        assert [m["name"] for m in by["c"]["models"]] == ["gpt-x"]
        assert by["o"]["version"] == httpx.get(o.url + "/api/version").json()["version"]


def test_a_backend_that_stops_answering_is_marked_down_and_back_up(live: Any) -> None:
    with FakeOllama(models=["m:1b"]) as o:
        hearth = live(make_settings([{"name": "o", "kind": "ollama", "url": o.url}]))
        assert httpx.get(hearth.url + "/admin/backends").json()["backends"][0]["up"]
        o.stop()
        hearth.refresh()
        down = httpx.get(hearth.url + "/admin/backends").json()["backends"][0]
        assert not down["up"]
        assert down["last_error"]
        r = httpx.post(hearth.url + "/api/chat", json={"model": "m:1b", "messages": []})
        assert r.status_code == 503
        assert httpx.get(hearth.url + "/healthz").status_code == 503


def test_a_backend_disabled_for_a_missing_key_is_reported(live: Any, tmp_path: Any) -> None:
    from hearth.settings import load_settings

    with FakeOllama(models=["m:1b"]) as o:
        cfg = tmp_path / "h.yaml"
        cfg.write_text(
            f"backends:\n  - {{name: o, kind: ollama, url: '{o.url}'}}\n"
            "  - {name: cloud, kind: openai, url: 'https://api.example/v1', api_key: '${NO_SUCH_KEY}'}\n"
            f"server: {{data_dir: '{tmp_path}'}}\n"
            "auth: {trusted_networks: {127.0.0.1/32: ops}}\n"
            "tenants: {ops: {admin: true}}\n"
        )
        hearth = live(load_settings(cfg, env={}))
        data = httpx.get(hearth.url + "/admin/backends").json()
        assert [b["name"] for b in data["backends"]] == ["o"]
        assert data["disabled"] == [
            {"name": "cloud", "reason": "environment variable NO_SUCH_KEY is not set"}
        ]


def test_admin_needs_the_admin_key_when_one_is_set(live: Any) -> None:
    with FakeOllama(models=["m:1b"]) as o:
        hearth = live(
            make_settings(
                [{"name": "o", "kind": "ollama", "url": o.url}],
                server={"admin_key": "adm-1"},
                auth={"trusted_networks": {}},
            )
        )
        assert httpx.get(hearth.url + "/admin/backends").status_code == 401
        bad = httpx.get(hearth.url + "/admin/backends", headers={"Authorization": "Bearer adm-2"})
        assert bad.status_code == 401
        ok = httpx.get(hearth.url + "/admin/backends", headers={"Authorization": "Bearer adm-1"})
        assert ok.status_code == 200
        assert "api_key" not in ok.text
