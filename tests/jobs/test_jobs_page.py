"""The /jobs page in Chromium against the real app and store (fake engines, the store-polled queue;
no worker: the test moves each job along through the JobStore as a worker would). An operator is
sent to the login page and back, submits a text, watches its progress bar move and downloads the
result; cancels a queued job; sees why a refused text failed; uploads a file to transcribe; and the
page works by keyboard and at phone width, without console errors. Screenshots are kept in
``.run/test-artifacts/jobs`` (not committed)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.admin.test_dashboard_browser import PASSWORD, _page
from tests.e2e.conftest import FakeServer, write_wav
from tests.e2e.conftest import fake_server as fake_server
from tests.e2e.conftest import launch_browser as launch_browser
from voiceagent.auth.accounts import Role, create_user
from voiceagent.config import REPO_ROOT
from voiceagent.jobs.schemas import Claim, ResultFile
from voiceagent.jobs.store import JobStore

pytestmark = [pytest.mark.integration, pytest.mark.browser]

SHOTS = Path(os.environ.get("VA_ARTIFACTS_DIR", REPO_ROOT / ".run" / "test-artifacts")) / "jobs"
WAV = b"RIFF" + bytes(range(256)) * 64
OPUS = b"OggS" + bytes(range(200)) * 10


async def _shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.wait_for_timeout(200)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _card(page: Any, job_id: str) -> Any:
    return page.locator(f'[data-testid="job"][data-job-id="{job_id}"]')


async def _submit_text(page: Any, text: str) -> str:
    """Submit a text from the form; the id of the job that appears at the top of the list."""
    before = await page.locator('[data-testid="job"]').count()
    await page.fill('[data-testid="text"]', text)
    await page.click('[data-testid="submit-synthesize"]')
    await page.wait_for_function(
        f"() => document.querySelectorAll('[data-testid=\"job\"]').length > {before}", timeout=10_000
    )
    return str(await page.locator('[data-testid="job"]').first.get_attribute("data-job-id"))


async def _status(page: Any, job_id: str, status: str) -> None:
    await page.wait_for_selector(
        f'[data-testid="job"][data-job-id="{job_id}"][data-status="{status}"]', timeout=10_000
    )


async def test_an_operator_submits_follows_downloads_and_cancels_jobs(
    fake_server: FakeServer, launch_browser: Any, tmp_path: Path
) -> None:
    base = fake_server.base
    store: JobStore = fake_server.runtime.jobs.store
    await create_user(fake_server.runtime.database, "otto", PASSWORD, Role.OPERATOR)
    browser = await launch_browser(write_wav(tmp_path / "silence.wav", [], 0.1, 0.1))
    page, problems = await _page(browser)

    # Signed out: sent to the login page, and back to /jobs after logging in.
    await page.goto(f"{base}/jobs")
    await page.wait_for_url("**/admin/login")
    await page.fill('[data-testid="login-form"] [name="username"]', "otto")
    await page.fill('[data-testid="login-form"] [name="password"]', PASSWORD)
    await page.press('[data-testid="login-form"] [name="password"]', "Enter")
    await page.wait_for_url("**/jobs")
    await page.wait_for_selector("#app")  # shown once the session is known
    await page.wait_for_selector('#text-count:has-text("/ 100,000 characters")')
    await _shot(page, "empty")

    # A text: the job appears queued, its bar moves as the worker reports, its files download.
    await page.fill('[data-testid="text"]', "Hello there.")
    assert await page.text_content('[data-testid="text-count"]') == "12 / 100,000 characters"
    job_id = await _submit_text(page, "Hello there. This page reads jobs as they run.")
    await _status(page, job_id, "queued")
    assert await page.input_value('[data-testid="text"]') == ""  # the form is ready for the next
    claim = await store.claim(job_id, "browser-test-worker", 30.0)
    assert isinstance(claim, Claim)
    await store.heartbeat(claim, 30.0, progress=0.4, note="sentence 1 of 2")
    await _status(page, job_id, "running")
    card = _card(page, job_id)
    await page.wait_for_function(
        """id => document.querySelector(`[data-job-id="${id}"] [data-testid="job-progress"]`).value === 40""",
        arg=job_id,
        timeout=10_000,
    )
    assert await card.locator('[data-testid="job-percent"]').text_content() == "40%"
    assert await card.locator('[data-testid="job-note"]').text_content() == "sentence 1 of 2"
    await _shot(page, "running")

    files = []
    for name, media_type, data in (("audio.wav", "audio/wav", WAV), ("audio.opus", "audio/ogg", OPUS)):
        size = await store.write_file(claim, name, _one(data))
        files.append(ResultFile(name=name, media_type=media_type, bytes=size))
    assert await store.succeed(claim, files, {"duration_s": 1.2}, ttl_s=3600.0)
    await _status(page, job_id, "succeeded")
    links = card.locator('[data-testid="job-download"]')
    assert [await links.nth(i).text_content() for i in range(2)] == ["Audio WAV 16 KB", "Audio Opus 2.0 KB"]
    assert await card.locator('[data-testid="job-progress"]').is_hidden()
    async with page.expect_download() as downloading:
        await card.locator('[data-file="audio.wav"]').click()
    download = await downloading.value
    assert download.suggested_filename == f"{job_id}-audio.wav"
    assert await asyncio.to_thread(Path(await download.path()).read_bytes) == WAV
    await _shot(page, "succeeded")

    # A queued job is cancelled from the page, by keyboard.
    queued = await _submit_text(page, "Nobody will ever hear this one.")
    await _status(page, queued, "queued")
    await _card(page, queued).locator('[data-testid="job-cancel"]').focus()
    await page.keyboard.press("Enter")
    await _status(page, queued, "cancelled")
    cancelled = await store.get(queued)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert await _card(page, queued).locator('[data-testid="job-cancel"]').is_hidden()

    # A text with nothing to speak is refused: the form says why, the failed job shows its reason.
    refused = await _submit_text(page, "?! ... :-)")
    await _status(page, refused, "failed")
    message = await page.text_content('[data-testid="form-message"]')
    assert message is not None and message.startswith("Refused: the text has no words to speak (no letters")
    problem = await _card(page, refused).locator('[data-testid="job-problem"]').text_content()
    assert problem is not None and problem.startswith("the text has no words to speak: no letters or digits")
    await _shot(page, "refused")

    # A file to transcribe: the keyboard switches the form, the upload becomes a queued job.
    await page.focus('[data-testid="choose-synthesize"]')
    await page.keyboard.press("ArrowDown")
    await page.wait_for_selector('[data-testid="transcribe-form"]:visible')
    await page.set_input_files('[data-testid="audio"]', str(write_wav(tmp_path / "call.wav", [], 0.5, 0.5)))
    await page.click('[data-testid="submit-transcribe"]')
    upload = page.locator('[data-testid="job"]').first
    await page.wait_for_selector('[data-testid="job"]:first-child:has-text("call.wav")', timeout=10_000)
    upload_id = str(await upload.get_attribute("data-job-id"))
    uploaded = await store.get(upload_id)
    assert uploaded is not None and (uploaded.kind, uploaded.input_name) == ("transcribe", "call.wav")
    assert b"".join([c async for c in store.read_input(upload_id)]) == (tmp_path / "call.wav").read_bytes()

    # Opened again, the page lists every job, newest first, and fits a phone's width.
    await page.reload()
    await page.wait_for_selector(f'[data-job-id="{job_id}"][data-status="succeeded"]')
    shown = await page.locator('[data-testid="job"]').evaluate_all("cards => cards.map(c => c.dataset.jobId)")
    assert shown == [upload_id, refused, queued, job_id]
    await page.set_viewport_size({"width": 375, "height": 812})
    overflow = await page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, overflow
    await _shot(page, "phone")
    # The CSP allows no inline style (Playwright's own input handling leaves empty ones).
    styled = await page.evaluate("() => document.querySelectorAll('[style]:not([style=\"\"])').length")
    assert styled == 0
    assert problems == []


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
