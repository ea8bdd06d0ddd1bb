"""Smart Turn v3: our numpy Whisper features against faster-whisper's, and the real model (from
the pipecat-ai wheel, when installed) on a finished question and on a hesitation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from tests.engines.conftest import silence, synthesize_speech, white_noise
from voiceagent.engines.base import BadAudio, ModelUnavailable
from voiceagent.engines.turn.base import TurnModel
from voiceagent.engines.turn.features import FRAMES, N_MELS, WINDOW_SAMPLES, last_window, log_mel
from voiceagent.engines.turn.smart_turn import SmartTurn, packaged_model_path

LEAD = silence(0.5)
TAIL = silence(0.2)  # the model is asked 0.2 s after the speech stops


def test_features_match_faster_whispers_log_mel() -> None:
    """Same Whisper front end as faster-whisper's own (independent) numpy implementation, once
    the 8 s window is normalised as Smart Turn expects."""
    t = np.arange(3 * 16_000) / 16_000
    rng = np.random.default_rng(3)
    voiceish = np.sin(2 * np.pi * (120 + 40 * t) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    window = last_window((0.2 * voiceish + 0.01 * rng.standard_normal(t.size)).astype(np.float32))
    normalised = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    reference = FeatureExtractor(chunk_length=8)(normalised.astype(np.float32), padding=0)
    ours = log_mel(window)
    assert ours.shape == reference.shape == (N_MELS, FRAMES)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, reference, atol=1e-4)


def test_window_keeps_the_end_and_pads_the_front() -> None:
    short = np.ones(16_000, np.float32)
    window = last_window(short)
    assert window.shape == (WINDOW_SAMPLES,)
    assert not window[:-16_000].any() and window[-16_000:].all()
    long = np.arange(WINDOW_SAMPLES + 5, dtype=np.float32)
    assert last_window(long)[0] == 5 and last_window(long)[-1] == WINDOW_SAMPLES + 4


@pytest.fixture(scope="module")
def model() -> Iterator[SmartTurn]:
    try:
        packaged_model_path()
    except ModelUnavailable as exc:
        pytest.skip(f"Smart Turn model absent: {exc}")
    engine = SmartTurn()
    yield engine
    engine.close()


@pytest.mark.models
def test_model_hears_a_finished_question_as_complete(model: SmartTurn) -> None:
    assert isinstance(model, TurnModel)
    pcm = LEAD + synthesize_speech("Do you have any vegetarian dishes?", pad_s=0.0, noiseless=True) + TAIL
    assert model.probability(pcm) >= model.threshold


@pytest.mark.models
@pytest.mark.parametrize("fragment", ["I was wondering if", "So, um,", "Because my"])
def test_model_hears_a_hesitation_as_incomplete(model: SmartTurn, fragment: str) -> None:
    pcm = LEAD + synthesize_speech(fragment, pad_s=0.0, noiseless=True) + TAIL
    assert model.probability(pcm) < model.threshold


@pytest.mark.models
async def test_model_takes_any_length_and_noise_off_the_event_loop(model: SmartTurn) -> None:
    """Longer than the 8 s window, pure noise, a blip: a probability each, never an error."""
    long_turn = silence(9.0) + synthesize_speech("Please call me back tomorrow morning.", pad_s=0.0) + TAIL
    for pcm in (long_turn, white_noise(1.0, level=0.01), silence(0.02)):
        p = await asyncio.to_thread(model.probability, pcm)
        assert 0.0 <= p <= 1.0
    with pytest.raises(BadAudio):
        model.probability(b"")


def test_missing_model_file_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable):
        SmartTurn(tmp_path / "nope.onnx")
