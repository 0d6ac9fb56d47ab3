"""Built-in alerts: the five rules, one notification when an alert fires and one when it
resolves, every channel kind received by a real HTTP listener, the history in the store, and
GET /admin/alerts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from tests.conftest import LiveHearth, make_settings
from tests.fakes import FakeOllama, FakeServer
from tests.store.test_postgres import row

from hearth.errors import ConfigError
from hearth.observability.alerts import RULES, Alerts
from hearth.observability.notify import Notice
from hearth.settings import Settings, load_settings
from hearth.store.db import Store

MSGS = [{"role": "user", "content": "is the heating on"}]
WEBHOOK_FIELDS = {"alert", "subject", "state", "value", "threshold", "message", "since", "resolved_at"}
BOT_TOKEN = "123456:TOPSECRET-bot-token"


class Listener(FakeServer):
    """Receives notifications: records every request and answers ``status``; ``hold()`` keeps
    requests waiting until ``release()``, like a slow channel."""

    def __init__(self, status: int = 200) -> None:
        super().__init__()
        self.status = status

    def _setup_routes(self, app: web.Application) -> None:
        app.router.add_route("*", "/{tail:.*}", self._any)

    async def _any(self, request: web.Request) -> web.StreamResponse:
        assert self._gate is not None
        await self._gate.wait()
        return web.json_response({"ok": self.status < 300}, status=self.status)

    def _error(
        self, status: int, message: str | None, request: web.Request, headers: dict[str, str] | None = None
    ) -> web.Response:
        return web.Response(status=status, text=message or "")


def channels(rx: Listener) -> list[dict[str, Any]]:
    """One channel of each kind, all pointed at ``rx``."""
    return [
        {"kind": "webhook", "url": rx.url + "/hook"},
        {"kind": "ntfy", "url": rx.url + "/hearth-alerts"},
        {"kind": "slack", "url": rx.url + "/services/T0/B0/slack"},
        {"kind": "telegram", "token": BOT_TOKEN, "chat_id": "-1001", "api_url": rx.url},
    ]


def settings(backends: list[dict[str, Any]], alerts: dict[str, Any] | None = None, **extra: Any) -> Settings:
    """Test settings whose alerts never evaluate by themselves (tests call evaluate_now) and
    ignore the disk unless a test asks."""
    cfg = {"interval": 3600, "disk_free_gb": None, **(alerts or {})}
    return make_settings(backends, alerts=cfg, **extra)


def evaluate(hearth: LiveHearth, wait: bool = True) -> list[Notice]:
    """One evaluation on the server's loop; with ``wait``, also until the channels are done."""
    alerts: Alerts = hearth.app.state.alerts

    async def run() -> list[Notice]:
        notices = await alerts.evaluate_now()
        if wait:
            await alerts.notified()
        return notices

    return asyncio.run_coroutine_threadsafe(run(), hearth.server_loop()).result(15)


def admin_alerts(hearth: LiveHearth) -> dict[str, Any]:
    resp = httpx.get(hearth.url + "/admin/alerts")
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


def chat(hearth: LiveHearth, model: str = "llama3.1:8b") -> int:
    body = {"model": model, "messages": MSGS, "stream": False}
    return httpx.post(hearth.url + "/api/chat", json=body, timeout=10).status_code


def by_path(rx: Listener) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in rx.requests:
        out.setdefault(r.path, []).append(r)
    return out


# -- through a running Hearth ------------------------------------------------------------------


