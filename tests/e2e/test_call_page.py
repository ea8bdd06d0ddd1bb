"""The call page tells the truth, in Chromium against the real app, calls layer and store with the
fake engines (no model: seconds a test). A reply is shown as the caller heard it whatever order
its events arrive in; a hang-up is stored as one and a peer that just goes is not; the console
stays clean (no favicon 404 either)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import FakeServer, write_wav
from tests.transport.client import tone
from voiceagent.store import CallRecord
from voiceagent.testing.fakes import REPLY_TOKENS

pytestmark = [pytest.mark.integration, pytest.mark.browser]

REPLY = "".join(REPLY_TOKENS)
SENTENCES = ["Sure, here is an answer.", "That is all."]

TRANSCRIPT = """() => [...document.querySelectorAll('#transcript li')].map(li => ({
  who: li.firstChild.textContent, text: li.querySelector('.said').textContent,
  interrupted: li.classList.contains('interrupted'), title: li.title}))"""


def voice(seconds: float) -> bytes:
    """Any voice is a question to the fake engines (AnyVoiceASR)."""
    return tone(300.0, seconds, 16_000, amplitude=0.5)


async def open_page(launch_browser: Any, url: str, mic: Path) -> tuple[Any, list[str]]:
    """The page at ``url`` and what went wrong in it: console errors, uncaught exceptions,
    requests answered 4xx/5xx."""
    page = await (await launch_browser(mic)).new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"exception: {e}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    await page.goto(url)
    return page, problems


async def start_call(launch_browser: Any, server: FakeServer, mic: Path, user: str) -> tuple[Any, list[str]]:
    page, problems = await open_page(launch_browser, f"{server.base}/call?ec=0&autostart=1&user={user}", mic)
    await page.wait_for_function("() => window.__va.callState === 'connected'", timeout=20_000)
    await page.wait_for_function("() => window.__va.channel.readyState === 'open'", timeout=10_000)
    return page, problems


async def stored_end(server: FakeServer, call_id: str) -> CallRecord:
    async with asyncio.timeout(20):  # a deadline: the end is stored within ~0.1 s
        while (call := await server.runtime.store.get_call(call_id)).ended_at is None:
            await asyncio.sleep(0.05)
    return call


def reply_orders() -> list[list[dict[str, Any]]]:
    """Every order of an interrupted reply's events, its sentences kept in order (the channel is
    ordered, but "turn" and "interrupted" are separate messages the server may send either way)."""
    heard = "Sure, here is"
    said = [{"kind": "agent_text", "index": 1, "at_s": 2.0, "text": s} for s in SENTENCES]
    cut = {"kind": "interrupted", "index": 1, "at_s": 3.0, "heard": heard}
    turn = {
        "kind": "turn", "index": 1, "at_s": 3.0, "user_text": "Hi?", "agent_text": REPLY,
        "agent_text_heard": heard, "interrupted": True, "metrics": {"voice_to_voice_s": 0.4},
    }  # fmt: skip
    orders = [
        list(o) for o in itertools.permutations([*said, cut, turn]) if o.index(said[0]) < o.index(said[1])
    ]
    assert len(orders) == 12
    return orders


async def test_an_interrupted_reply_shows_what_was_heard_whatever_the_order(
    fake_server: FakeServer, launch_browser: Any, tmp_path: Path
) -> None:
    page, problems = await open_page(
        launch_browser, f"{fake_server.base}/call", write_wav(tmp_path / "quiet.wav", [], 0.1, 0.1)
    )
    asked = {"kind": "transcript", "index": 1, "at_s": 1.0, "text": "Hi?", "final": True}
    second = [
        {"kind": "transcript", "index": 2, "at_s": 3.1, "text": "Wait.", "final": True},
        *({"kind": "agent_text", "index": 2, "at_s": 4.0, "text": s} for s in SENTENCES),
        {"kind": "turn", "index": 2, "at_s": 5.0, "user_text": "Wait.", "agent_text": REPLY,
         "agent_text_heard": REPLY, "interrupted": False, "metrics": {}},
    ]  # fmt: skip
    expected = [
        {"who": "You", "text": "Hi?", "interrupted": False, "title": ""},
        {"who": "Agent", "text": "Sure, here is", "interrupted": True, "title": f"Full reply: {REPLY}"},
        {"who": "You", "text": "Wait.", "interrupted": False, "title": ""},
        {"who": "Agent", "text": REPLY, "interrupted": False, "title": ""},
    ]
    for order in reply_orders():
        await page.reload()
        await page.evaluate(
            "ms => ms.forEach(m => window.__va.receive(JSON.stringify(m)))", [asked, *order, *second]
        )
        kinds = [e["kind"] for e in order]
        assert await page.evaluate(TRANSCRIPT) == expected, kinds
        assert await page.locator("#turns tr td:last-child").all_text_contents() == ["yes", "no"], kinds
    # A turn the caller resumed after a pause is sent again, whole: its line is replaced.
    resumed = [
        {"kind": "transcript", "index": 3, "at_s": 6.0, "text": "I was wondering", "final": True},
        {"kind": "transcript", "index": 3, "at_s": 7.0, "text": "I was wondering, whether", "final": False},
        {"kind": "transcript", "index": 3, "at_s": 8.0, "text": "I was wondering whether it rains?",
         "final": True},
    ]  # fmt: skip
    resumed[1:1] = [  # an answer begun for the first part, dropped when the caller went on
        {"kind": "agent_text", "index": 3, "at_s": 6.5, "text": "I see."},
        {"kind": "reply_discarded", "index": 3, "at_s": 6.6, "reason": "caller_went_on",
         "llm_deltas": 3, "tts_audio_s": 0.5, "busy_s": 0.4},
    ]  # fmt: skip
    resumed.append({"kind": "agent_text", "index": 3, "at_s": 9.0, "text": "No rain today."})
    await page.evaluate("ms => ms.forEach(m => window.__va.receive(JSON.stringify(m)))", resumed)
    lines = await page.evaluate(TRANSCRIPT)
    assert lines[len(expected) :] == [
        {"who": "You", "text": "I was wondering whether it rains?", "interrupted": False, "title": ""},
        {"who": "Agent", "text": "No rain today.", "interrupted": False, "title": ""},
    ]
    assert await page.locator("#transcript li.partial").count() == 0
    assert problems == []


async def test_a_real_barge_in_is_shown_as_heard_and_the_hang_up_stored_as_one(
    fake_server: FakeServer, launch_browser: Any, tmp_path: Path
) -> None:
    # A question, then the caller talks over the reply ~1 s into it (the fakes answer in ~0.5 s
    # and speak for ~2 s); the interruption is a question too, answered in full.
    mic = write_wav(tmp_path / "barge-in.wav", [(voice(0.8), 1.2), (voice(1.5), 0.0)], 2.0, 30.0)
    page, problems = await start_call(launch_browser, fake_server, mic, "page-barge-in")
    await page.wait_for_function(
        "() => window.__va.events.some(e => e.kind === 'turn' && !e.interrupted)", timeout=30_000
    )
    events: list[dict[str, Any]] = await page.evaluate("() => window.__va.events")
    [cut] = [e for e in events if e["kind"] == "turn" and e["interrupted"]]
    assert cut["agent_text"] == REPLY and cut["agent_text_heard"] != REPLY
    assert [e["heard"] for e in events if e["kind"] == "interrupted"] == [cut["agent_text_heard"]]
    agent_lines = [line for line in await page.evaluate(TRANSCRIPT) if line["who"] == "Agent"]
    assert agent_lines == [
        {
            "who": "Agent",
            "text": cut["agent_text_heard"],
            "interrupted": True,
            "title": f"Full reply: {REPLY}",
        },
        {"who": "Agent", "text": REPLY, "interrupted": False, "title": ""},
    ]

    call_id = await page.evaluate("() => window.__va.callId")
    await page.click("#hangup")
    await page.wait_for_function("() => window.__va.callState === 'ended'", timeout=10_000)
    assert (await stored_end(fake_server, call_id)).end_reason == "hangup"
    assert problems == []


@pytest.mark.parametrize(("tab_closed", "stored"), [(True, "hangup"), (False, "connection-closed")])
async def test_a_hang_up_is_told_from_a_peer_that_just_goes(
    fake_server: FakeServer, launch_browser: Any, tmp_path: Path, tab_closed: bool, stored: str
) -> None:
    """The race a hang-up once lost (the peer's close reaching the server before the DELETE),
    at its worst: the DELETE never lands. Only what the page said on the channel decides."""
    mic = write_wav(tmp_path / "quiet.wav", [], 0.1, 30.0)
    page, _ = await start_call(launch_browser, fake_server, mic, "page-hang-up")
    call_id = await page.evaluate("() => window.__va.callId")
    await page.route("**/api/calls/*", lambda route: route.abort())
    if tab_closed:
        await page.close()  # pagehide: the page says "hangup" and its peer closes at once
    else:
        await page.evaluate("() => window.__va.pc.close()")  # gone without a word
    assert (await stored_end(fake_server, call_id)).end_reason == stored
