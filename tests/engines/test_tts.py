"""TTS engines: Piper for real, CosyVoice's remote protocol against a protocol-compatible server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.engines.conftest import word_error_rate
from tests.engines.cosyvoice_server import RATE, CosyVoiceTestServer, tone
from voiceagent.engines.asr.whisper import WhisperASR
from voiceagent.engines.audio import float_to_pcm16, pcm16_to_float, resample, rms_dbfs
from voiceagent.engines.base import (
    AudioChunk,
    BadText,
    EngineError,
    EngineTimeout,
    ModelUnavailable,
    TTSEngine,
)
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.engines.settings import ASRSettings, CosyVoiceSettings, PiperSettings, TTSSettings
from voiceagent.engines.tts.cosyvoice import CosyVoiceTTS, rechunk
from voiceagent.engines.tts.piper import PiperTTS

SENTENCES = [
    "The first sentence is short.",
    "Then a second one follows it.",
    "A third sentence keeps the voice busy.",
    "The fourth comes after that.",
    "And the fifth one ends the story.",
]


async def collect(engine: TTSEngine, text: str) -> list[AudioChunk]:
    return [chunk async for chunk in engine.synthesize(text)]


def joined(chunks: list[AudioChunk]) -> bytes:
    return b"".join(c.pcm for c in chunks)


# -- Piper --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper_engine() -> Iterator[PiperTTS]:
    engine = PiperTTS()
    yield engine
    engine.close()


@pytest.fixture
def piper(piper_engine: PiperTTS) -> Iterator[PiperTTS]:
    """The loaded voice with a pool made for this test's event loop."""
    piper_engine.pool = ModelWorkerPool("tts", workers=1)
    yield piper_engine
    piper_engine.pool.close()


class SpeakLog:
    """Records which sentences the voice has started and finished synthesizing."""

    def __init__(self, speak: Callable[[str], bytes]) -> None:
        self.speak = speak
        self.started: list[str] = []
        self.finished: list[str] = []

    def __call__(self, sentence: str) -> bytes:
        self.started.append(sentence)
        pcm = self.speak(sentence)
        self.finished.append(sentence)
        return pcm


@pytest.fixture
def speak_log(piper: PiperTTS, monkeypatch: pytest.MonkeyPatch) -> SpeakLog:
    log = SpeakLog(piper._speak)
    monkeypatch.setattr(piper, "_speak", log)
    return log


@pytest.fixture
async def whisper(tmp_path: Path) -> AsyncIterator[WhisperASR]:
    """The project's own ASR engine: the round trip checks TTS and ASR as the call will use them."""
    asr = WhisperASR(ASRSettings(cache_dir=str(tmp_path / "models")))
    await asr.load()
    yield asr
    asr.close()


def test_a_missing_voice_is_reported_not_crashed(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="missing"):
        PiperTTS(TTSSettings(piper=PiperSettings(voice=str(tmp_path / "nope.onnx"))))
    with pytest.raises(ModelUnavailable, match="unknown packaged"):
        PiperTTS(TTSSettings(piper=PiperSettings(voice="packaged:amy-low")))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    (tmp_path / "broken.onnx.json").write_text("{}")
    with pytest.raises(ModelUnavailable, match="does not load"):
        PiperTTS(TTSSettings(piper=PiperSettings(voice=str(broken))))


@pytest.mark.models
async def test_piper_speaks_a_sentence(piper: PiperTTS) -> None:
    chunks = await collect(piper, "The quick brown fox jumps over the lazy dog.")
    assert len(chunks) == 1
    chunk = chunks[0]
    assert chunk.sample_rate == piper.sample_rate == 22050
    assert chunk.text == "The quick brown fox jumps over the lazy dog."
    assert 1.5 < chunk.duration_s < 5.0
    assert rms_dbfs(pcm16_to_float(chunk.pcm, chunk.sample_rate)) > -30


@pytest.mark.models
async def test_piper_speech_is_understood_by_whisper(piper: PiperTTS, whisper: WhisperASR) -> None:
    text = "Please call me back tomorrow morning. The delivery will arrive at the office before noon."
    chunks = await collect(piper, text)
    assert [c.text for c in chunks] == [
        "Please call me back tomorrow morning.",
        "The delivery will arrive at the office before noon.",
    ]
    audio = resample(pcm16_to_float(joined(chunks), piper.sample_rate), piper.sample_rate, 16_000)
    heard = (await whisper.transcribe(float_to_pcm16(audio))).text
    assert word_error_rate(text, heard) <= 0.2, heard


@pytest.mark.models
async def test_first_chunk_arrives_before_the_rest_is_synthesized(
    piper: PiperTTS, speak_log: SpeakLog
) -> None:
    started = time.perf_counter()
    arrivals: list[float] = []
    done_at_first_chunk = -1
    async for _ in piper.synthesize(" ".join(SENTENCES)):
        arrivals.append(time.perf_counter() - started)
        if done_at_first_chunk < 0:
            done_at_first_chunk = len(speak_log.finished)
    assert len(arrivals) == len(SENTENCES)
    # Structural, not timed: when the first chunk arrived, at most the next sentence was done.
    assert done_at_first_chunk <= 2  # this sentence and, at most, the one prefetched


@pytest.mark.models
async def test_stopping_iteration_stops_synthesis(piper: PiperTTS, speak_log: SpeakLog) -> None:
    text = " ".join(SENTENCES * 2)
    async with contextlib.aclosing(piper.synthesize(text)) as stream:
        async for _ in stream:
            break
    await asyncio.sleep(0.5)
    assert len(speak_log.started) <= 2, speak_log.started

    speak_log.started.clear()
    task = asyncio.create_task(collect(piper, text))
    while not speak_log.finished:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    started_at_cancel = len(speak_log.started)
    await asyncio.sleep(0.5)
    assert len(speak_log.started) == started_at_cancel