def test_a_backend_down_notifies_each_channel_once_and_again_when_it_is_back(live: Any) -> None:
    with Listener() as rx, FakeOllama() as o:
        hearth: LiveHearth = live(
            settings(
                [{"name": "gpu", "kind": "ollama", "url": o.url}],
                {"backend_down_after": 0, "channels": channels(rx)},
            )
        )
        assert evaluate(hearth) == []
        o.stop()
        hearth.refresh()
        fired = evaluate(hearth)
        assert [(n.event, n.rule, n.subject) for n in fired] == [("fired", "backend_down", "gpu")]
        assert evaluate(hearth) == [] and evaluate(hearth) == []  # still down: nothing new
        got = by_path(rx)
        assert sorted(len(v) for v in got.values()) == [1, 1, 1, 1]

        hook = got["/hook"][0]
        assert hook.method == "POST" and set(hook.json) == WEBHOOK_FIELDS
        assert hook.json["alert"] == "backend_down" and hook.json["subject"] == "gpu"
        assert hook.json["state"] == "firing" and hook.json["resolved_at"] is None
        assert hook.json["threshold"] == 0 and hook.json["value"] >= 0
        assert "gpu" in hook.json["message"]
        ntfy = got["/hearth-alerts"][0]
        assert ntfy.headers["title"] == "Hearth: backend gpu down"
        assert ntfy.headers["priority"] == "high" and ntfy.headers["tags"] == "rotating_light"
        assert ntfy.headers["content-type"].startswith("text/plain")
        assert ntfy.body.decode() == hook.json["message"]
        slack = got["/services/T0/B0/slack"][0]
        assert set(slack.json) == {"text"} and "FIRING: backend gpu down" in slack.json["text"]
        telegram = got[f"/bot{BOT_TOKEN}/sendMessage"][0]
        assert telegram.json == {"chat_id": "-1001", "text": slack.json["text"]}

        o.restart()
        hearth.refresh()
        resolved = evaluate(hearth)
        assert [(n.event, n.subject) for n in resolved] == [("resolved", "gpu")]
        assert evaluate(hearth) == []
        got = by_path(rx)
        assert sorted(len(v) for v in got.values()) == [2, 2, 2, 2]
        hook = got["/hook"][1].json
        assert hook["state"] == "resolved" and hook["resolved_at"] >= hook["since"]
        assert "resolved after" in hook["message"]
        ntfy = got["/hearth-alerts"][1]
        assert ntfy.headers["tags"] == "white_check_mark" and ntfy.headers["priority"] == "default"
        assert "RESOLVED: backend gpu down" in got["/services/T0/B0/slack"][1].json["text"]
        assert admin_alerts(hearth)["firing"] == []


