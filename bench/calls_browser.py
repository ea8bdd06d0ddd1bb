"""Browser-side call figures: voice-to-voice over 10 turns and barge-in stop latency."""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.calls_common import log, p50, speech
from bench.results import Metric, metric, percentile
from tests.e2e.browser import CHROMIUM, chromium_args
from voiceagent.pipeline.settings import ConversationSettings

AUDIBLE = 0.005  # rms of window.__va.levels (float audio, 5.3 ms window): the agent is heard
SILENT = 0.003  # below this for STOP_HOLD_MS = the agent stopped
STOP_HOLD_MS = 400
MIC_WINDOW = 1024  # the page's mic analyser fftSize (48 kHz)

QUESTIONS = [
    "What is the capital of France?",
    "How many days are in a week?",
    "What color is the sky?",
    "Who wrote Romeo and Juliet?",
    "What is two plus two?",
    "Name a fruit that is yellow.",
    "How many legs does a spider have?",
    "What is the opposite of hot?",
    "Which planet do we live on?",
    "What do bees make?",
]
BARGE_INS = [
    "Tell me a long story about a brave little dragon who lived in the mountains.",
    "Stop. Tell me a long story about a clever fox in a big forest instead.",
    "Stop. Tell me a long story about a pirate ship on a stormy sea instead.",
    "Stop. Tell me a long story about a robot who wanted to learn to dance instead.",
    "Stop. Tell me a long story about an old wizard and his cat instead.",
]


# -- audio helpers ------------------------------------------------------------------------------


