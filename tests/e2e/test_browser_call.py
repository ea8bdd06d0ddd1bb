"""A person's call, for real: Chromium with a wav as its microphone talks to `voiceagent serve`
(Silero, Whisper, SmolLM2, Piper all real); what the browser hears is transcribed again."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import Server, write_mic_wav
from tests.engines.conftest import word_error_rate
from voiceagent.config import StoreSettings
from voiceagent.engines.asr.whisper import WhisperASR
from voiceagent.engines.audio import float_to_pcm16, resample
from voiceagent.engines.settings import ASRSettings
from voiceagent.store import Database, Store

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.browser]

# Records what the browser plays (the remote track), with a level per block and when the
# "interrupted" event arrived, all on the page's clock.
CAPTURE = """() => {
  const receiver = window.__va.pc.getReceivers().find(r => r.track && r.track.kind === 'audio');
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(new MediaStream([receiver.track]));
  const node = ctx.createScriptProcessor(2048, 1, 1);
  window.__cap = {rate: ctx.sampleRate, chunks: [], levels: [], interruptedAt: null};
  node.onaudioprocess = (e) => {
    const data = e.inputBuffer.getChannelData(0);
    window.__cap.chunks.push(Float32Array.from(data));
    let sum = 0; for (const v of data) sum += v * v;
    window.__cap.levels.push([performance.now(), Math.sqrt(sum / data.length)]);
  };
  source.connect(node); node.connect(ctx.destination);
  setInterval(() => {
    if (window.__cap.interruptedAt === null && window.__va.events.some(e => e.kind === 'interrupted'))
      window.__cap.interruptedAt = performance.now();
  }, 5);
}"""

COLLECT = """() => {
  const n = window.__cap.chunks.reduce((a, c) => a + c.length, 0);
  const pcm = new Int16Array(n); let i = 0;
  for (const c of window.__cap.chunks) for (const v of c) pcm[i++] = Math.max(-1, Math.min(1, v)) * 32767;
  const bytes = new Uint8Array(pcm.buffer); let s = '';
  for (let j = 0; j < bytes.length; j += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(j, j + 0x8000));
  }
  const cap = window.__cap;
  return {rate: cap.rate, b64: btoa(s), levels: cap.levels, interruptedAt: cap.interruptedAt};
}"""


async def start_call(launch_browser: Any, server: Server, wav: Path, user: str) -> Any:
    browser = await launch_browser(wav)
    page = await browser.new_page()
    await page.goto(f"{server.base}/call?ec=0&autostart=1&user={user}")
    await page.wait_for_function(
        "() => window.__va && window.__va.pc && window.__va.pc.connectionState === 'connected'",
        timeout=20_000,
    )
    await page.evaluate(CAPTURE)
    return page


async def wait_for_event(page: Any, predicate_js: str, timeout_s: float) -> list[dict[str, Any]]:
    await page.wait_for_function(
        f"() => window.__va.events.some(e => {predicate_js})", timeout=timeout_s * 1000
    )
    events: list[dict[str, Any]] = await page.evaluate("() => window.__va.events")
    return events


async def transcribe(received: dict[str, Any], tmp_path: Path) -> str:
    samples = np.frombuffer(base64.b64decode(received["b64"]), dtype="<i2").astype(np.float32) / 32768
    audio = resample(samples, int(received["rate"]), 16_000)
    asr = WhisperASR(ASRSettings(cache_dir=str(tmp_path / "models")))
    try:
        return (await asr.transcribe(float_to_pcm16(audio))).text
    finally:
        asr.close()


async def test_a_spoken_question_gets_a_spoken_answer(
    server: str, launch_browser: Any, tmp_path: Path
) -> None:
    question = "Hello, can you tell me what the weather is like today?"
    wav = write_mic_wav(tmp_path / "question.wav", [(question, 0.0)])
    page = await start_call(launch_browser, server, wav, "e2e-alice")

    events = await wait_for_event(page, "e.kind === 'turn'", timeout_s=60)
    await asyncio.sleep(1.0)  # the last audio is still on its way to the browser
    finals = [e["text"] for e in events if e["kind"] == "transcript" and e["final"]]
    assert finals and word_error_rate(question, finals[0]) <= 0.2, finals
    [turn] = [e for e in events if e["kind"] == "turn"]
    assert turn["agent_text"].strip() and not turn["interrupted"]
    assert turn["metrics"]["voice_to_voice_s"] is not None
    assert [e["state"] for e in events if e["kind"] == "state"][:2] == ["thinking", "speaking"]

    stats = await page.evaluate(
        "async () => { const s = await window.__va.pc.getStats(); let e = 0;"
        " s.forEach(r => { if (r.type === 'inbound-rtp' && r.kind === 'audio') e = r.totalAudioEnergy; });"
        " return e; }"
    )
    assert stats > 0, "the browser received no audio energy"
    heard = await transcribe(await page.evaluate(COLLECT), tmp_path)
    assert word_error_rate(turn["agent_text"], heard) <= 0.35, (turn["agent_text"], heard)

    # Hanging up ends the call; the store has it, with the turn as the user heard it.
    call_id = await page.evaluate("() => window.__va.callId")
    await page.evaluate("() => window.__hangup()")
    database = Database(StoreSettings(url=server.store_url))
    try:
        for _ in range(50):
            stored = await Store(database).get_call(call_id)
            if stored.ended_at is not None:
                break
            await asyncio.sleep(0.1)
        assert stored.user_id == "e2e-alice" and stored.end_reason is not None
        [stored_turn] = stored.turns
        assert stored_turn.user_text == finals[0] and stored_turn.agent_text_heard == turn["agent_text_heard"]
        assert stored_turn.metrics.voice_to_voice_s == pytest.approx(turn["metrics"]["voice_to_voice_s"])
    finally:
        await database.close()


async def test_talking_over_the_agent_stops_it(server: Server, launch_browser: Any, tmp_path: Path) -> None:
    wav = write_mic_wav(
        tmp_path / "barge-in.wav",
        [("Tell me a long story about a brave little dragon who lived in the mountains.", 4.0),
         ("Stop. Please stop talking now.", 0.0)],
    )  # fmt: skip
    page = await start_call(launch_browser, server, wav, "e2e-bob")
    events = await wait_for_event(page, "e.kind === 'interrupted'", timeout_s=60)
    await asyncio.sleep(1.0)
    received = await page.evaluate(COLLECT)
    first_turn = await wait_for_event(page, "e.kind === 'turn'", timeout_s=10)
    [interrupted_turn, *_] = [e for e in first_turn if e["kind"] == "turn"]
    assert interrupted_turn["interrupted"]
    assert len(interrupted_turn["agent_text_heard"]) <= len(interrupted_turn["agent_text"])
    assert [e for e in events if e["kind"] == "interrupted"]

    # The agent's voice stops: the browser's level falls to silence soon after the event.
    at = received["interruptedAt"]
    after = [level for t, level in received["levels"] if at + 300 <= t <= at + 700]
    before = [level for t, level in received["levels"] if at - 1500 <= t <= at - 100]
    assert max(before) > 0.01, "the agent was not audible before the interruption"
    assert after and max(after) < 0.005, after