def test_slow_responses_fire_for_the_model_once_enough_calls_are_slow(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b"]) as o:
        o.delay_first_byte = 0.06
        hearth: LiveHearth = live(
            settings(
                [{"name": "o", "kind": "ollama", "url": o.url}], {"slow_p95_seconds": 0.05, "min_calls": 5}
            )
        )
        for _ in range(4):
            assert chat(hearth) == 200
        assert evaluate(hearth) == []  # four calls: too few to judge
        assert chat(hearth) == 200
        (n,) = evaluate(hearth)
        assert (n.event, n.rule, n.subject, n.threshold) == ("fired", "slow_responses", "llama3.1:8b", 0.05)
        assert n.value >= 0.06
        assert evaluate(hearth) == []


def test_server_errors_fire_error_rate_and_client_errors_do_not(live: Any) -> None:
    with FakeOllama(models=["llama3.1:8b", "phi4:14b"]) as o:
        hearth: LiveHearth = live(
            settings(
                [{"name": "o", "kind": "ollama", "url": o.url}],
                {"error_rate": 0.3, "min_calls": 5, "slow_p95_seconds": None},
                routing={"breaker": {"failures": 1000}},
            )
        )
        o.fail_next(500, "model runner has unexpectedly stopped", times=2)
        statuses = [chat(hearth) for _ in range(5)]
        o.fail_next(400, "invalid options", times=5)
        statuses += [chat(hearth, "phi4:14b") for _ in range(5)]
        assert statuses == [500, 500, 200, 200, 200] + [400] * 5
        (n,) = evaluate(hearth)
        assert (n.rule, n.subject, n.value, n.threshold) == ("error_rate", "llama3.1:8b", 0.4, 0.3)
        assert "2 of 5 calls" in n.message


def test_a_tenant_near_its_daily_token_quota_fires_quota_nearly_used(live: Any) -> None:
    with FakeOllama() as o:
        hearth: LiveHearth = live(
            settings(
                [{"name": "o", "kind": "ollama", "url": o.url}],
                {"quota_fraction": 0.005},
                tenants={"tests": {"admin": True, "tokens_per_day": 1000}},
            )
        )
        assert evaluate(hearth) == []
        assert chat(hearth) == 200  # about 10 tokens; the evaluation flushes the request log itself
        (n,) = evaluate(hearth)
        assert (n.rule, n.subject, n.threshold) == ("quota_nearly_used", "tests tokens_per_day", 0.005)
        rows = httpx.get(hearth.url + "/admin/requests").json()["requests"]
        used = rows[0]["prompt_tokens"] + rows[0]["completion_tokens"]
        assert n.value == pytest.approx(used / 1000)
        assert f"{used:,} of 1,000 tokens per day" in n.message


def test_low_disk_space_fires_and_history_survives_a_restart_without_a_second_notice(live: Any) -> None:
    with Listener() as rx:
        first = settings([], {"disk_free_gb": 1e9, "channels": [{"kind": "webhook", "url": rx.url}]})
        hearth: LiveHearth = live(first)
        (n,) = evaluate(hearth)
        assert (n.rule, n.subject, n.threshold) == ("disk_low", str(first.data_path), 1e9)
        assert 0 <= n.value < 1e9

        view = admin_alerts(hearth)
        assert [r["name"] for r in view["rules"]] == list(RULES)
        rules = {r["name"]: r for r in view["rules"]}
        assert rules["disk_low"]["threshold"] == 1e9 and rules["disk_low"]["enabled"]
        assert rules["slow_responses"]["settings"] == {
            "slow_p95_seconds": 10.0,
            "window": 300.0,
            "min_calls": 5,
        }
        assert rules["backend_down"]["threshold"] == 60.0
        (firing,) = view["firing"]
        assert firing["rule"] == "disk_low" and firing["since"] == n.since and firing["value"] == n.value
        (event,) = view["history"]
        assert (event["event"], event["rule"], event["subject"]) == (
            "fired",
            "disk_low",
            str(first.data_path),
        )
        assert view["channels"] == [
            {
                "name": "webhook #1",
                "kind": "webhook",
                "sent": 1,
                "failed": 0,
                "dropped": 0,
                "queued": 0,
                "last_error": None,
                "last_error_at": None,
            }
        ]
        hearth.__exit__(None, None, None)

        # The history is in the store: another connection to the same file reads it.
        other = Store(first.store_url)
        try:
            assert [e["event"] for e in other.alert_events(10)] == ["fired"]
        finally:
            other.close()

        # A restart takes the alert up again: still firing, and no second notification.
        again: LiveHearth = live(first)
        assert [a["rule"] for a in admin_alerts(again)["firing"]] == ["disk_low"]
        assert evaluate(again) == []
        again.__exit__(None, None, None)
        assert len(rx.requests) == 1

        # Turned off after a restart: it resolves, with one notification.
        off = settings(
            [], {"channels": [{"kind": "webhook", "url": rx.url}]}, server={"data_dir": first.server.data_dir}
        )
        last: LiveHearth = live(off)
        (n,) = evaluate(last)
        assert (n.event, n.rule) == ("resolved", "disk_low")
        assert [e["event"] for e in admin_alerts(last)["history"]] == ["resolved", "fired"]
        assert [r.json["state"] for r in rx.requests] == ["firing", "resolved"]


def test_admin_alerts_needs_an_admin(live: Any) -> None:
    hearth: LiveHearth = live(settings([], tenants={"tests": {}}))
    assert httpx.get(hearth.url + "/admin/alerts").status_code == 403


def test_failing_and_slow_channels_neither_block_evaluation_nor_leak_secrets(
    live: Any, caplog: pytest.LogCaptureFixture
) -> None:
    slack_secret = "XXSECRETXX"
    with Listener(status=500) as broken, Listener() as slow:
        chans = [
            {"kind": "telegram", "name": "phone", "token": BOT_TOKEN, "chat_id": 7, "api_url": broken.url},
            {"kind": "slack", "url": f"http://127.0.0.1:1/services/{slack_secret}"},  # nothing listens
            {"kind": "webhook", "url": slow.url + f"/{slack_secret}", "timeout": 10},
        ]
        hearth: LiveHearth = live(settings([], {"disk_free_gb": 1e9, "channels": chans}))
        slow.hold()
        with caplog.at_level(logging.INFO, logger="hearth"):
            started = time.monotonic()
            assert len(evaluate(hearth, wait=False)) == 1
            assert evaluate(hearth, wait=False) == []
            assert time.monotonic() - started < 5  # the held webhook waits up to 10 s
            assert slow.wait_requests(1)
            slow.release()
            evaluate(hearth)  # nothing new; waits until every channel is done
        status = {c["name"]: c for c in admin_alerts(hearth)["channels"]}
        assert status["phone"]["failed"] == 1 and status["phone"]["last_error"] == "HTTP 500"
        assert status["slack #2"]["failed"] == 1 and status["slack #2"]["last_error"].startswith(
            "cannot connect"
        )
        assert status["webhook #3"]["sent"] == 1 and status["webhook #3"]["failed"] == 0
        assert broken.requests[0].path == f"/bot{BOT_TOKEN}/sendMessage"  # it was tried
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "alert channel phone" in logged and "alert channel slack #2" in logged
        assert "TOPSECRET" not in logged and slack_secret not in logged
        assert "TOPSECRET" not in str(admin_alerts(hearth)) and slack_secret not in str(admin_alerts(hearth))


# -- the rules on their own: Alerts fed through its hooks ---------------------------------------


@dataclass
class Backend:
    """A backend's state as the pool hands it to its listeners after a poll."""

    name: str
    up: bool
    last_error: str | None = None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'hearth.db'}")
    s.migrate()
    yield s
    s.close()