def speech_bounds(pcm16: np.ndarray, rate: int = 16_000, threshold: float = 0.01) -> tuple[float, float]:
    """(first, last) 10 ms block whose rms is above ``threshold`` (float scale), in seconds."""
    block = rate // 100
    blocks = pcm16[: len(pcm16) // block * block].astype(np.float32).reshape(-1, block) / 32768
    loud = np.flatnonzero(np.sqrt((blocks**2).mean(axis=1)) > threshold)
    return loud[0] / 100, (loud[-1] + 1) / 100


@dataclass
class MicWav:
    path: Path
    audio48: np.ndarray  # float32
    segments: list[tuple[float, float]]  # (speech start, speech end) of each utterance, wav seconds
    duration_s: float


def write_wav(
    path: Path, texts: list[str], pause_s: float, lead_s: float = 1.0, tail_s: float = 6.0
) -> MicWav:
    """Like tests/e2e/conftest.write_mic_wav, but remembering where each utterance's speech is."""
    pieces = [np.zeros(int(lead_s * 16_000), dtype="<i2")]
    segments = []
    at = lead_s
    for i, text in enumerate(texts):
        pcm = speech(text)
        first, last = speech_bounds(pcm)
        segments.append((at + first, at + last))
        pause = np.zeros(int((pause_s if i < len(texts) - 1 else tail_s) * 16_000), dtype="<i2")
        pieces += [pcm, pause]
        at += (len(pcm) + len(pause)) / 16_000
    audio16 = np.concatenate(pieces).astype(np.float32)
    audio48 = np.interp(np.arange(len(audio16) * 3) / 3, np.arange(len(audio16)), audio16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(audio48.astype("<i2").tobytes())
    return MicWav(path, (audio48 / 32768).astype(np.float32), segments, len(audio48) / 48_000)


def fit_anchor(wav: MicWav, mic: list[list[float]]) -> tuple[float, float]:
    """Page time (ms, Date.now) of wav time 0, and the fit's correlation.

    The page samples its mic analyser (1024-sample window) every ~50 ms; the prediction for a
    sample at page time t and offset d is the rms of the wav's 1024 samples ending at t - d.
    Coarse d from the first onset, then the d (1 ms steps, +-250 ms) whose prediction correlates
    best with every sample of the call."""
    times = np.array([m[0] for m in mic], dtype=np.float64)
    levels = np.array([m[1] for m in mic], dtype=np.float64)
    cs = np.concatenate([[0.0], np.cumsum(wav.audio48.astype(np.float64) ** 2)])

    def predict(offset_ms: float) -> np.ndarray:
        end = np.clip(((times - offset_ms) / 1000 * 48_000).astype(np.int64), 0, len(wav.audio48))
        start = np.clip(end - MIC_WINDOW, 0, None)
        return np.sqrt(np.maximum(cs[end] - cs[start], 0) / MIC_WINDOW)

    loud = np.flatnonzero(levels > 0.01)
    if not len(loud):
        raise RuntimeError("the page's microphone level never rose: is the fake mic playing?")
    coarse = times[loud[0]] - wav.segments[0][0] * 1000
    best, best_r = coarse, -2.0
    for offset in np.arange(coarse - 250, coarse + 250, 1.0):
        r = float(np.corrcoef(predict(offset), levels)[0, 1])
        if r > best_r:
            best, best_r = float(offset), r
    return best, best_r


# -- browser ------------------------------------------------------------------------------------

PULL = """(since) => ({
  levels: window.__va.levels.filter(l => l[0] > since[0]),
  mic: window.__va.micLevels.filter(l => l[0] > since[1]),
  events: window.__va.events, times: window.__va.eventTimes, now: Date.now(),
})"""


async def browser_call(
    base: str, wav: MicWav, user: str, done: Callable[[list[dict[str, Any]]], bool]
) -> dict[str, Any]:
    """Play ``wav`` into a call; return the page's levels, mic levels, events and their times."""
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=chromium_args(wav.path),
        )
        try:
            page = await browser.new_page()
            await page.goto(f"{base}/call?ec=0&autostart=1&user={user}")
            await page.wait_for_function(
                "() => window.__va && window.__va.pc && window.__va.pc.connectionState === 'connected'",
                timeout=20_000,
            )
            levels: list[list[float]] = []
            mic: list[list[float]] = []
            started = time.monotonic()
            data: dict[str, Any] = {}
            while True:
                # The page keeps at most 20000 levels (100 s): pull them as the call goes.
                since = [levels[-1][0] if levels else 0, mic[-1][0] if mic else 0]
                data = await page.evaluate(PULL, since)
                levels += data["levels"]
                mic += data["mic"]
                elapsed = time.monotonic() - started
                if elapsed > wav.duration_s + 20 or (elapsed > wav.duration_s and done(data["events"])):
                    break
                await asyncio.sleep(2.0)
            await page.evaluate("() => window.__hangup && window.__hangup()")
        finally:
            await browser.close()
    return {"levels": levels, "mic": mic, "events": data["events"], "times": data["times"]}


def first_audible(levels: np.ndarray, after_ms: float, before_ms: float) -> float | None:
    idx = np.flatnonzero((levels[:, 0] > after_ms) & (levels[:, 0] < before_ms) & (levels[:, 1] > AUDIBLE))
    return float(levels[idx[0], 0]) if len(idx) else None


async def measure_v2v(base: str, tmp: Path) -> dict[str, Metric]:
    wav = write_wav(tmp / "questions.wav", QUESTIONS, pause_s=10.0)
    log(f"v2v: browser call with {len(QUESTIONS)} questions ({wav.duration_s:.0f} s of microphone)")
    got = await browser_call(
        base, wav, "bench-v2v", lambda events: sum(e.get("kind") == "turn" for e in events) >= len(QUESTIONS)
    )
    anchor, r = fit_anchor(wav, got["mic"])
    levels = np.array(got["levels"], dtype=np.float64)
    events, times = got["events"], got["times"]
    finals = [
        t for e, t in zip(events, times, strict=False) if e.get("kind") == "transcript" and e.get("final")
    ]
    turns = [e for e in events if e.get("kind") == "turn"]
    origin = min(t - e["at_s"] * 1000 for e, t in zip(events, times, strict=False) if "at_s" in e)
    rows: list[dict[str, Any]] = []
    for k, (start_s, end_s) in enumerate(wav.segments):
        end_ms = anchor + end_s * 1000
        next_ms = anchor + (
            wav.segments[k + 1][0] * 1000 if k + 1 < len(wav.segments) else wav.duration_s * 1000
        )
        # The agent must be quiet while the question is asked (else this is a barge-in).
        during = levels[(levels[:, 0] > anchor + start_s * 1000) & (levels[:, 0] < end_ms)]
        quiet = not len(during) or float(during[:, 1].max()) < AUDIBLE
        onset = first_audible(levels, end_ms, next_ms)
        # The i-th final transcript leads to the i-th turn event.
        turn, final_at = None, 0.0
        for i, t in enumerate(finals):
            if end_ms < t < next_ms and i < len(turns):
                turn, final_at = turns[i], t
                break
        if onset is None or turn is None or not quiet or turn.get("interrupted"):
            log(
                f"  question {k + 1}: skipped (onset={onset is not None} turn={turn is not None} "
                f"quiet={quiet})"
            )
            continue
        m = turn["metrics"]
        v2v = (onset - end_ms) / 1000
        row = {"v2v": v2v, **{key: m.get(key) for key in m}}
        # Server events carry at_s on the conversation clock; same machine, so the page's Date.now
        # of that clock's origin is the smallest (arrival - at_s) over every event.
        speaking = [
            e["at_s"] for e, t in zip(events, times, strict=False)
            if e.get("kind") == "state" and e.get("state") == "speaking" and t > final_at
        ]  # fmt: skip
        if speaking and m.get("voice_to_voice_s") is not None:
            first_audio_ms = origin + speaking[0] * 1000
            row["uplink"] = (first_audio_ms - m["voice_to_voice_s"] * 1000 - end_ms) / 1000
            row["downlink"] = (onset - first_audio_ms) / 1000
        rows.append(row)
        log(
            f"  question {k + 1}: browser v2v {v2v:.3f} s, server v2v "
            f"{m.get('voice_to_voice_s') or 0:.3f} s, "
            f"endpointing {m.get('endpointing_s') or 0:.3f} asr {m.get('asr_s') or 0:.3f} "
            f"llm {m.get('llm_first_token_s') or 0:.3f} tts {m.get('tts_first_audio_s') or 0:.3f}"
        )
    if not rows:
        raise RuntimeError("no question got a measurable answer")

    def col(key: str) -> list[float]:
        return [float(row[key]) for row in rows if row.get(key) is not None]

    needed = ("endpointing_s", "llm_first_token_s", "tts_first_audio_s", "voice_to_voice_s")
    full = [row for row in rows if all(row.get(k) is not None for k in needed)]
    overhead = [
        row["v2v"] - row["endpointing_s"] - row["llm_first_token_s"] - row["tts_first_audio_s"]
        for row in full
    ]
    naive = [x - (row.get("asr_s") or 0) for x, row in zip(overhead, full, strict=True)]
    transport = [row["v2v"] - row["voice_to_voice_s"] for row in full]
    chunking = [
        row["voice_to_voice_s"] - row["endpointing_s"] - row["llm_first_token_s"] - row["tts_first_audio_s"]
        for row in full
    ]
    n = len(rows)
    v2v = col("v2v")
    how = (
        f"{n} of {len(QUESTIONS)} questions (real Silero/Whisper/SmolLM2/Piper, max_tokens 40, "
        "temperature 0), "
        f"one Chromium call; wav->page clock fit r={r:.3f}"
    )
    stage_note = f"p50 of the server's turn metrics over the same {n} turns"
    out = {
        "v2v_latency_p50_s": metric(
            p50(v2v), "s", "<= 1.0 s",
            f"browser clock: end of the question's speech in the mic wav (mapped to Date.now by fitting the "
            f"wav's envelope to __va.micLevels) -> first __va.levels sample > {AUDIBLE} rms after it; {how}",
        ),
        "v2v_latency_p95_s": metric(
            percentile(v2v, 95), "s", "<= 1.5 s", f"same as v2v_latency_p50_s; {how}"
        ),
        "v2v_endpointing_p50_s": metric(
            p50(col("endpointing_s")), "s", "info",
            f"{stage_note}: speech end -> reply starts (turn silence budget; the ASR runs inside it)",
        ),
        "v2v_asr_p50_s": metric(p50(col("asr_s")), "s", "info", f"{stage_note}: final transcript compute"),
        "v2v_llm_first_token_p50_s": metric(p50(col("llm_first_token_s")), "s", "info", stage_note),
        "v2v_tts_first_audio_p50_s": metric(p50(col("tts_first_audio_s")), "s", "info", stage_note),
        "v2v_server_p50_s": metric(
            p50(col("voice_to_voice_s")), "s", "info",
            f"{stage_note}: server voice_to_voice (speech end seen by the server -> first TTS audio queued)",
        ),
    }  # fmt: skip
    if full:
        out["v2v_framework_overhead_p50_s"] = metric(
            p50(overhead), "s", "<= 0.05 s",
            "browser v2v - endpointing - llm first token - tts first audio (ASR is not subtracted again: the "
            "reply waits for the transcript inside endpointing). Contains: uplink mic->server (Opus, "
            "network, "
            "decode, 20 ms framing), sentence chunking (LLM tokens after the first until the first sentence "
            "ends), pipeline hops, Playout->outbound pacing (<= 20 ms), downlink + Chromium jitter buffer. "
            f"Split p50: transport (browser v2v - server v2v) {p50(transport):.3f} s, server-side "
            "chunking+hops "
            f"{p50(chunking):.3f} s, uplink+VAD {p50(col('uplink')):.3f} s, downlink+playout "
            f"{p50(col('downlink')):.3f} s; the brief's formula also subtracting asr gives "
            f"{p50(naive):.3f} s",
        )  # fmt: skip
        out["v2v_uplink_vad_p50_s"] = metric(
            p50(col("uplink")), "s", "info",
            "end of the question's speech in the wav (page clock) -> the server's speech_end (first "
            "frame VAD "
            "calls unvoiced), mapped to the page clock through the events' at_s: capture, Opus, network, "
            "aiortc receive, 20 ms framing and Silero's hang-over; all before the server's v2v clock starts",
        )  # fmt: skip
        out["v2v_downlink_playout_p50_s"] = metric(
            p50(col("downlink")), "s", "info",
            "the server queues the first TTS audio (speaking event's at_s, mapped to the page clock) "
            "-> first "
            f"audible __va.levels sample (> {AUDIBLE} rms): <= 20 ms pacing, Opus, network, Chromium jitter "
            "buffer, WebAudio, and any leading near-silence in the first TTS chunk",
        )  # fmt: skip
        out["v2v_transport_p50_s"] = metric(
            p50(transport),
            "s",
            "info",
            "browser v2v - server voice_to_voice: uplink + downlink + jitter buffer + <= 20 ms pacing",
        )
    return out


async def measure_barge_in(base: str, tmp: Path) -> dict[str, Metric]:
    wav = write_wav(tmp / "barge_in.wav", BARGE_INS, pause_s=4.5)
    log(f"barge-in: browser call with {len(BARGE_INS) - 1} interruptions ({wav.duration_s:.0f} s)")
    got = await browser_call(base, wav, "bench-barge-in", lambda events: True)
    anchor, r = fit_anchor(wav, got["mic"])
    levels = np.array(got["levels"], dtype=np.float64)
    stops, decisions, negative = [], [], 0
    for event, at in zip(got["events"], got["times"], strict=False):
        if event.get("kind") != "interrupted":
            continue
        # Stop: the first level sample from which the agent stays below SILENT for STOP_HOLD_MS.
        window = levels[(levels[:, 0] >= at - 300) & (levels[:, 0] <= at + 1500)]
        stop = None
        for i in range(len(window)):
            hold = window[(window[:, 0] >= window[i, 0]) & (window[:, 0] < window[i, 0] + STOP_HOLD_MS)]
            if hold[-1, 0] - window[i, 0] > STOP_HOLD_MS - 20 and float(hold[:, 1].max()) < SILENT:
                stop = float(window[i, 0])
                break
        # The utterance that interrupted: the last one whose speech began before the event.
        onsets = [anchor + s * 1000 for s, _ in wav.segments if anchor + s * 1000 < at]
        before = levels[(levels[:, 0] >= at - 1500) & (levels[:, 0] < at - 100)]
        audible = len(before) and float(before[:, 1].max()) > AUDIBLE
        if stop is None or not audible:
            log(
                f"  interruption at {at}: skipped (stop found={stop is not None}, audible "
                f"before={bool(audible)})"
            )
            continue
        stops.append((stop - at) / 1000)
        negative += stop < at
        if onsets:
            decisions.append((at - onsets[-1]) / 1000)
        log(f"  interruption: audio stopped {stops[-1] * 1000:.0f} ms after the event reached the page")
    if not stops:
        raise RuntimeError("no barge-in could be measured")
    stop_note = (
        f"{len(stops)} interruptions in one Chromium call (real models). Clock start: the 'interrupted' "
        "data-channel event's arrival at the page (__va.eventTimes, Date.now); stop: first "
        "__va.levels sample "
        f"after which the agent's received level stays < {SILENT} rms for {STOP_HOLD_MS} ms. The server "
        "flushes the Playout before it sends the event, so the event (SCTP, no jitter buffer) and the "
        f"silence (RTP + jitter buffer) race; {negative} stop(s) came before the event (negative values)"
    )
    out = {
        "barge_in_stop_latency_p50_s": metric(p50(stops), "s", "<= 0.1 s", stop_note),
        "barge_in_stop_latency_max_s": metric(
            max(stops), "s", "<= 0.15 s", "same as barge_in_stop_latency_p50_s"
        ),
    }
    if decisions:
        out["barge_in_decision_latency_p50_s"] = metric(
            p50(decisions), "s",
            f"info (>= interrupt_min_speech_s {ConversationSettings().interrupt_min_speech_s} s by design)",
            "onset of the interrupting speech in the mic wav (mapped to the page clock, fit "
            f"r={r:.3f}) -> the "
            "'interrupted' event at the page: uplink + VAD + interrupt_min_speech_s + event downlink",
        )  # fmt: skip
    return out


# -- aiortc load clients ------------------------------------------------------------------------
