"""The agent speaks first, for real: a caller in Chromium sits quietly in a live call, an operator
sends a prompt (`POST /api/outreach`), the browser hears it (its received audio, transcribed, is
the prompt), the event ends `acked`, and the caller's spoken answer is answered in turn."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, write_mic_wav
from tests.e2e.test_browser_call import COLLECT, start_call, transcribe, wait_for_event, wait_quiet
from tests.engines.conftest import word_error_rate
from tests.outreach.stages import assert_delivered_once

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.browser]

PROMPT = "Hello, this is Ava from the shop. Did your parcel arrive?"
ANSWER = "Yes, it arrived yesterday. Thank you for asking."
ANSWER_AFTER_S = 14.0  # the caller is quiet this long (the prompt plays meanwhile), then answers


async def test_a_caller_hears_the_prompt_and_the_answer_is_answered(
    server: Server, launch_browser: Any, tmp_path: Path
) -> None:
    wav = write_mic_wav(tmp_path / "answer.wav", [(ANSWER, 0.0)], lead_s=ANSWER_AFTER_S)
    page = await start_call(launch_browser, server, wav, "e2e-parcel")
    async with httpx.AsyncClient(base_url=server.base, timeout=30, headers=server.operator) as http:
        async with asyncio.timeout(30):  # the call is registered as it starts
            while not any(c["user_id"] == "e2e-parcel" for c in (await http.get("/api/calls")).json()):
                await asyncio.sleep(0.1)
        sent = await http.post("/api/outreach", json={"user_id": "e2e-parcel", "type": "ask", "text": PROMPT})
        assert sent.status_code == 202, sent.text
        event_id = sent.json()["event_id"]

        events = await wait_for_event(page, "e.kind === 'turn' && e.initiator === 'agent'", timeout_s=60)
        await wait_quiet(page)
        [prompt] = [e for e in events if e["kind"] == "turn" and e["initiator"] == "agent"]
        assert (prompt["event_id"], prompt["agent_text_heard"]) == (event_id, PROMPT)
        heard = await transcribe(await page.evaluate(COLLECT), tmp_path)
        assert word_error_rate(PROMPT, heard) <= 0.35, heard

        async with asyncio.timeout(30):  # acked once heard
            while (record := (await http.get(f"/api/outreach/{event_id}")).json())["status"] != "acked":
                await asyncio.sleep(0.2)
        stages = [s["stage"] for s in record["stages"]]
        assert_delivered_once(stages)

    events = await wait_for_event(page, "e.kind === 'turn' && e.initiator === 'user'", timeout_s=90)
    [answer] = [e for e in events if e["kind"] == "turn" and e["initiator"] == "user"]
    assert word_error_rate(ANSWER, answer["user_text"]) <= 0.3, answer["user_text"]
    assert answer["agent_text"].strip()  # the conversation goes on from the prompt
    await page.evaluate("() => window.__hangup()")
