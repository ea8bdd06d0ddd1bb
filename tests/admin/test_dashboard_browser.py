"""The dashboard in Chromium against the real app, calls layer, store and outreach (fake engines:
no model to load): an operator logs in, watches a call placed from a second page appear and its
transcript grow, sends an ask that the caller hears, and sees the charts drawn from real turns;
strangers, forged CSRF tokens, password guessers and viewers are refused. Screenshots of every
page (desktop and phone width) are kept in ``.run/test-artifacts/admin`` (not committed)."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import FakeServer, write_wav
from tests.transport.client import tone
from voiceagent.auth.accounts import Role, create_user
from voiceagent.config import REPO_ROOT
from voiceagent.store import NewTurn, Store

pytestmark = [pytest.mark.integration, pytest.mark.browser]

PASSWORD = "correct horse battery"
SHOTS = Path(os.environ.get("VA_ARTIFACTS_DIR", REPO_ROOT / ".run" / "test-artifacts")) / "admin"
PROMPT = "Did your parcel arrive?"
HOSTILE = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>\' OR 1=1 --'
# Chromium logs every 4xx it is answered with; the refusals below are meant.
EXPECTED_REFUSALS = (
    "Failed to load resource: the server responded with a status of",
    "Error during WebSocket handshake: Unexpected response code: 403",
)


def _mic(path: Path, questions: int) -> Path:
    """A caller who asks ``questions`` questions (any voice is one to the fake engines), 4 s apart."""
    return write_wav(path, [(tone(300.0, 0.8, 16_000, amplitude=0.5), 4.0)] * questions, 1.0, 60.0)


async def _page(browser: Any, width: int = 1280) -> tuple[Any, list[str]]:
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(m.text)
            if m.type == "error" and not any(refusal in m.text for refusal in EXPECTED_REFUSALS)
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"exception: {e}"))
    return page, problems


async def _log_in(page: Any, base: str, name: str) -> None:
    await page.goto(f"{base}/admin")
    await page.wait_for_url("**/admin/login")  # not signed in: sent to the login page
    await page.fill('[data-testid="login-form"] [name="username"]', name)
    await page.fill('[data-testid="login-form"] [name="password"]', PASSWORD)
    await page.press('[data-testid="login-form"] [name="password"]', "Enter")
    await page.wait_for_selector('[data-testid="live-status"]:has-text("live")', timeout=15_000)


async def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.wait_for_timeout(300)  # the live socket keeps the network busy: no "networkidle"
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def test_an_operator_watches_a_call_live_and_reaches_the_caller(
    fake_server: FakeServer, launch_browser: Any, tmp_path: Path
) -> None:
    base = fake_server.base
    await create_user(fake_server.runtime.database, "otto", PASSWORD, Role.OPERATOR)
    browser = await launch_browser(_mic(tmp_path / "caller.wav", questions=2))  # then quiet
    admin, problems = await _page(browser)

    # A stranger opening the dashboard is sent to the login page without asking the API (so no
    # 401 in the console); the API and the live socket refuse it.
    console: list[str] = []
    admin.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    await admin.goto(f"{base}/admin#/calls")
    await admin.wait_for_url(f"{base}/admin/login", timeout=10_000)
    await admin.wait_for_selector('[data-testid="login-form"]')
    assert console == []
    refused = await admin.evaluate(
        """async () => {
          const api = (await fetch('/api/admin/overview')).status;
          const socket = await new Promise(done => {
            const ws = new WebSocket(`ws://${location.host}/api/admin/live`);
            ws.onopen = () => done('open'); ws.onclose = () => done('refused');
          });
          return [api, socket];
        }"""
    )
    assert refused == [401, "refused"]
    await _shot(admin, "login")

    await _log_in(admin, base, "otto")
    await admin.wait_for_selector('[data-testid="calls-table"]')  # back where the stranger began
    assert admin.url.endswith("/admin#/calls")
    await admin.click('[data-testid="nav-overview"]')
    await admin.wait_for_selector('[data-testid="overview-live-calls"]')
    await _shot(admin, "overview-empty")

    # A call placed from a second page appears live, and its transcript grows as it goes.
    caller = await (await browser.new_context()).new_page()
    await caller.goto(f"{base}/call?ec=0&autostart=1&user=ann")
    await caller.wait_for_function(
        "() => window.__va && window.__va.callState === 'connected'", timeout=20_000
    )
    await admin.click('[data-testid="nav-calls"]')
    row = admin.locator('[data-testid="calls-table"] [data-call-id]').first
    await row.wait_for(timeout=20_000)
    call_id = await row.get_attribute("data-call-id")
    assert call_id in fake_server.runtime.calls.sessions
    await admin.goto(f"{base}/admin#/calls/{call_id}")
    turns = admin.locator('[data-testid="call-transcript"] [data-turn-index]')
    await turns.first.wait_for(timeout=30_000)
    seen_first = await turns.count()
    async with asyncio.timeout(40):  # the caller's second question comes ~5 s after the first
        while await turns.count() < max(2, seen_first + 1):
            await asyncio.sleep(0.2)
    await _shot(admin, "call-detail")

    # An ask sent from the dashboard is spoken in that call and heard.
    await admin.click('[data-testid="nav-outreach"]')
    form = admin.locator('[data-testid="outreach-form"]')
    await form.locator('[name="user_id"]').fill("ann")
    await form.locator('[name="type"]').select_option("ask")
    await form.locator('[name="text"]').fill(PROMPT)
    await form.locator('button[type="submit"]').click()
    status = admin.locator('[data-testid="outreach-table"] [data-event-id] [data-testid="outreach-status"]')
    await status.first.wait_for(timeout=10_000)
    try:
        async with asyncio.timeout(60):  # the prompt waits for a pause in the call, then plays
            while (await status.first.inner_text()).strip() not in ("heard", "acked"):
                await asyncio.sleep(0.2)
    except TimeoutError:
        items, _ = await fake_server.runtime.outreach.ledger.history()
        raise AssertionError(f"shown {await status.first.inner_text()!r}; ledger: {items}") from None
    await caller.wait_for_function(
        f"() => document.body.innerText.includes({PROMPT!r})", timeout=10_000
    )  # the caller's page shows what it heard
    await _shot(admin, "outreach")

    # Charts drawn from the call's real turns; the other pages render.
    await admin.click('[data-testid="nav-overview"]')
    await admin.wait_for_selector('[data-testid="chart-latency"][data-rendered="true"]', timeout=15_000)
    live_calls = await admin.locator('[data-testid="overview-live-calls"]').inner_text()
    assert live_calls.strip() == "1"
    await _shot(admin, "overview")
    for nav in ("users", "knowledge", "audit"):
        await admin.click(f'[data-testid="nav-{nav}"]')
        await admin.wait_for_selector(f'[data-testid="{nav}-table"]', timeout=10_000)
        await _shot(admin, nav)
    audit = await admin.locator("main").inner_text()
    assert "outreach.ask" in audit and "login" in audit
    action = admin.locator('[data-testid="audit-filters"] [name="action"]')
    await action.fill("outreach")
    await action.press("Enter")
    await admin.wait_for_function(
        """() => {
          const rows = [...document.querySelectorAll('[data-testid="audit-table"] [data-audit-id]')];
          return rows.length > 0 && rows.every(r => r.innerText.includes('outreach.ask'));
        }""",
        timeout=10_000,
    )
    assert "action=outreach" in admin.url  # the filter is in the address: a reload keeps it
    await _shot(admin, "audit-filtered")

    # A change with a forged CSRF token is refused even with a valid session cookie.
    forged = await admin.evaluate(
        """async () => (await fetch('/api/admin/outreach', {method: 'POST',
             headers: {'Content-Type': 'application/json', 'X-CSRF-Token': 'forged'},
             body: JSON.stringify({user_id: 'ann', type: 'greet', text: 'hi'})})).status"""
    )
    assert forged == 403

    # The keyboard reaches the navigation; a phone-sized screen does not scroll sideways.
    await admin.focus('[data-testid="nav-calls"]')
    await admin.keyboard.press("Enter")
    await admin.wait_for_selector('[data-testid="calls-table"]')
    await admin.set_viewport_size({"width": 375, "height": 812})
    for nav, shown in (
        ("overview", "overview-live-calls"),
        ("calls", "calls-table"),
        ("outreach", "outreach-table"),
    ):
        await admin.goto(f"{base}/admin#/{nav}")
        await admin.wait_for_selector(f'[data-testid="{shown}"]', timeout=10_000)
        overflow = await admin.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (nav, overflow)
        await _shot(admin, f"{nav}-phone")
    assert problems == []
    await caller.evaluate("() => window.__hangup && window.__hangup()")


async def test_viewers_cannot_send_and_password_guessing_is_stopped(
    fake_server: FakeServer, launch_browser: Any, tmp_path: Path
) -> None:
    base = fake_server.base
    database = fake_server.runtime.database
    await create_user(database, "vera", PASSWORD, Role.VIEWER)
    await create_user(database, "otto", PASSWORD, Role.OPERATOR)
    browser = await launch_browser(_mic(tmp_path / "quiet.wav", questions=0))

    viewer, problems = await _page(browser)
    await _log_in(viewer, base, "vera")
    await viewer.click('[data-testid="nav-outreach"]')
    await viewer.wait_for_selector('[data-testid="outreach-table"], [data-testid="outreach-viewer-note"]')
    assert await viewer.locator('[data-testid="outreach-form"]').count() == 0
    sent = await viewer.evaluate(
        """async () => {
          const session = await (await fetch('/api/admin/session')).json();
          const response = await fetch('/api/admin/outreach', {method: 'POST',
            headers: {'Content-Type': 'application/json', 'X-CSRF-Token': session.csrf_token},
            body: JSON.stringify({user_id: 'ann', type: 'greet', text: 'hi'})});
          return [session.role, response.status, (await response.json()).detail];
        }"""
    )
    assert sent == ["viewer", 403, "needs the operator role, not viewer"]
    await _shot(viewer, "outreach-viewer")

    # What callers say is shown as text: markup in a transcript or a user id never runs.
    store = Store(database)
    await store.touch_user("mallory")
    call = await store.start_call("mallory", "node-x", call_id="hostile")
    now = datetime.now(UTC)
    await store.add_turn(call.id, NewTurn(started_at=now, user_text=HOSTILE, agent_text="<b>bold?</b>"))
    await viewer.goto(f"{base}/admin#/calls/hostile")
    await viewer.wait_for_selector('[data-testid="call-transcript"] [data-turn-index]')
    shown = await viewer.locator('[data-testid="call-transcript"]').inner_text()
    assert HOSTILE in shown and "<b>bold?</b>" in shown
    await viewer.goto(f"{base}/admin#/calls?q=%3Cimg")
    await viewer.wait_for_selector('[data-testid="calls-table"] [data-call-id="hostile"]')
    assert await viewer.evaluate("() => window.__xss") is None
    assert problems == []

    guesser, _ = await _page(browser)
    await guesser.goto(f"{base}/admin/login")
    error = guesser.locator('[data-testid="login-error"]')
    for attempt in range(6):
        await guesser.fill('[name="username"]', "otto")
        await guesser.fill('[name="password"]', f"guess number {attempt}")
        await guesser.press('[name="password"]', "Enter")
        await error.wait_for()
        await guesser.wait_for_function(
            "() => document.querySelector('[data-testid=\"login-error\"]').textContent.trim() !== ''"
        )
        text = (await error.inner_text()).strip()
        if "too many" in text:
            break
        assert "wrong user name or password" in text
        await guesser.evaluate(
            "() => document.querySelector('[data-testid=\"login-error\"]').textContent = ''"
        )
    assert attempt == 5 and "too many failed logins" in text  # the 6th try, after 5 failures
    # Now even the right password waits: the account is locked for the window.
    await guesser.fill('[name="password"]', PASSWORD)
    await guesser.press('[name="password"]', "Enter")
    await guesser.wait_for_timeout(500)
    assert "/admin/login" in guesser.url and "too many" in await error.inner_text()
    await _shot(guesser, "login-rate-limited")