def alerts_with(store: Store, **cfg: Any) -> Alerts:
    return Alerts(
        settings([], {"backend_down_after": None, "slow_p95_seconds": None, "error_rate": None, **cfg}), store
    )


def run(alerts: Alerts) -> list[tuple[str, str, str]]:
    return [(n.event, n.rule, n.subject) for n in asyncio.run(alerts.evaluate_now())]


def test_p95_must_exceed_the_threshold_over_min_calls(store: Store) -> None:
    alerts = alerts_with(store, slow_p95_seconds=10.0, min_calls=5)
    for _ in range(4):
        alerts.observe("m", "b", 200, None, 30.0)
    alerts.observe("m", "b", 500, "server_error", 60.0)  # failures do not count as slow calls
    assert run(alerts) == []
    alerts.observe("m", "b", 200, None, 30.0)
    assert run(alerts) == [("fired", "slow_responses", "m")]
    for _ in range(95):  # 5 slow calls of 100: the p95 is a fast one
        alerts.observe("m", "b", 200, None, 0.5)
    assert run(alerts) == [("resolved", "slow_responses", "m")]


def test_error_rate_counts_server_side_failures_only(store: Store) -> None:
    alerts = alerts_with(store, error_rate=0.05, min_calls=5)
    for status, reason in [(400, "client_error"), (404, "client_error"), (499, "client_disconnect")] * 3:
        alerts.observe("m", "none", status, reason, 0.1)
    assert run(alerts) == []
    alerts.observe("m", "b", 200, "mid_stream", 0.1)  # the backend broke off a stream
    assert run(alerts) == [("fired", "error_rate", "m")]
    assert alerts.firing[("error_rate", "m")].value == 0.1


