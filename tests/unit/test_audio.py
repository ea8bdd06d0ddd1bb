"""Trimming the silence a TTS voice puts before a reply's first word (latency heard as nothing)."""

from __future__ import annotations

import numpy as np

from voiceagent.engines.audio import trim_leading_silence

RATE = 22_050


def pcm(*parts: tuple[float, int]) -> bytes:
    """(seconds, amplitude) runs of int16 samples."""
    return np.concatenate([np.full(int(s * RATE), a, dtype="<i2") for s, a in parts]).tobytes()


def test_the_lead_in_is_cut_to_ten_milliseconds_and_the_rest_is_untouched() -> None:
    audio = pcm((0.05, 20), (0.3, 4000), (0.1, 0), (0.2, 3000))
    trimmed = trim_leading_silence(audio, RATE)
    lead = round(0.01 * RATE)
    assert len(trimmed) // 2 == len(audio) // 2 - (int(0.05 * RATE) - lead)
    assert trimmed.endswith(audio[int(0.05 * RATE) * 2 :])  # speech and the pause within it kept


def test_silence_only_and_speech_from_the_first_sample_are_left_alone() -> None:
    quiet, loud = pcm((0.2, 100)), pcm((0.2, -5000))
    assert trim_leading_silence(quiet, RATE) == quiet
    assert trim_leading_silence(loud, RATE) == loud
    assert trim_leading_silence(b"", RATE) == b""


def test_negative_peaks_count_as_sound() -> None:
    audio = pcm((0.1, 0), (0.1, -32768))
    assert len(trim_leading_silence(audio, RATE)) // 2 == int(0.1 * RATE) + round(0.01 * RATE)
