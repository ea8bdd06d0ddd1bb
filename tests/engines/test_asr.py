"""Whisper base on synthesized speech: accuracy, refusal of bad audio, weights integrity, pool limits."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.engines.conftest import silence, synthesize_speech, white_noise, word_error_rate
from voiceagent.engines.asr.weights import (
    MODEL_BIN,
    SIDE_FILES,
    ensure_packaged_base,
    packaged_sources,
    resolve_model,
)
from voiceagent.engines.asr.whisper import WhisperASR
from voiceagent.engines.base import BadAudio, EngineOverloaded, ModelUnavailable
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.engines.settings import ASRSettings

pytestmark = pytest.mark.models

SENTENCES = [
    "Hello, what is the weather like in Paris today?",
    "Please book a table for two at seven o'clock tonight.",
    "Turn off the lights in the kitchen.",
    "Can you remind me to call my mother tomorrow morning?",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def loaded() -> Iterator[WhisperASR]:
    engine = WhisperASR()
    asyncio.run(engine.load())
    yield engine
    engine.close()


@pytest.fixture
def asr(loaded: WhisperASR) -> Iterator[WhisperASR]:
    """The loaded model with a pool made for this test's event loop (two workers)."""
    loaded.pool = ModelWorkerPool("asr", workers=2, max_queue=8)
    yield loaded
    loaded.pool.close()


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    words = [len(r.split()) for r in references]
    return sum(
        word_error_rate(r, h) * n for r, h, n in zip(references, hypotheses, words, strict=True)
    ) / sum(words)


async def test_sentences_transcribed_within_wer(asr: WhisperASR) -> None:
    transcripts = [await asr.transcribe(synthesize_speech(s)) for s in SENTENCES]
    hypotheses = [t.text for t in transcripts]
    assert corpus_wer(SENTENCES, hypotheses) <= 0.2, hypotheses
    for sentence, transcript in zip(SENTENCES, transcripts, strict=True):
        assert word_error_rate(sentence, transcript.text) <= 0.35, transcript.text
        assert transcript.language == "en" and not transcript.partial
        assert transcript.duration_s == pytest.approx(len(synthesize_speech(sentence)) / 32_000)


async def test_words_carry_timing_within_the_audio(asr: WhisperASR) -> None:
    pcm = silence(1.0) + synthesize_speech(SENTENCES[2])
    transcript = await asr.transcribe(pcm)
    assert [w.text for w in transcript.words][:2] == ["Turn", "off"]
    starts = [w.start_s for w in transcript.words]
    assert starts == sorted(starts)
    assert 1.0 <= starts[0] <= 1.6  # the leading second of silence is accounted for
    assert transcript.words[-1].end_s <= transcript.duration_s + 0.05


async def test_partial_skips_word_timing(asr: WhisperASR) -> None:
    transcript = await asr.transcribe(synthesize_speech(SENTENCES[4]), partial=True)
    assert transcript.partial and transcript.words == ()
    assert word_error_rate(SENTENCES[4], transcript.text) <= 0.25


async def test_language_detection_and_prompt(asr: WhisperASR) -> None:
    transcript = await asr.transcribe(
        synthesize_speech(SENTENCES[3]), language=None, prompt="Reminders for the family."
    )
    assert transcript.language == "en"
    assert word_error_rate(SENTENCES[3], transcript.text) <= 0.2


@pytest.mark.parametrize("kind", ["silence", "white_noise"])
async def test_no_words_from_silence_or_noise(asr: WhisperASR, kind: str) -> None:
    pcm = silence(3.0) if kind == "silence" else white_noise(3.0)
    assert (await asr.transcribe(pcm)).text == ""


async def test_clipped_loud_audio_still_transcribed(asr: WhisperASR) -> None:
    samples = np.frombuffer(synthesize_speech(SENTENCES[2]), "<i2").astype(np.float32) / 32768
    loud = np.clip(samples * 8, -1, 1).astype(np.float32)  # ~15% of samples clipped
    assert word_error_rate(SENTENCES[2], (await asr.transcribe(loud)).text) <= 0.3


