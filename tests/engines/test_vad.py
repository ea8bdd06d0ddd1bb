"""Silero VAD on real speech, silence and noise; stream isolation; refusal of bad audio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from tests.engines.conftest import silence, synthesize_speech, white_noise
from voiceagent.engines.base import BadAudio, VADEvent, VADStream
from voiceagent.engines.settings import VADSettings
from voiceagent.engines.vad.silero import SileroVAD

pytestmark = pytest.mark.models

FRAME = 640  # 20 ms of int16 at 16 kHz, what the transport delivers
SENTENCE = "Hello, what is the weather like in Paris today?"


@pytest.fixture
async def vad() -> AsyncIterator[SileroVAD]:
    engine = SileroVAD()
    yield engine
    engine.close()


async def feed(stream: VADStream, pcm: bytes, frame: int = FRAME) -> tuple[list[VADEvent], float]:
    """Events and the share of frames reported as speaking."""
    events: list[VADEvent] = []
    speaking = frames = 0
    for i in range(0, len(pcm), frame):
        result = await stream.process(pcm[i : i + frame])
        events.extend(result.events)
        speaking += result.speaking
        frames += 1
    return events, speaking / frames


def speech_span(pcm: bytes) -> tuple[float, float]:
    """Where the synthesized voice is audible, from the samples themselves."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, "<i2")) > 300)
    return loud[0] / 16_000, loud[-1] / 16_000


async def test_speech_gives_start_and_end_at_plausible_times(vad: SileroVAD) -> None:
    pcm = silence(1.0) + synthesize_speech(SENTENCE) + silence(1.5)
    first, last = speech_span(pcm)
    events, speaking = await feed(vad.stream(), pcm)
    # Piper sometimes pauses past min_silence_s at the comma: then two stretches, still in order.
    kinds = [e.kind for e in events]
    assert kinds and kinds == ["speech_start", "speech_end"] * (len(kinds) // 2), kinds
    start, end = events[0], events[-1]
    assert first - 0.1 <= start.at_s <= first + 0.3
    assert last - 0.6 <= end.at_s <= last + 0.3
    assert speaking > 0.4


@pytest.mark.parametrize("noise", ["silence", "white_noise"])
async def test_no_speech_in_silence_or_white_noise(vad: SileroVAD, noise: str) -> None:
    pcm = silence(3.0) if noise == "silence" else white_noise(3.0)
    stream = vad.stream()
    events, speaking = await feed(stream, pcm)
    assert events == []
    assert speaking == 0


async def test_chunking_does_not_change_the_result(vad: SileroVAD) -> None:
    """Sub-block chunks are buffered: 50-byte and 20 ms feeds see the same blocks."""
    pcm = silence(0.5) + synthesize_speech(SENTENCE) + silence(1.0)
    small, _ = await feed(vad.stream(), pcm, frame=50)
    large, _ = await feed(vad.stream(), pcm, frame=FRAME * 7)
    assert small == large and len(small) in (2, 4)


async def test_hysteresis_follows_settings(vad: SileroVAD) -> None:
    """A long min_silence_s bridges the pause between two sentences; a short one does not."""
    pcm = synthesize_speech("Turn off the lights.") + silence(0.6) + synthesize_speech("Thank you.")
    short, _ = await feed(SileroVAD(VADSettings(min_silence_s=0.2)).stream(), pcm + silence(1))
    long, _ = await feed(SileroVAD(VADSettings(min_silence_s=1.5)).stream(), pcm + silence(2))
    assert [e.kind for e in short].count("speech_start") == 2
    assert [e.kind for e in long] == ["speech_start", "speech_end"]


async def test_streams_are_independent_and_concurrent(vad: SileroVAD) -> None:
    speech = silence(0.5) + synthesize_speech(SENTENCE) + silence(1.0)
    alone, _ = await feed(vad.stream(), speech)
    results = await asyncio.gather(feed(vad.stream(), speech), feed(vad.stream(), silence(4.0)))
    assert results[0][0] == alone
    assert results[1][0] == []


async def test_reset_restarts_stream_time(vad: SileroVAD) -> None:
    stream = vad.stream()
    pcm = silence(0.5) + synthesize_speech(SENTENCE) + silence(1.0)
    first, _ = await feed(stream, pcm)
    stream.reset()
    again, _ = await feed(stream, pcm)
    assert again == first


async def test_closed_streams_recycle_their_model(vad: SileroVAD) -> None:
    for _ in range(3):
        stream = vad.stream()
        await stream.process(silence(0.1))
        stream.close()
    assert len(vad._idle) == 1


@pytest.mark.parametrize(
    ("pcm", "message"),
    [
        (b"", "empty"),
        (b"\x00" * 641, "odd byte count"),
        (b"\x00\x00" * 16_000 * 121, "exceeds"),
        (np.array([0.0, np.nan, 0.1], dtype=np.float32), "NaN"),
        (np.zeros((2, 512), dtype=np.float32), "1-D"),
    ],
    ids=["empty", "odd", "too-long", "nan", "2d"],
)
async def test_bad_audio_is_refused(vad: SileroVAD, pcm: bytes, message: str) -> None:
    with pytest.raises(BadAudio, match=message):
        await vad.stream().process(pcm)