def test_calls_older_than_the_window_are_forgotten(store: Store) -> None:
    alerts = alerts_with(store, error_rate=0.05, min_calls=1, window=0.2)

    async def scenario() -> tuple[list[str], list[str]]:
        alerts.observe("m", "b", 503, "server_error", 0.1)
        first = [n.event for n in await alerts.evaluate_now()]
        deadline = time.monotonic() + 5
        later: list[str] = []
        while not later and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            later = [n.event for n in await alerts.evaluate_now()]
        return first, later

    assert asyncio.run(scenario()) == (["fired"], ["resolved"])


def test_quotas_count_each_principal_against_its_tenants_day_and_month_limits(store: Store) -> None:
    alerts = Alerts(
        settings(
            [],
            {"quota_fraction": 0.9},
            tenants={"svc": {"tokens_per_month": 1000}},
            tenant_defaults={"tokens_per_day": 100},
        ),
        store,
    )
    now = time.time()
    first_of_month = datetime.fromtimestamp(now, UTC).replace(day=1, hour=0, minute=0, second=0).timestamp()
    store.insert_requests([row(first_of_month + 1, "svc", (450, 450)), row(now, "bob", (50, 30))])
    assert sorted(run(alerts)) == [("fired", "quota_nearly_used", "svc tokens_per_month")]
    assert alerts.firing[("quota_nearly_used", "svc tokens_per_month")].value == 0.9
    # Later the same day: the earlier days come from the day's first reading, today is read again.
    store.insert_requests([row(now, "bob", (10, 10)), row(now, "svc/alice", (950, 0))])
    assert sorted(run(alerts)) == [
        ("fired", "quota_nearly_used", "bob tokens_per_day"),
        ("fired", "quota_nearly_used", "svc/alice tokens_per_month"),
    ]
    assert (
        "bob has used 100 of 100 tokens per day (100%)"
        in alerts.firing[("quota_nearly_used", "bob tokens_per_day")].message
    )


def test_a_backend_down_for_less_than_backend_down_after_does_not_fire(store: Store) -> None:
    alerts = alerts_with(store, backend_down_after=3600)
    alerts.backend_polled(Backend("gpu", up=False, last_error="connection refused"))
    assert run(alerts) == []
    soon = alerts_with(store, backend_down_after=0)
    soon.backend_polled(Backend("gpu", up=False, last_error="connection refused"))
    assert run(soon) == [("fired", "backend_down", "gpu")]
    assert "connection refused" in soon.firing[("backend_down", "gpu")].message
    soon.backend_polled(Backend("gpu", up=True))
    assert run(soon) == [("resolved", "backend_down", "gpu")]


def test_a_backend_down_taken_up_after_a_restart_stays_firing_until_a_poll_succeeds(store: Store) -> None:
    store.insert_alert_event(
        {
            "ts": 1.0,
            "rule": "backend_down",
            "subject": "gpu",
            "event": "fired",
            "value": 90.0,
            "threshold": 60.0,
            "message": "down",
            "since": 1.0,
        }
    )
    alerts = alerts_with(store, backend_down_after=60)
    asyncio.run(alerts.restore())
    alerts.backend_polled(Backend("gpu", up=False))  # the first poll after the restart failed
    assert run(alerts) == []
    assert alerts.firing[("backend_down", "gpu")].since == 1.0
    alerts.backend_polled(Backend("gpu", up=True))
    assert run(alerts) == [("resolved", "backend_down", "gpu")]


def test_repeat_after_reminds_while_an_alert_stays_firing(store: Store) -> None:
    alerts = alerts_with(store, disk_free_gb=1e9, repeat_after=1e-6)
    assert run(alerts) == [("fired", "disk_low", str(alerts.settings.data_path))]
    (reminder,) = asyncio.run(alerts.evaluate_now())
    assert reminder.event == "reminder" and reminder.state == "firing"
    assert reminder.message.startswith("firing for ")
    assert [e["event"] for e in store.alert_events(10)] == ["fired"]  # reminders are not history


