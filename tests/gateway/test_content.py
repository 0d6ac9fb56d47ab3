"""Stored prompts and replies: kept for the calls of a tenant with store_content (and of its
sub-tenants), streamed or not, relayed or translated, in both dialects, and shown with the trace;
never kept for anyone else."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeOpenAI

from hearth.settings import Settings

SECRET = "my blood pressure is 150 over 95"
USER = [{"role": "user", "content": SECRET}]
ECHO = f"echo: {SECRET}"


def settings_for(o: FakeOllama, c: FakeOpenAI, **tenant: Any) -> Settings:
    return make_settings(
        [
            {"name": "o", "kind": "ollama", "url": o.url},
            {"name": "c", "kind": "openai", "url": c.url + "/v1"},
        ],
        auth={"trusted_networks": {"127.0.0.0/8": "diary"}},
        tenants={"diary": {"admin": True, **tenant}},
    )


def contents(db: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM trace_contents ORDER BY id")]
    finally:
        con.close()


def traced(url: str) -> list[dict[str, Any]]:
    """Every call's trace, oldest first, each with what GET /admin/traces/{id} says of it."""
    listed = httpx.get(url + "/admin/traces").json()["traces"]
    return [httpx.get(f"{url}/admin/traces/{t['id']}").json() for t in reversed(listed)]


def test_an_opted_in_tenant_has_request_and_reply_stored_for_every_kind_of_call(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o, FakeOpenAI(models=["gpt-x"]) as c:
        hearth: LiveHearth = live(settings_for(o, c, store_content=True, user_header="X-User"))
        oc = ollama.Client(host=hearth.url, headers={"X-User": "alice"})
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x") as oa:
            for model in ("llama3.1:8b", "gpt-x"):  # relayed as-is, then translated
                oc.chat(model=model, messages=USER, stream=False)
                assert "".join(
                    p.message.content or "" for p in oc.chat(model=model, messages=USER, stream=True)
                )
                oa.chat.completions.create(model=model, messages=USER)  # type: ignore[arg-type]
                stream = oa.chat.completions.create(model=model, messages=USER, stream=True)  # type: ignore[arg-type]
                assert "".join(e.choices[0].delta.content or "" for e in stream if e.choices)
            oc.generate(model="llama3.1:8b", prompt=SECRET, stream=False)
            list(oc.generate(model="llama3.1:8b", prompt=SECRET, stream=True))
            oa.completions.create(model="gpt-x", prompt=SECRET, stream=False)
            list(oa.completions.create(model="gpt-x", prompt=SECRET, stream=True))
            oa.embeddings.create(model="gpt-x", input=SECRET)
        oc.close()
        got = traced(hearth.url)
    chats, rest = got[:8], got[8:]
    for t in chats:
        assert t["content"]["response"] == ECHO, (t["dialect"], t["backend"], t["stream"])
        assert t["content"]["request"]["messages"] == USER
    assert [(t["dialect"], t["stream"]) for t in chats] == [
        ("ollama", False),
        ("ollama", True),
        ("openai", False),
        ("openai", True),
    ] * 2
    assert {t["tenant"] for t in chats[:2]} == {"diary/alice"}  # a sub-tenant: its tenant's policy
    for t in rest[:4]:
        assert t["content"] == {"request": t["content"]["request"], "response": ECHO}
        assert t["content"]["request"]["prompt"] == SECRET
    embed = rest[4]
    assert embed["endpoint"] == "embed"
    assert embed["content"]["request"]["input"] == SECRET
    assert embed["content"]["response"] is None  # embeddings: the request only


def test_a_tenant_sees_its_stored_content_through_api_traces(live: Any, oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o, FakeOpenAI(models=["gpt-x"]) as c:
        hearth: LiveHearth = live(settings_for(o, c, store_content=True))
        list(oc(hearth.url).chat(model="llama3.1:8b", messages=USER, stream=True))
        listed = httpx.get(hearth.url + "/api/traces").json()["traces"]
        one = httpx.get(f"{hearth.url}/api/traces/{listed[0]['id']}").json()
    assert "content" not in listed[0]  # lists never carry content
    assert one["content"]["response"] == ECHO
    assert one["content"]["request"]["messages"] == USER


def test_a_tenant_that_did_not_opt_in_has_nothing_stored(live: Any, oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o, FakeOpenAI(models=["gpt-x"]) as c:
        settings = settings_for(o, c)
        hearth: LiveHearth = live(settings)
        client = oc(hearth.url)
        client.chat(model="llama3.1:8b", messages=USER, stream=False)
        list(client.chat(model="gpt-x", messages=USER, stream=True))
        with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x") as oa:
            oa.chat.completions.create(model="gpt-x", messages=USER)  # type: ignore[arg-type]
        got = traced(hearth.url)
        assert [t["content"] for t in got] == [None, None, None]
        assert [t["content_id"] for t in got] == [None, None, None]
        assert contents(settings.data_path / "hearth.db") == []
