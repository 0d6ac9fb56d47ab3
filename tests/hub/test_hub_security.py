"""The hub's logins, sessions and forms over real HTTP (httpx): what a browser would send, and
what an attacker would."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from tests.conftest import LiveHearth, make_settings

from hearth.hub.session import COOKIE, check_password, hash_password
from hearth.settings import ConfigError, load_settings

PASSWORD = "correct horse battery"
TENANTS: dict[str, Any] = {"family": {}, "ops": {"admin": True}}


def settings(**hub: Any) -> Any:
    return make_settings(
        [],
        auth={"trusted_networks": {"127.0.0.0/8": "ops"}},  # a trusted network never logs a browser in
        tenants=TENANTS,
        hub={"admins": {"admin": hash_password(PASSWORD)}, **hub},
    )


@pytest.fixture(scope="module")
def hearth() -> Iterator[LiveHearth]:
    with LiveHearth(settings(login_attempts_per_minute=3)) as h:
        yield h


def login_form(client: httpx.Client) -> str:
    """Load the login page (which sets its cookie) and return the form's CSRF token."""
    page = client.get("/hub/login")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def log_in(client: httpx.Client, **fields: str) -> httpx.Response:
    token = login_form(client)
    return client.post("/hub/login", data={"csrf": token, **fields})


def csrf_of(client: httpx.Client, path: str = "/hub/tenants") -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert found is not None
    return found.group(1)


def test_pages_need_a_login_even_from_a_trusted_network(hearth: LiveHearth) -> None:
    with httpx.Client(base_url=hearth.url) as c:
        r = c.get("/hub/traces?model=x")
        assert r.status_code == 303
        assert r.headers["location"] == "/hub/login?next=%2Fhub%2Ftraces%3Fmodel%3Dx"
        assert c.get("/hub/live").status_code == 401
        # The JSON API next door still serves the trusted network as before.
        assert c.get("/admin/overview").status_code == 200