async def test_too_short_audio_gives_an_empty_transcript(asr: WhisperASR) -> None:
    transcript = await asr.transcribe(b"\x10\x00" * 800)  # 50 ms
    assert transcript.text == "" and transcript.duration_s == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("pcm", "message"),
    [
        (b"", "empty"),
        (b"\x00" * 3201, "odd byte count"),
        (b"\x00\x00" * 16_000 * 121, "exceeds"),
        (np.full(16_000, np.nan, dtype=np.float32), "NaN"),
        (np.zeros(16_000, dtype=np.int32), "float"),
    ],
    ids=["empty", "odd", "too-long", "nan", "int-array"],
)
async def test_bad_audio_is_refused(asr: WhisperASR, pcm: bytes, message: str) -> None:
    with pytest.raises(BadAudio, match=message):
        await asr.transcribe(pcm)


async def test_concurrent_transcriptions_through_the_pool(asr: WhisperASR) -> None:
    transcripts = await asyncio.gather(*(asr.transcribe(synthesize_speech(s)) for s in SENTENCES[:3]))
    assert corpus_wer(SENTENCES[:3], [t.text for t in transcripts]) <= 0.2


async def test_full_queue_gives_engine_overloaded(loaded: WhisperASR) -> None:
    loaded.pool = ModelWorkerPool("asr", workers=1, max_queue=1)
    try:
        pcm = synthesize_speech(SENTENCES[0])
        results = await asyncio.gather(*(loaded.transcribe(pcm) for _ in range(4)), return_exceptions=True)
    finally:
        loaded.pool.close()
    overloaded = [r for r in results if isinstance(r, EngineOverloaded)]
    assert overloaded and len(overloaded) < 4
    assert all(not isinstance(r, BaseException) for r in results if r not in overloaded)


# -- weights ------------------------------------------------------------------------------------


@pytest.fixture
def parts_copy(tmp_path: Path) -> list[Path]:
    """The two package data folders, linked into tmp so one part can be replaced."""
    copies = []
    for i, src in enumerate(packaged_sources(), 1):
        dest = tmp_path / f"part{i}"
        dest.mkdir()
        for item in src.iterdir():
            (dest / item.name).symlink_to(item)
        copies.append(dest)
    return copies


def flip_bytes(path: Path, at: int = 1_000_000) -> None:
    data = bytearray(path.read_bytes())
    data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    path.unlink()  # it may be a symlink into site-packages: never write through it
    path.write_bytes(bytes(data))


def test_corrupt_package_part_gives_model_unavailable(tmp_path: Path, parts_copy: list[Path]) -> None:
    flip_bytes(parts_copy[1] / "model.bin.part2")
    with pytest.raises(ModelUnavailable, match="corrupt"):
        ensure_packaged_base(tmp_path / "cache", sources=parts_copy)
    assert not (tmp_path / "cache" / MODEL_BIN).exists()  # nothing half-built left behind


def test_missing_package_file_gives_model_unavailable(tmp_path: Path, parts_copy: list[Path]) -> None:
    (parts_copy[0] / SIDE_FILES[1]).unlink()
    with pytest.raises(ModelUnavailable, match="missing"):
        ensure_packaged_base(tmp_path / "cache", sources=parts_copy)


def test_corrupt_cached_copy_is_detected_and_rebuilt(tmp_path: Path) -> None:
    settings = ASRSettings(cache_dir=str(tmp_path))
    folder = resolve_model(settings)
    flip_bytes(folder / MODEL_BIN)
    assert resolve_model(settings, full_check=True) == folder
    assert ensure_packaged_base(folder, full_check=True) == folder  # verifies clean now
    with (
        (folder / MODEL_BIN).open("rb") as rebuilt,
        (packaged_sources()[0] / "model.bin.part1").open("rb") as src,
    ):
        rebuilt.seek(1_000_000)
        src.seek(1_000_000)
        assert rebuilt.read(16) == src.read(16)


async def test_model_folder_without_weights_gives_model_unavailable(tmp_path: Path) -> None:
    engine = WhisperASR(ASRSettings(model=str(tmp_path)))
    with pytest.raises(ModelUnavailable, match=r"no model\.bin"):
        await engine.load()
    engine.close()


async def test_truncated_model_folder_gives_model_unavailable(tmp_path: Path, loaded: WhisperASR) -> None:
    source = resolve_model(loaded.settings)
    for name in SIDE_FILES:
        shutil.copyfile(source / name, tmp_path / name)
    (tmp_path / MODEL_BIN).write_bytes((source / MODEL_BIN).read_bytes()[:1_000_000])
    engine = WhisperASR(ASRSettings(model=str(tmp_path)))
    with pytest.raises(ModelUnavailable, match="cannot load"):
        await engine.transcribe(synthesize_speech(SENTENCES[2]))
    engine.close()
