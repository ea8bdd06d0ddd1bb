"""ASR and VAD figures: Whisper latency/RTF by length and concurrency, VAD cost per frame, and
what each end-of-turn latency option buys (with its WER on the same synthesized sentences)."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import numpy as np

from bench.results import Metric, metric
from tests.engines.conftest import silence, synthesize_speech, word_error_rate
from voiceagent.engines.asr.whisper import WhisperASR
from voiceagent.engines.base import PCM_RATE, VADEvent
from voiceagent.engines.settings import ASRSettings, VADSettings
from voiceagent.engines.vad.silero import SileroVAD

UTTERANCES = {
    1: "Yes, thank you.",
    3: "Hello, what is the weather like in Paris today?",
    8: "I would like to transfer one hundred dollars to my savings account before the end of the "
    "month, and please send me a confirmation.",
}
EOT_SENTENCES = [
    "Hello, what is the weather like in Paris today?",
    "Please book a table for two at seven o'clock tonight.",
    "Turn off the lights in the kitchen.",
    "Can you remind me to call my mother tomorrow morning?",
    "The quick brown fox jumps over the lazy dog.",
    "Yes.",
    "Play some relaxing music.",
    "I would like to transfer one hundred dollars to my savings account before the end of the month.",
]
FRAME = 640  # 20 ms
TURN_TAIL_S = 1.0  # silence after the user stops, as the transport delivers it


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / PCM_RATE


async def _latency(asr: WhisperASR, pcm: bytes, runs: int = 3, partial: bool = False) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await asr.transcribe(pcm, partial=partial)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _rtf(asr: WhisperASR, pcm: bytes, concurrency: int) -> float:
    async def one() -> float:
        started = time.perf_counter()
        await asr.transcribe(pcm)
        return time.perf_counter() - started

    per_call = [t for _ in range(2) for t in await asyncio.gather(*(one() for _ in range(concurrency)))]
    return statistics.mean(per_call) / seconds(pcm)


async def _vad_cost_us(vad: SileroVAD, pcm: bytes, streams: int) -> float:
    async def feed() -> None:
        stream = vad.stream()
        for i in range(0, len(pcm), FRAME):
            await stream.process(pcm[i : i + FRAME])
        stream.close()

    started = time.perf_counter()
    await asyncio.gather(*(feed() for _ in range(streams)))
    frames = streams * len(pcm) // FRAME
    return (time.perf_counter() - started) / frames * 1e6


async def _pause_and_confirm(vad: SileroVAD, pcm: bytes) -> tuple[float, float]:
    """Stream time of the final pause onset (speech_end.at_s) and of its confirmation."""
    stream, fed = vad.stream(), 0
    end: VADEvent | None = None
    confirmed = 0.0
    for i in range(0, len(pcm), FRAME):
        result = await stream.process(pcm[i : i + FRAME])
        fed += min(FRAME, len(pcm) - i)
        for event in result.events:
            if event.kind == "speech_end":
                end, confirmed = event, fed / 2 / PCM_RATE
    stream.close()
    assert end is not None, "VAD missed the end of a test turn"
    return end.at_s, confirmed


async def _run() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    started = time.perf_counter()
    asr = WhisperASR()
    await asr.load()
    out["asr_load_s"] = metric(
        time.perf_counter() - started,
        "s",
        "< 3",
        f"Whisper base int8, {asr.settings.cpu_threads} thread(s), weights already assembled",
    )

    clips = {n: synthesize_speech(text) for n, text in UTTERANCES.items()}
    await asr.transcribe(clips[3])  # first call allocates buffers
    for n, pcm in clips.items():
        out[f"asr_latency_{n}s_c1_s"] = metric(
            await _latency(asr, pcm), "s", "< 0.5", f"median of 3, {seconds(pcm):.1f} s clip, words on"
        )
    out["asr_partial_latency_3s_c1_s"] = metric(
        await _latency(asr, clips[3], partial=True), "s", "< 0.3", "partial=True: no word timing"
    )
    for c in (1, 2, 4):
        out[f"asr_rtf_8s_c{c}"] = metric(
            await _rtf(asr, clips[8], c),
            "x",
            "< 0.3",
            f"mean call time / audio length, {c} concurrent calls; default pool: "
            f"{asr.settings.pool.workers} worker x {asr.settings.cpu_threads} thread(s), "
            "so calls beyond 1 queue",
        )

    vad = SileroVAD()
    speech = synthesize_speech(EOT_SENTENCES[7]) + silence(2.0)
    for c in (1, 2, 4):
        out[f"vad_cost_per_20ms_frame_c{c}_us"] = metric(
            await _vad_cost_us(vad, speech, c),
            "us",
            "< 200",
            f"wall time per 20 ms frame, {c} streams fed at once; one pool hop per call with a whole block",
        )

    out.update(await _eot_options(asr, vad))
    asr.close()
    vad.close()
    return out


async def _eot_options(asr: WhisperASR, vad: SileroVAD) -> dict[str, Metric]:
    """Every option on every sentence, interleaved, so load from other processes on the machine
    hits them alike. All share the loaded weights; only per-call options differ."""
    turns = [silence(0.3) + synthesize_speech(s) + silence(TURN_TAIL_S) for s in EOT_SENTENCES]

    def variant(**options: Any) -> WhisperASR:
        engine = WhisperASR(ASRSettings(**options))
        engine.pool, engine._model = asr.pool, asr._model
        return engine

    full, fit = variant(encoder_window="full", trim_silence=False), variant(trim_silence=False)

    async def stock(pcm: bytes) -> str:
        audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
        return await asr.pool.run(_stock_transcribe, asr, audio)

    async def text_of(engine: WhisperASR, pcm: bytes) -> str:
        return (await engine.transcribe(pcm)).text

    options: dict[str, tuple[str, Callable[[bytes], Awaitable[str]]]] = {
        "eot_stock_defaults_s": ("faster-whisper defaults (beam 5, detect language, 30 s window)", stock),
        "eot_tuned_decode_full_window_s": ("beam 1, language en, 30 s window", partial(text_of, full)),
        "eot_fit_window_s": ("encoder window = audio + 2 s, not 30 s", partial(text_of, fit)),
        "eot_fit_window_vad_trim_s": (
            "fit window on audio cut to VAD speech ± 0.25 s (default)",
            partial(text_of, asr),
        ),
    }
    latency: dict[str, list[float]] = {name: [] for name in [*options, "eot_speculative_wait_s"]}
    errors: dict[str, float] = dict.fromkeys(latency, 0.0)
    words = 0
    for sentence, pcm in zip(EOT_SENTENCES, turns, strict=True):
        words += len(sentence.split())
        for name, (_, transcribe) in options.items():
            began = time.perf_counter()
            text = await transcribe(pcm)
            latency[name].append(time.perf_counter() - began)
            errors[name] += word_error_rate(sentence, text) * len(sentence.split())
        # Speculative: transcribe at the pause onset; the answer is due when speech_end is
        # confirmed min_silence_s later, so only what outlasts that wait is latency.
        pause, confirmed = await _pause_and_confirm(vad, pcm)
        began = time.perf_counter()
        text = (await asr.transcribe(pcm[: int(pause * PCM_RATE) * 2])).text
        latency["eot_speculative_wait_s"].append(max(0.0, time.perf_counter() - began - (confirmed - pause)))
        errors["eot_speculative_wait_s"] += word_error_rate(sentence, text) * len(sentence.split())

    baseline = statistics.median(latency["eot_tuned_decode_full_window_s"])
    notes = {name: what for name, (what, _) in options.items()}
    notes["eot_speculative_wait_s"] = (
        f"default engine started at the pause onset; wait left once speech_end is confirmed "
        f"(min_silence_s {VADSettings().min_silence_s:g})"
    )
    results = {}
    for name, times in latency.items():
        value = statistics.median(times)
        results[name] = metric(
            value,
            "s",
            "< 0.3",
            f"{notes[name]}; median of {len(times)} turns, max {max(times):.2f} s, WER "
            f"{errors[name] / words:.1%}, {baseline / max(value, 1e-3):.1f}x faster than 30 s window",
        )
    return results


def _stock_transcribe(asr: WhisperASR, audio: np.ndarray) -> str:
    assert asr._model is not None
    asr._model.set_window(None)
    segments, _ = asr._model.transcribe(audio)
    return "".join(segment.text for segment in segments)


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:38s} {value.value:>9g} {value.unit:3s} {value.note}")
