"""PCM checks and conversions shared by the engines (and later the transport)."""

from __future__ import annotations

import numpy as np

from voiceagent.engines.base import PCM_RATE, BadAudio

MAX_UTTERANCE_S = 120.0


def pcm16_to_float(pcm: bytes, sample_rate: int, *, max_seconds: float = MAX_UTTERANCE_S) -> np.ndarray:
    """int16 little-endian mono → float32 in [-1, 1], refusing what no engine should get."""
    if len(pcm) % 2:
        raise BadAudio(f"odd byte count {len(pcm)}: not 16-bit PCM")
    if not pcm:
        raise BadAudio("empty audio")
    seconds = len(pcm) / 2 / sample_rate
    if seconds > max_seconds:
        raise BadAudio(f"{seconds:.1f} s of audio exceeds the {max_seconds:g} s limit")
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def audio_samples(pcm: bytes | np.ndarray, *, max_seconds: float = MAX_UTTERANCE_S) -> np.ndarray:
    """16 kHz mono as float32: int16 PCM bytes, or float samples in [-1, 1]. Floats are accepted
    because they are the only input that can carry NaN/inf, which must be refused, not heard."""
    if isinstance(pcm, bytes | bytearray | memoryview):
        return pcm16_to_float(bytes(pcm), PCM_RATE, max_seconds=max_seconds)
    samples = np.asarray(pcm)
    if samples.ndim != 1 or samples.dtype.kind != "f":
        raise BadAudio(f"expected 1-D float samples, got {samples.dtype} shaped {samples.shape}")
    if samples.size == 0:
        raise BadAudio("empty audio")
    if samples.size / PCM_RATE > max_seconds:
        raise BadAudio(f"{samples.size / PCM_RATE:.1f} s of audio exceeds the {max_seconds:g} s limit")
    if not np.all(np.isfinite(samples)):
        raise BadAudio("audio contains NaN or infinite samples")
    clipped: np.ndarray = np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)
    return clipped


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float → int16 bytes, clipping; NaN/inf become an error rather than noise."""
    if not np.all(np.isfinite(samples)):
        raise BadAudio("audio contains NaN or infinite samples")
    pcm: bytes = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    return pcm


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Linear-interpolation resampling: enough for speech between the rates used here."""
    if from_rate == to_rate or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    duration = samples.size / from_rate
    target = max(1, round(duration * to_rate))
    positions = np.linspace(0, samples.size - 1, target, dtype=np.float64)
    resampled: np.ndarray = np.interp(positions, np.arange(samples.size), samples).astype(np.float32)
    return resampled


def rms_dbfs(samples: np.ndarray) -> float:
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def trim_leading_silence(
    pcm: bytes, sample_rate: int, *, threshold: int = 330, keep_s: float = 0.01
) -> bytes:
    """Int16 ``pcm`` from just before its first sample at or above ``threshold`` (-40 dBFS),
    keeping ``keep_s`` of lead-in. Piper starts each sentence with 40-55 ms of silence: at the
    start of a reply that is latency the caller hears as nothing. All silence is left as it is."""
    samples = np.frombuffer(pcm, dtype="<i2")
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) >= threshold)
    if loud.size == 0:
        return pcm
    start = max(0, int(loud[0]) - int(keep_s * sample_rate))
    return pcm[start * 2 :]