def test_a_null_threshold_turns_its_rule_off(store: Store) -> None:
    alerts = alerts_with(store, quota_fraction=None, disk_free_gb=None, min_calls=1)
    alerts.backend_polled(Backend("gpu", up=False))
    alerts.observe("m", "b", 500, "server_error", 99.0)
    assert run(alerts) == []
    assert not any(r["enabled"] for r in alerts.rules())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_history_is_stored_and_open_alerts_are_those_last_fired(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}" if backend == "sqlite" else request.getfixturevalue("pg_url")
    s = Store(url)
    try:
        s.migrate()
        base = {"value": 1.0, "threshold": 0.5, "message": "m", "since": 100.0}
        s.insert_alert_event({"ts": 100.0, "rule": "disk_low", "subject": "/d", "event": "fired", **base})
        s.insert_alert_event(
            {"ts": 101.0, "rule": "backend_down", "subject": "gpu", "event": "fired", **base}
        )
        s.insert_alert_event({"ts": 102.0, "rule": "disk_low", "subject": "/d", "event": "resolved", **base})
        assert [(e["event"], e["subject"]) for e in s.alert_events(10)] == [
            ("resolved", "/d"),
            ("fired", "gpu"),
            ("fired", "/d"),
        ]
        assert len(s.alert_events(1)) == 1
        (still,) = s.open_alerts()
        assert (still["rule"], still["subject"], still["since"], still["value"]) == (
            "backend_down",
            "gpu",
            100.0,
            1.0,
        )
    finally:
        s.close()


# -- settings ------------------------------------------------------------------------------------


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    p = tmp_path / "hearth.yaml"
    p.write_text(text)
    return load_settings(p, env=env or {})


def test_alert_settings_have_the_documented_defaults(tmp_path: Path) -> None:
    a = load(tmp_path, "").alerts
    assert (a.enabled, a.interval, a.window, a.backend_down_after) == (True, 30.0, 300.0, 60.0)
    assert (a.slow_p95_seconds, a.error_rate, a.min_calls, a.quota_fraction) == (10.0, 0.05, 5, 0.9)
    assert (a.disk_free_gb, a.repeat_after, a.channels) == (10.0, None, [])


def test_channel_secrets_come_from_the_environment(tmp_path: Path) -> None:
    text = "alerts:\n  channels:\n    - {kind: telegram, token: '${TG_TOKEN}', chat_id: 42}\n"
    assert load(tmp_path, text, {"TG_TOKEN": "1:abc"}).alerts.channels[0].token == "1:abc"
    with pytest.raises(ConfigError, match=r"alerts\.channels\[0\]\.token: environment variable TG_TOKEN"):
        load(tmp_path, text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alerts: {interval: 0}", r"alerts: interval: expected a positive"),
        ("alerts: {error_rate: 1.5}", r"alerts: error_rate: expected a fraction"),
        ("alerts: {min_calls: 0}", r"alerts: min_calls"),
        ("alerts: {disk_free_gb: -1}", r"alerts: disk_free_gb"),
        ("alerts: {channels: [{kind: slack}]}", r"alerts\.channels\[0\]\.url: a slack channel needs a url"),
        (
            "alerts: {channels: [{kind: telegram, token: x}]}",
            r"alerts\.channels\[0\]: a telegram channel needs token and chat_id",
        ),
        (
            "alerts: {channels: [{kind: ntfy, url: 'ntfy.sh/x'}]}",
            r"alerts\.channels\[0\]\.url: expected an http",
        ),
        (
            "alerts: {channels: [{kind: webhook, url: 'http://x', timeout: 0}]}",
            r"alerts\.channels\[0\]\.timeout",
        ),
        ("alerts: {channels: [{kind: email, url: 'http://x'}]}", r"alerts\.channels\[0\]\.kind"),
        ("alerts: {bogus: 1}", r"alerts"),
    ],
)
def test_bad_alert_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)
