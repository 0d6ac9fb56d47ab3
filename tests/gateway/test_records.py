"""The request log: one row per model call in the embedded SQLite store, never the prompt."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import openai
from tests.conftest import LiveHearth, eventually, hang_up_mid_stream, make_settings
from tests.fakes import FakeOllama, FakeOpenAI, count_words

SECRET = "my blood pressure is 150 over 95"


def rows(db: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        con.close()


def test_graceful_shutdown_writes_every_call_with_backend_token_counts(oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o, FakeOpenAI(models=["gpt-x"]) as c:
        settings = make_settings(
            [
                {"name": "o", "kind": "ollama", "url": o.url},
                {"name": "c", "kind": "openai", "url": c.url + "/v1"},
            ],
            store={"flush_interval": 3600},  # only the shutdown flush can write them
        )
        db = settings.data_path / "hearth.db"
        with LiveHearth(settings) as hearth:
            client = oc(hearth.url)
            client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": SECRET}], stream=False)
            list(
                client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": SECRET}], stream=True)
            )
            list(client.chat(model="gpt-x", messages=[{"role": "user", "content": SECRET}], stream=True))
            with openai.OpenAI(base_url=hearth.url + "/v1", api_key="x") as oa:
                oa.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": SECRET}])
            httpx.post(hearth.url + "/api/chat", json={"model": "nope", "messages": []})
            assert rows(db) == []
        got = rows(db)
    assert [(r["dialect"], r["model"], r["backend"], r["stream"], r["status"]) for r in got] == [
        ("ollama", "llama3.1:8b", "o", 0, 200),
        ("ollama", "llama3.1:8b", "o", 1, 200),
        ("ollama", "gpt-x", "c", 1, 200),
        ("openai", "gpt-x", "c", 0, 200),
        ("ollama", "nope", None, 1, 404),
    ]
    prompt_words = count_words([SECRET])
    for r in got[:4]:
        assert r["prompt_tokens"] == prompt_words
        assert r["completion_tokens"] > 0
        assert r["duration_ms"] >= r["ttft_ms"] > 0
    assert "nope" in got[4]["error"]
    assert SECRET not in db.read_bytes().decode("latin-1")


def test_admin_requests_shows_recent_calls_newest_first(live: Any, oc: Any) -> None:
    with FakeOllama(models=["llama3.1:8b", "phi4:14b"]) as o:
        hearth = live(make_settings([{"name": "o", "kind": "ollama", "url": o.url}]))
        client = oc(hearth.url)
        client.generate(model="llama3.1:8b", prompt="one", stream=False)
        client.generate(model="phi4:14b", prompt="two", stream=False)
        data = httpx.get(hearth.url + "/admin/requests", params={"limit": 5}).json()
        assert [r["model"] for r in data["requests"]] == ["phi4:14b", "llama3.1:8b"]
        assert data["requests"][0]["endpoint"] == "completion"


def test_a_client_that_leaves_is_recorded_as_499(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o:
        hearth: LiveHearth = live(make_settings([{"name": "o", "kind": "ollama", "url": o.url}]))
        hang_up_mid_stream(hearth.url, o)

        def statuses() -> list[int]:  # the row is written when Hearth's stream task unwinds
            return [r["status"] for r in httpx.get(hearth.url + "/admin/requests").json()["requests"]]

        assert eventually(statuses) == [499]


def test_each_call_keeps_the_load_time_the_backend_reported(oc: Any) -> None:
    """Ollama's load_duration, relayed or translated: long when the model had to load, short
    after; an OpenAI backend reports none."""
    with FakeOllama(models=["llama3.1:8b"]) as o, FakeOpenAI(models=["gpt-x"]) as c:
        settings = make_settings(
            [
                {"name": "o", "kind": "ollama", "url": o.url},
                {"name": "c", "kind": "openai", "url": c.url + "/v1"},
            ]
        )
        with LiveHearth(settings) as hearth:
            client = oc(hearth.url)
            msg = [{"role": "user", "content": "hi"}]
            client.chat(model="llama3.1:8b", messages=msg)  # loads the model
            list(client.chat(model="llama3.1:8b", messages=msg, stream=True))  # already loaded
            with openai.OpenAI(base_url=hearth.url + "/v1", api_key="unused") as oa:
                oa.chat.completions.create(model="llama3.1:8b", messages=[{"role": "user", "content": "hi"}])
                oa.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
        got = [(r["endpoint"], r["backend"], r["load_ms"]) for r in rows(settings.data_path / "hearth.db")]
    assert got == [("chat", "o", 250.0), ("chat", "o", 1.0), ("chat", "o", 1.0), ("chat", "c", None)]