@pytest.mark.models
async def test_markup_emoji_and_long_text_are_spoken_or_refused(piper: PiperTTS) -> None:
    chunks = await collect(piper, "**Good news!** 🎉 Your order is [here](https://x.io). <b>Thanks</b> 😀")
    assert [c.text for c in chunks] == ["Good news!", "Your order is here.", "Thanks"]

    run_on = ", ".join(f"item number {i} is on the list" for i in range(15))
    chunks = await collect(piper, run_on)
    assert len(chunks) >= 3 and all(len(c.text) <= 200 for c in chunks)
    assert all(c.duration_s > 0.5 for c in chunks)

    for unspeakable in ("😀🎉👍", "```\n```", "", "x" * 2001):
        with pytest.raises(BadText):
            await collect(piper, unspeakable)


@pytest.mark.models
async def test_concurrent_calls_share_one_voice(piper: PiperTTS) -> None:
    results = await asyncio.gather(*(collect(piper, s) for s in SENTENCES[:3]))
    assert [chunks[0].text for chunks in results] == SENTENCES[:3]


# -- CosyVoice ----------------------------------------------------------------------------------


def cosyvoice(url: str, timeout_s: float = 5.0) -> CosyVoiceTTS:
    return CosyVoiceTTS(
        TTSSettings(backend="cosyvoice", cosyvoice=CosyVoiceSettings(url=url, request_timeout_s=timeout_s))
    )


@pytest.fixture(scope="module")
def cosy_server() -> Iterator[CosyVoiceTestServer]:
    with CosyVoiceTestServer() as server:
        yield server


@pytest.mark.models
async def test_cosyvoice_remote_streams_sample_aligned_chunks(cosy_server: CosyVoiceTestServer) -> None:
    engine = cosyvoice(cosy_server.url)
    sent_before = len(cosy_server.sent)
    chunks = await collect(engine, "Hello from the CosyVoice server. **This** is a second sentence 😀.")
    await engine.aclose()

    assert cosy_server.requests[-2:] == [
        {"tts_text": "Hello from the CosyVoice server.", "spk_id": "中文女"},
        {"tts_text": "This is a second sentence.", "spk_id": "中文女"},
    ]
    sent = cosy_server.sent[sent_before:]
    assert joined(chunks) == b"".join(sent)  # nothing lost, nothing shifted by odd body cuts
    assert len(chunks) > 10 and all(c.sample_rate == RATE == engine.sample_rate for c in chunks)
    assert all(len(c.pcm) % 2 == 0 for c in chunks)
    hundred_ms = 2 * round(RATE * 0.1)
    assert sum(len(c.pcm) == hundred_ms for c in chunks) >= len(chunks) - 2  # one short tail each
    assert [c.text for c in chunks if c.text] == [r["tts_text"] for r in cosy_server.requests[-2:]]
    assert sum(c.duration_s for c in chunks) == pytest.approx(sum(len(p) for p in sent) / 2 / RATE)


async def test_cosyvoice_stops_requesting_when_the_caller_stops() -> None:
    with CosyVoiceTestServer(tone) as server:
        engine = cosyvoice(server.url)
        async with contextlib.aclosing(engine.synthesize(" ".join(SENTENCES))) as stream:
            async for _ in stream:
                break
        await engine.aclose()
    assert len(server.requests) == 1


async def test_cosyvoice_unreachable_is_model_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = cosyvoice(f"http://127.0.0.1:{port}")
    with pytest.raises(ModelUnavailable, match="unreachable"):
        await collect(engine, "Hello.")
    await engine.aclose()


async def test_cosyvoice_slow_server_times_out() -> None:
    with CosyVoiceTestServer(tone, stall_s=10.0) as server:
        engine = cosyvoice(server.url, timeout_s=0.3)
        started = time.perf_counter()
        with pytest.raises(EngineTimeout):
            await collect(engine, "Hello.")
        # Only a timeout that does not fire waits out the 10 s stall.
        assert time.perf_counter() - started < 5
        await engine.aclose()


async def test_cosyvoice_server_error_carries_its_body() -> None:
    with CosyVoiceTestServer(tone, fail_status=500) as server:
        engine = cosyvoice(server.url)
        with pytest.raises(EngineError, match="500: model exploded: CUDA out of memory") as caught:
            await collect(engine, "Hello.")
        assert not isinstance(caught.value, EngineTimeout | ModelUnavailable)
        await engine.aclose()


async def test_cosyvoice_refuses_unspeakable_text_before_calling_the_server() -> None:
    with CosyVoiceTestServer(tone) as server:
        engine = cosyvoice(server.url)
        with pytest.raises(BadText):
            await collect(engine, "🎉🎉")
        await engine.aclose()
    assert server.requests == []


def test_cosyvoice_local_mode_without_the_package_is_unavailable(tmp_path: Path) -> None:
    settings = CosyVoiceSettings(mode="local", model_dir=str(tmp_path))
    with pytest.raises(ModelUnavailable, match="cosyvoice"):
        CosyVoiceTTS(TTSSettings(backend="cosyvoice", cosyvoice=settings))


async def test_rechunk_keeps_samples_whole_across_odd_cuts() -> None:
    samples = np.arange(-500, 501, dtype="<i2").tobytes()

    async def source() -> AsyncGenerator[bytes, None]:
        for start in range(0, len(samples), 37):
            yield samples[start : start + 37]
        yield b"\x01"  # a stray half sample at the very end is dropped, not played as noise

    out = [piece async for piece in rechunk(source(), 200)]
    assert b"".join(out) == samples and [len(p) for p in out] == [200] * 10 + [2]