def test_a_password_login_sets_a_strict_http_only_cookie_and_returns_to_the_page_asked(
    hearth: LiveHearth,
) -> None:
    with httpx.Client(base_url=hearth.url) as c:
        token = login_form(c)
        r = c.post(
            "/hub/login?next=%2Fhub%2Falerts", data={"csrf": token, "name": "admin", "password": PASSWORD}
        )
        assert r.status_code == 303 and r.headers["location"] == "/hub/alerts"
        cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(COOKIE + "="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/hub" in cookie
        page = c.get("/hub/alerts")
        assert page.status_code == 200 and "<h1>Alerts</h1>" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert page.headers["cache-control"] == "no-store"


def test_login_never_redirects_off_the_hub(hearth: LiveHearth) -> None:
    with httpx.Client(base_url=hearth.url) as c:
        for target in ("https://evil.example/", "//evil.example/hub", "/admin/keys"):
            token = login_form(c)  # each login uses up its form's token
            r = c.post(
                "/hub/login",
                params={"next": target},
                data={"csrf": token, "name": "admin", "password": PASSWORD},
            )
            assert r.status_code == 303 and r.headers["location"] == "/hub"


def test_a_login_without_the_forms_token_is_refused(hearth: LiveHearth) -> None:
    with httpx.Client(base_url=hearth.url) as c:
        r = c.post("/hub/login", data={"csrf": "made-up", "name": "admin", "password": PASSWORD})
        assert r.status_code == 403
        assert COOKIE not in c.cookies


def test_forms_without_the_sessions_csrf_token_change_nothing(hearth: LiveHearth) -> None:
    with httpx.Client(base_url=hearth.url) as c:
        assert log_in(c, name="admin", password=PASSWORD).status_code == 303
        before = c.get("/admin/keys").json()["keys"]
        for data in ({"tenant": "family"}, {"tenant": "family", "csrf": "wrong"}):
            r = c.post("/hub/keys", data=data)
            assert r.status_code == 403
        assert c.get("/admin/keys").json()["keys"] == before
        good = c.post("/hub/keys", data={"tenant": "family", "label": "ok", "csrf": csrf_of(c)})
        assert good.status_code == 201 and "hth_" in good.text
        assert len(c.get("/admin/keys").json()["keys"]) == len(before) + 1


def test_failed_logins_are_limited_per_address(tmp_path: Any) -> None:
    with LiveHearth(settings(login_attempts_per_minute=2)) as h, httpx.Client(base_url=h.url) as c:
        assert log_in(c, name="admin", password="wrong").status_code == 401
        assert log_in(c, name="nobody", password="wrong").status_code == 401
        r = log_in(c, name="admin", password=PASSWORD)
        assert r.status_code == 429 and "Too many failed logins" in r.text
        assert COOKIE not in c.cookies


def test_a_wrong_key_or_password_says_the_same_thing(hearth: LiveHearth) -> None:
    with httpx.Client(base_url=hearth.url) as c:
        a = log_in(c, name="admin", password="nope")
    with httpx.Client(base_url=hearth.url) as c:
        b = log_in(c, key="hth_deadbeef_not-a-key")
    assert a.status_code == b.status_code == 401
    assert "Wrong name, password or key." in a.text and "Wrong name, password or key." in b.text


def test_a_forged_or_foreign_cookie_is_no_session(hearth: LiveHearth) -> None:
    with (
        LiveHearth(settings(secret="another hearth's secret")) as other,
        httpx.Client(base_url=other.url) as c,
    ):
        assert log_in(c, name="admin", password=PASSWORD).status_code == 303
        foreign = c.cookies[COOKIE]
    with httpx.Client(base_url=hearth.url, cookies={COOKIE: foreign}) as c:
        assert c.get("/hub").status_code == 303
    with httpx.Client(base_url=hearth.url, cookies={COOKIE: "eyJyIjoiYWRtaW4ifQ.x.y"}) as c:
        assert c.get("/hub").status_code == 303


def test_a_new_password_voids_the_sessions_of_the_old_one() -> None:
    first = settings()
    with LiveHearth(first) as h, httpx.Client(base_url=h.url) as c:
        assert log_in(c, name="admin", password=PASSWORD).status_code == 303
        cookie = c.cookies[COOKIE]
        secret = (first.data_path / "hub-secret").read_text()
    changed = settings(secret=secret, admins={"admin": hash_password("a brand new password")})
    with LiveHearth(changed) as h, httpx.Client(base_url=h.url, cookies={COOKIE: cookie}) as c:
        assert c.get("/hub").status_code == 303
    same = settings(secret=secret)
    same = msgspec.structs.replace(same, hub=msgspec.structs.replace(same.hub, admins=first.hub.admins))
    with LiveHearth(same) as h, httpx.Client(base_url=h.url, cookies={COOKIE: cookie}) as c:
        assert c.get("/hub").status_code == 200  # the same hash and secret: still valid after a restart


def test_logging_out_needs_the_token_and_clears_the_cookie(hearth: LiveHearth) -> None:
    with httpx.Client(base_url=hearth.url) as c:
        assert log_in(c, name="admin", password=PASSWORD).status_code == 303
        assert c.post("/hub/logout", data={"csrf": "wrong"}).status_code == 403
        assert c.get("/hub").status_code == 200
        r = c.post("/hub/logout", data={"csrf": csrf_of(c, "/hub")})
        assert r.status_code == 303 and COOKIE not in c.cookies
        assert c.get("/hub").status_code == 303


def test_an_admin_tenants_key_logs_in_as_admin_and_a_plain_tenants_key_does_not(hearth: LiveHearth) -> None:
    auth = hearth.app.state.auth
    ops, family = auth.create_key("ops", "t")[1], auth.create_key("family", "t")[1]
    with httpx.Client(base_url=hearth.url) as c:
        assert log_in(c, key=ops).status_code == 303
        assert c.get("/hub/tenants").status_code == 200
    with httpx.Client(base_url=hearth.url) as c:
        assert log_in(c, key=family).status_code == 303
        assert c.get("/hub/tenants").status_code == 403
        assert c.get("/hub/alerts").status_code == 403
        assert c.post("/hub/keys", data={"tenant": "family", "csrf": csrf_of(c, "/hub")}).status_code == 403


def test_the_config_refuses_a_password_in_clear(tmp_path: Any) -> None:
    path = tmp_path / "hearth.yaml"
    path.write_text("hub:\n  admins:\n    admin: hunter22\n")
    with pytest.raises(ConfigError, match=r"hub.admins.admin|Argon2"):
        load_settings(path, env={})


def test_password_hashes_are_argon2id_and_check_only_the_right_password() -> None:
    hashed = hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$")
    assert check_password(hashed, PASSWORD)
    assert not check_password(hashed, PASSWORD + "!")
    assert not check_password(None, PASSWORD)
    assert not check_password("not a hash", PASSWORD)


def test_a_stored_prompt_is_shown_as_text_never_as_markup() -> None:
    from tests.fakes import FakeOllama

    evil = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"
    with FakeOllama(models=["llama3.1:8b"]) as fake:
        s = make_settings(
            [{"name": "local", "kind": "ollama", "url": fake.url}],
            tenants={"tests": {"admin": True, "store_content": True}},
            hub={"admins": {"admin": hash_password(PASSWORD)}},
        )
        with LiveHearth(s) as h, httpx.Client(base_url=h.url) as c:
            r = c.post(
                "/api/chat",
                json={
                    "model": "llama3.1:8b",
                    "stream": False,
                    "messages": [{"role": "user", "content": evil}],
                },
            )
            assert r.status_code == 200
            assert log_in(c, name="admin", password=PASSWORD).status_code == 303
            trace_id = c.get("/admin/traces").json()["traces"][0]["id"]
            page = c.get(f"/hub/traces/{trace_id}").text
            assert "<script>alert" not in page and "<img src=x" not in page
            assert (
                "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(1)&gt;"
                in page
            )


def test_a_hub_turned_off_serves_no_page() -> None:
    with LiveHearth(settings(enabled=False)) as h, httpx.Client(base_url=h.url) as c:
        for path in ("/hub", "/hub/login", "/hub/static/hub.js"):
            assert c.get(path).status_code == 404
        assert c.get("/admin/overview").status_code == 200  # the JSON API stays
