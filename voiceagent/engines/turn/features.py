"""Whisper-style log-mel features in numpy, as Smart Turn v3 takes them.

The model's contract (Pipecat's analyzer and the model card): 16 kHz mono, the *last* 8 s of the
turn, zero-padded at the *front* when shorter; the 8 s waveform is normalised to zero mean and
unit variance (over the whole window, padding included); then Whisper's front end: 25 ms Hann
frames (periodic, n_fft 400) every 10 ms, centred with reflect padding, power spectrum, 80
Slaney-normalised mel bands over 0-8 kHz, log10 floored at 1e-10, the last frame dropped, clamped
to (max - 8) and mapped by (x + 4) / 4. Result: (80, 800) float32.
"""

from __future__ import annotations

import functools

import numpy as np

SAMPLE_RATE = 16_000
WINDOW_S = 8
WINDOW_SAMPLES = SAMPLE_RATE * WINDOW_S
N_FFT = 400
HOP = 160
N_MELS = 80
FRAMES = WINDOW_SAMPLES // HOP  # 800


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear (3 mel per 200 Hz) below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz * 3.0 / 200.0
    log_part = 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) * 27.0 / np.log(6.4)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * 200.0 / 3.0
    log_part = 1000.0 * np.exp((mel - 15.0) * np.log(6.4) / 27.0)
    return np.where(mel >= 15.0, log_part, linear)


@functools.cache
def mel_filters() -> np.ndarray:
    """(N_MELS, N_FFT // 2 + 1) triangular filters, each scaled to unit area (Slaney norm)."""
    bins = np.linspace(0.0, SAMPLE_RATE / 2, N_FFT // 2 + 1)
    top = _hz_to_mel(np.array(SAMPLE_RATE / 2))
    edges = _mel_to_hz(np.linspace(0.0, float(top), N_MELS + 2))
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - left) / (centre - left)
    falling = (right - bins[None, :]) / (right - centre)
    weights: np.ndarray = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


@functools.cache
def _hann() -> np.ndarray:
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic, as torch's
    window.setflags(write=False)
    return window


def last_window(samples: np.ndarray) -> np.ndarray:
    """The last 8 s of ``samples`` (float), zero-padded at the front to exactly 8 s."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.size >= WINDOW_SAMPLES:
        return samples[-WINDOW_SAMPLES:]
    return np.concatenate([np.zeros(WINDOW_SAMPLES - samples.size, np.float32), samples])


def log_mel(window: np.ndarray) -> np.ndarray:
    """(80, 800) float32 features of exactly 8 s of 16 kHz float audio."""
    if window.shape != (WINDOW_SAMPLES,):
        raise ValueError(f"expected {WINDOW_SAMPLES} samples, got shape {window.shape}")
    x = window.astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)  # float32, as the reference does it
    padded = np.pad(x.astype(np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]  # (801, 400)
    power = np.abs(np.fft.rfft(frames * _hann(), axis=-1)) ** 2  # (801, 201)
    # einsum, not @: a BLAS matmul would wake OpenBLAS's threads, which then spin on the other core.
    mel = np.log10(np.maximum(np.einsum("mf,tf->mt", mel_filters(), power[:-1]), 1e-10))  # (80, 800)
    mel = np.maximum(mel, mel.max() - 8.0)
    features: np.ndarray = ((mel + 4.0) / 4.0).astype(np.float32)
    return features
