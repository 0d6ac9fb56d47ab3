"""The hub in a real browser: Debian's headless Chromium driven by Playwright, against a live
Hearth on loopback in front of a fake Ollama that really goes down. Each step saves a
screenshot in test-artifacts/hub/ (kept by CI runs for a look; ignored by git)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from tests.conftest import LiveHearth, eventually, make_settings
from tests.fakes import FakeOllama, FakeOpenAI

from hearth.hub.session import hash_password

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "hub"
PASSWORD = "correct horse battery"
# The flags Chromium needs here: root, no GPU, and no calls home on a closed network.
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TENANTS: dict[str, Any] = {"family": {}, "health": {}, "tests": {"admin": True}}
WAIT_MS = 10_000  # the longest Playwright's auto-waiting assertions wait for the page to change


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "Debian's chromium is missing: scripts/test installs it"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    yield pg
    context.close()


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def hub_settings(ollama_url: str) -> Any:
    return make_settings(
        [{"name": "local", "kind": "ollama", "url": ollama_url}],
        auth={"trusted_networks": {}},
        tenants=TENANTS,
        hub={"admins": {"admin": hash_password(PASSWORD)}},
    )


def new_key(hearth: LiveHearth, tenant: str) -> str:
    key: str = hearth.app.state.auth.create_key(tenant, "test")[1]
    return key


def chat(url: str, key: str, text: str) -> str:
    with ollama.Client(host=url, headers={"Authorization": f"Bearer {key}"}) as c:
        reply = c.chat(model="llama3.1:8b", messages=[{"role": "user", "content": text}])
    return str(reply.message.content)


def log_in_with_password(page: Page, base: str) -> None:
    page.goto(base + "/hub")
    expect(page).to_have_url(re.compile(r"/hub/login\?next=%2Fhub$"))
    shot(page, "01-login")
    page.fill("input[name=name]", "admin")
    page.fill("input[name=password]", PASSWORD)
    page.click("#login-password")
    expect(page.locator("h1")).to_have_text("Overview")


def test_an_admin_logs_in_watches_a_backend_go_down_opens_a_trace_and_manages_keys(page: Page) -> None:
    fake = FakeOllama(models=["llama3.1:8b"], loaded=["llama3.1:8b"]).start()
    try:
        with LiveHearth(hub_settings(fake.url)) as hearth:
            family = new_key(hearth, "family")
            assert chat(hearth.url, family, "hello hub") == "echo: hello hub"

            log_in_with_password(page, hearth.url)
            row = page.locator("#backends tr[data-backend=local]")
            expect(row.locator(".state")).to_have_text("up")
            expect(row).to_contain_text("llama3.1:8b")
            expect(page.locator("#requests-today")).to_have_text("1")
            shot(page, "02-overview-up")

            # The backend really goes away; the next health poll sees it, and the open page
            # shows it without a reload (its script refreshes the live part).
            fake.stop()
            hearth.refresh()
            expect(row.locator(".state")).to_have_text("down")
            assert page.evaluate("document.getElementById('live').dataset.updated") is not None
            shot(page, "03-overview-down")

            page.click("nav >> text=Traces")
            expect(page.locator("table.traces tbody tr")).to_have_count(1)
            expect(page.locator("table.traces tbody tr").first).to_contain_text("family")
            shot(page, "04-traces")
            page.locator("a.trace-link").first.click()
            expect(page.locator("h1")).to_contain_text("Trace ")
            expect(page.locator("dl.facts")).to_contain_text("llama3.1:8b")
            expect(page.locator("#status")).to_have_text("200")
            expect(page.locator("#load")).to_have_text("1.0 ms")  # the model was loaded already
            shot(page, "05-trace")

            page.click("nav >> text=Tenants & keys")
            page.fill("form.create input[name=tenant]", "health")
            page.fill("form.create input[name=label]", "assistant")
            page.click("#create-key")
            created = page.locator("#new-key-value").inner_text()
            assert created.startswith("hth_")
            shot(page, "06-key-created")
            fake.restart()
            hearth.refresh()
            assert chat(hearth.url, created, "with the new key") == "echo: with the new key"

            key_id = created.split("_")[1]
            page.on("dialog", lambda d: d.accept())  # "Revoke key ...?"
            page.goto(hearth.url + "/hub/tenants")
            page.locator(f"tr[data-key='{key_id}'] button").click()
            expect(page.locator(f"tr[data-key='{key_id}'] .key-state")).to_contain_text("revoked")
            shot(page, "07-key-revoked")
            with pytest.raises(ollama.ResponseError) as refused:
                chat(hearth.url, created, "after the revocation")
            assert refused.value.status_code == 401

            page.click("text=Log out")
            expect(page).to_have_url(re.compile(r"/hub/login$"))
            page.goto(hearth.url + "/hub/traces")
            expect(page).to_have_url(re.compile(r"/hub/login\?next="))
    finally:
        fake.stop()


def test_a_tenant_logged_in_with_its_key_sees_only_its_own_calls(page: Page) -> None:
    with FakeOllama(models=["llama3.1:8b"], loaded=["llama3.1:8b"]) as fake:
        with LiveHearth(hub_settings(fake.url)) as hearth:
            family, health = new_key(hearth, "family"), new_key(hearth, "health")
            chat(hearth.url, family, "family question")
            chat(hearth.url, health, "private health question")
            admin = httpx.get(
                hearth.url + "/admin/traces", headers={"Authorization": f"Bearer {new_key(hearth, 'tests')}"}
            ).json()
            ids = {t["tenant"]: t["id"] for t in admin["traces"]}

            page.goto(hearth.url + "/hub/login")
            page.fill("input[name=key]", family)
            page.click("#login-key")
            expect(page.locator("h1")).to_have_text("Overview")
            expect(page.locator("nav")).not_to_contain_text("Tenants")
            shot(page, "10-tenant-overview")

            page.goto(hearth.url + "/hub/traces")
            rows = page.locator("table.traces tbody tr")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("family")
            # Asking for another tenant's calls by filter still lists only its own.
            page.goto(hearth.url + "/hub/traces?tenant=health")
            expect(rows).to_have_count(1)
            expect(rows.first).to_contain_text("family")
            shot(page, "11-tenant-traces")

            response = page.goto(hearth.url + f"/hub/traces/{ids['health']}")
            assert response is not None and response.status == 404
            expect(page.locator("main")).not_to_contain_text("health")
            response = page.goto(hearth.url + "/hub/tenants")
            assert response is not None and response.status == 403
            response = page.goto(hearth.url + f"/hub/traces/{ids['family']}")
            assert response is not None and response.status == 200
            page.goto(hearth.url + "/hub/usage?since=24h")
            expect(page.locator("main table").first).to_contain_text("family")
            expect(page.locator("main")).not_to_contain_text("health")
            page.goto(hearth.url + "/hub")
            expect(page.locator("table.traces tbody tr")).to_have_count(1)
            expect(page.locator("main")).not_to_contain_text("health")

            # Revoking the key ends the session at once.
            hearth.app.state.auth.store.revoke_key(family.split("_")[1])
            page.goto(hearth.url + "/hub/traces")
            expect(page).to_have_url(re.compile(r"/hub/login\?next="))


def test_the_overview_shows_who_waits_for_which_model_and_what_the_scheduler_holds(page: Page) -> None:
    """One slot on llama3.1:8b, held busy at the backend: the next request waits in Hearth's
    queue, and the open overview shows it there, then gone once both are answered."""
    with FakeOllama(models=["llama3.1:8b"], loaded=["llama3.1:8b"]) as fake:
        settings = make_settings(
            [{"name": "local", "kind": "ollama", "url": fake.url, "keep_alive": 600}],
            auth={"trusted_networks": {}},
            tenants={"family": {}, "health": {"max_wait": 120}},
            hub={"admins": {"admin": hash_password(PASSWORD)}},
        )
        with LiveHearth(settings) as hearth, ThreadPoolExecutor(2) as pool:
            family, health = new_key(hearth, "family"), new_key(hearth, "health")
            log_in_with_password(page, hearth.url)
            expect(page.locator("#waiting")).to_contain_text("Nobody waits.")
            model = page.locator("#sched-models tr[data-model='llama3.1:8b']")
            fake.hold()
            first = pool.submit(chat, hearth.url, family, "first")
            assert eventually(lambda: len(fake.requests_to("/api/chat")) == 1)
            second = pool.submit(chat, hearth.url, health, "second")
            row = page.locator("#waiting tr[data-tenant=health]")
            expect(row).to_contain_text("llama3.1:8b")
            expect(row).to_contain_text("interactive")
            expect(row.locator("td").last).to_have_text("2 min")  # its max_wait
            expect(model.locator(".model-state")).to_have_text("running 1 of 1")
            shot(page, "11-overview-waiting")
            fake.release()
            assert first.result(timeout=30) == "echo: first"
            assert second.result(timeout=30) == "echo: second"
            expect(page.locator("#waiting")).to_contain_text("Nobody waits.")
            expect(model.locator(".model-state")).to_contain_text("idle")
            expect(model).to_contain_text(re.compile(r"in (9|10) min"))  # the backend's keep_alive
            expect(page.locator("#sched-totals")).to_contain_text("0 model loads")


def test_usage_page_draws_charts_that_fit_a_phone(browser: Browser) -> None:
    with FakeOllama(models=["llama3.1:8b"], loaded=["llama3.1:8b"]) as fake:
        with LiveHearth(hub_settings(fake.url)) as hearth:
            chat(hearth.url, new_key(hearth, "family"), "count my tokens please")
            context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
            try:
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)
                log_in_with_password(page, hearth.url)
                page.goto(hearth.url + "/hub/usage?since=24h")
                charts = page.locator("figure.chart svg")
                expect(charts).to_have_count(5)  # over time: tokens, cost; per tenant, per model; cloud
                expect(page.locator("figure.chart").first).to_contain_text("family")
                width = page.evaluate("document.documentElement.scrollWidth")
                assert width <= 390, "the page scrolls sideways on a phone"
                box = charts.first.bounding_box()
                assert box is not None and box["width"] <= 390
                shot(page, "20-usage-phone")
            finally:
                context.close()


def test_an_admin_reads_a_stored_prompt_and_replays_it_but_never_on_the_cloud_for_a_local_only_tenant(
    page: Page,
) -> None:
    with FakeOllama(models=["llama3.1:8b", "phi4:14b"]) as fake, FakeOpenAI(models=["gpt-x"]) as cloud:
        settings = make_settings(
            [
                {"name": "local", "kind": "ollama", "url": fake.url},
                {"name": "cloud", "kind": "openai", "url": cloud.url + "/v1", "cloud": True},
            ],
            auth={"trusted_networks": {}},
            tenants={"health": {"store_content": True, "local_only": True}},
            hub={"admins": {"admin": hash_password(PASSWORD)}},
        )
        with LiveHearth(settings) as hearth:
            assert chat(hearth.url, new_key(hearth, "health"), "how did I sleep") == "echo: how did I sleep"
            log_in_with_password(page, hearth.url)
            page.click("nav >> text=Traces")
            page.locator("a.trace-link").first.click()
            expect(page.locator("#request")).to_contain_text('"content": "how did I sleep"')
            expect(page.locator("#response")).to_have_text("echo: how did I sleep")

            page.select_option("#replay-model", "phi4:14b")
            page.click("#replay")
            expect(page.locator("#replayed")).to_contain_text("phi4:14b on local")
            expect(page.locator("#replayed pre")).to_have_text("echo: how did I sleep")
            shot(page, "08-replayed")
            assert [r.json["model"] for r in fake.requests_to("/api/chat")] == ["llama3.1:8b", "phi4:14b"]

            page.select_option("#replay-model", "gpt-x")
            page.click("#replay")
            expect(page.locator("#replay-error")).to_be_visible()
            assert cloud.requests_to("/v1/chat/completions") == []


def test_an_admin_edits_a_tenants_limits_and_the_next_request_obeys(page: Page) -> None:
    with FakeOllama(models=["llama3.1:8b"], loaded=["llama3.1:8b"]) as fake:
        with LiveHearth(hub_settings(fake.url)) as hearth:
            family = new_key(hearth, "family")
            log_in_with_password(page, hearth.url)
            page.goto(hearth.url + "/hub/tenants")
            section = page.locator("#tenant-family")
            section.locator("input[name=rpm]").fill("1")
            section.locator("input[name=tokens_per_day]").fill("abc")
            section.locator(".save-limits").click()
            expect(page.locator("p.error")).to_contain_text("tokens_per_day")
            assert hearth.app.state.auth.tenants.effective_limits("family")["overridden"] == []

            section.locator("input[name=rpm]").fill("1")
            section.locator(".save-limits").click()
            expect(page.locator("p.notice")).to_contain_text("Limits of family saved")
            expect(section.locator(".badge")).to_have_text("set here")
            shot(page, "09-limits")
            assert chat(hearth.url, family, "first") == "echo: first"
            with pytest.raises(ollama.ResponseError) as refused:
                chat(hearth.url, family, "second in the same minute")
            assert refused.value.status_code == 429

            section.locator(".reset-limits").click()
            expect(page.locator("p.notice")).to_contain_text("Limits of family saved")
            expect(section.locator("input[name=rpm]")).to_have_value("")
            assert chat(hearth.url, family, "third") == "echo: third"
