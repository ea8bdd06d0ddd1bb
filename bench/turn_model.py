"""Smart Turn v3 (audio end-of-turn model) against the text rule of voiceagent/pipeline/turns.py.

Recordings are made here with Piper (joe-medium) at three speech rates, clean and under -35 dBFS
noise (white, pink or babble, in turn) with the speech at -19 dBFS:

- complete: statements, questions, short answers, and sentences full of hesitations
  ("Um, so, I was wondering, whether you have vegetarian dishes.") spoken to the end;
- incomplete, "pause": the issue's case. Those hesitant sentences with every inner pause made
  0.6-0.8 s long ("hesitant_long" when complete), stopped at each pause: what the turn taker
  sees when the caller pauses after "Um, so, I was wondering,";
- incomplete, "fragment": a fragment spoken on its own ("I was wondering if", "Can I get the");
- incomplete, "cut": a fluent sentence cut after a word in mid-flow (Whisper's word times).

Each clip is judged when the speech has stopped: the model sees 0.5 s lead-in + speech + 0.2 s of
silence (as Pipecat hands it), Whisper the same with 0.15 s (when the pipeline's speculative
transcript starts). A policy maps each clip to the silence that ends the turn; "complete" means
the short one (end_of_turn_complete_s). `python -m bench.turn_model [--clips out.jsonl]` prints
the table; `run()` gives the bench metrics. Needs the model: pip install --no-deps pipecat-ai==1.14.0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cache

import numpy as np

from bench.results import Metric, metric, percentile
from voiceagent.engines.asr.whisper import WhisperASR
from voiceagent.engines.audio import float_to_pcm16, resample
from voiceagent.engines.base import PCM_RATE
from voiceagent.engines.turn.smart_turn import DEFAULT_THRESHOLD, SmartTurn
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.pipeline.turns import end_of_turn_silence

COMPLETE = [
    "Hello, what is the weather like in Paris today?",
    "Please book a table for two at seven o'clock tonight.",
    "Do you have any vegetarian dishes?",
    "I would like to cancel my reservation.",
    "Can you send me the menu?",
    "Yes.",
    "No, thank you.",
    "That sounds great.",
    "What time do you close on Sundays?",
    "My name is Sarah Johnson.",
    "Is there parking near the restaurant?",
    "I'll have the chicken with rice.",
    "We are four adults and two children.",
    "Could you repeat that, please?",
    "Okay, that works for me.",
    "How much does the tasting menu cost?",
    "I'm allergic to peanuts.",
    "Thanks, that's all.",
    "Can I pay by card?",
    "Sure.",
    "The order never arrived.",
    "Please call me back tomorrow morning.",
    "Where exactly are you located?",
    "I need a table by the window.",
]
# Complete as a whole; each inner pause is an incomplete clip ("pause").
HESITANT = [
    "Um, so, I was wondering, whether you have vegetarian dishes.",
    "So, I need, uh, a table for four, on Friday evening.",
    "And, um, could you also tell me, if there is parking nearby?",
    "Well, I think, we would like, the chicken and a salad.",
    "I was hoping, if it's not too much trouble, to move my booking to Saturday.",
    "My number is, let me see, five five five, one two three four.",
    "Actually, um, can we make it, like, half past eight?",
    "Hmm, let me think, I'd say, the pasta.",
]
FRAGMENTS = [
    "I was wondering if",
    "So, um",
    "Can I get the",
    "And then we",
    "I'd like to order",
    "Because my",
    "Could you tell me whether",
    "We were thinking about",
    "The thing is",
    "What I really want is",
]
# (sentence, words kept): spoken fluently, then cut after that many words.
CUTS = [
    ("I would like to book a table for two people at seven.", 7),
    ("Can you check if my order has shipped?", 3),
    ("We need a room with two beds for three nights.", 4),
    ("I am calling about my account because there is a charge I don't recognize.", 6),
    ("My husband is running late so please keep the table for us.", 5),
    ("Could you please send the invoice to my work email address?", 6),
    ("The delivery was supposed to come yesterday but nothing arrived.", 7),
    ("I'd like the soup and then the grilled salmon.", 4),
    ("Is it possible to change the date of my appointment to Monday?", 7),
    ("I have been waiting for a long time and nobody has answered.", 7),
]
BABBLE = [
    "The meeting has been moved to Thursday afternoon in the small conference room.",
    "She said the train was late again because of the weather up north.",
    "We should probably order more paper before the end of the quarter.",
    "Did anyone see where I left the keys to the storage cupboard?",
    "The new coffee machine makes a terrible noise every single morning.",
    "I think the match starts at eight, but let me check the schedule.",
]
RATES = (0.9, 1.0, 1.15)  # Piper length_scale: > 1 speaks slower
NOISES = ("white", "pink", "babble")
SPEECH_DBFS = -19.0
NOISE_DBFS = -35.0
LEAD_S = 0.5
MODEL_TAIL_S = 0.2
ASR_TAIL_S = 0.15
PAUSE_MIN_S = 0.15  # a quiet run this long inside a hesitant sentence is a pause
PAUSE_S = (0.6, 0.8)  # how long the hesitant caller of the issue pauses


@dataclass
class Clip:
    utterance: int  # a hesitant sentence and its pauses share one
    text: str
    family: str  # complete | hesitant (complete) | pause | fragment | cut
    complete: bool
    rate: float
    noise: str  # clean | white | pink | babble
    pcm: bytes = field(repr=False)  # lead + speech + MODEL_TAIL_S
    asr_text: str = ""
    probability: float = float("nan")
    probability_by_tail: dict[str, float] = field(default_factory=dict)


# -- recordings ---------------------------------------------------------------------------------


@cache
def _voice():  # type: ignore[no-untyped-def]
    from piper import PiperVoice

    from voiceagent.engines.tts.piper import voice_files

    model, config = voice_files("packaged:joe-medium")
    return PiperVoice.load(model, config_path=config)


def _speak(text: str, rate: float) -> np.ndarray:
    """16 kHz float speech, leading and trailing silence trimmed."""
    from piper import SynthesisConfig

    voice = _voice()
    chunks = [c.audio_float_array for c in voice.synthesize(text, SynthesisConfig(length_scale=rate))]
    audio = resample(np.concatenate(chunks), voice.config.sample_rate, PCM_RATE)
    loud = _frame_db(audio) > _frame_db(audio).max() - 40
    first, last = int(np.argmax(loud)), len(loud) - int(np.argmax(loud[::-1]))
    return audio[max(0, first - 1) * 320 : min(len(loud), last + 1) * 320]


def _frame_db(audio: np.ndarray, frame: int = 320) -> np.ndarray:
    """Level of each 20 ms frame in dBFS."""
    n = audio.size // frame
    power = np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64).mean(axis=1)
    db: np.ndarray = 10 * np.log10(power + 1e-12)
    return db


def _pauses(audio: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) sample of each inner pause of at least PAUSE_MIN_S."""
    quiet = _frame_db(audio) < _frame_db(audio).max() - 40
    pauses, run_start = [], None
    for i, q in enumerate(quiet):
        if q and run_start is None:
            run_start = i
        elif not q and run_start is not None:
            if run_start > 0 and (i - run_start) * 0.02 >= PAUSE_MIN_S:
                pauses.append((run_start * 320, i * 320))
            run_start = None
    return pauses


def _stretch_pauses(audio: np.ndarray, seed: int) -> tuple[np.ndarray, list[int]]:
    """Every inner pause made PAUSE_S long (a hesitant caller), and where each now starts."""
    rng = np.random.default_rng(seed)
    parts, starts, done, length = [], [], 0, 0
    for start, end in _pauses(audio):
        parts.append(audio[done:start])
        length += start - done
        starts.append(length)
        gap = int(rng.uniform(*PAUSE_S) * PCM_RATE)
        parts.append(np.zeros(gap, np.float32))
        length += gap
        done = end
    parts.append(audio[done:])
    return np.concatenate(parts), starts


def _level(audio: np.ndarray, dbfs: float) -> np.ndarray:
    """Scaled so the RMS of its voiced frames (within 30 dB of the loudest) is ``dbfs``."""
    db = _frame_db(audio)
    voiced = audio[: db.size * 320].reshape(db.size, 320)[db > db.max() - 30]
    rms = float(np.sqrt(np.mean(np.square(voiced, dtype=np.float64))))
    scaled: np.ndarray = (audio * (10 ** (dbfs / 20) / rms)).astype(np.float32)
    return scaled


def _fade_out(audio: np.ndarray, seconds: float = 0.01) -> np.ndarray:
    n = min(audio.size, int(seconds * PCM_RATE))
    out = audio.copy()
    out[audio.size - n :] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return out


@cache
def _babble_bed() -> np.ndarray:
    """Six talkers at once, 20 s, from BABBLE sentences looped with random offsets."""
    rng = np.random.default_rng(11)
    bed = np.zeros(20 * PCM_RATE, np.float32)
    for text in BABBLE:
        talker = _level(_speak(text, 1.0), -20)
        loop = np.tile(np.concatenate([talker, np.zeros(int(0.2 * PCM_RATE), np.float32)]), 10)
        start = int(rng.integers(0, loop.size - bed.size))
        bed += loop[start : start + bed.size]
    return bed


def _noise(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":
        spectrum = np.fft.rfft(rng.standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / PCM_RATE)
        spectrum[1:] /= np.sqrt(freqs[1:])
        spectrum[0] = 0
        noise = np.fft.irfft(spectrum, n)
    else:
        bed = _babble_bed()
        start = int(rng.integers(0, bed.size - n))
        noise = bed[start : start + n].astype(np.float64)
    rms = float(np.sqrt(np.mean(np.square(noise))))
    scaled: np.ndarray = (noise * (10 ** (NOISE_DBFS / 20) / rms)).astype(np.float32)
    return scaled


def _clip(speech: np.ndarray, noise: str, seed: int, tail_s: float = MODEL_TAIL_S) -> bytes:
    lead, tail = np.zeros(int(LEAD_S * PCM_RATE), np.float32), np.zeros(int(tail_s * PCM_RATE), np.float32)
    audio = np.concatenate([lead, _level(speech, SPEECH_DBFS), tail])
    if noise != "clean":
        audio = audio + _noise(noise, audio.size, seed)
    return float_to_pcm16(audio)


async def _cut_speech(asr: WhisperASR, text: str, keep: int, rate: float) -> np.ndarray | None:
    """The sentence spoken at ``rate``, cut just after its ``keep``-th word (Whisper's timing),
    or None when Whisper's words do not line up with the text."""
    speech = _speak(text, rate)
    words = (await asr.transcribe(float_to_pcm16(speech))).words

    def norm(word: str) -> str:
        return re.sub(r"[^a-z']", "", word.lower())

    expected = [norm(w) for w in text.split()]
    if len(words) < keep or [norm(w.text) for w in words[:keep]] != expected[:keep]:
        return None
    end = int((words[keep - 1].end_s + 0.02) * PCM_RATE)
    return _fade_out(speech[:end])


async def recordings(asr: WhisperASR, log: Callable[[str], None] = print) -> list[Clip]:
    """Every clip clean, and again under one noise: white, pink, babble in turn per utterance (the
    pauses of one hesitant utterance share its noise)."""
    spoken: list[tuple[int, str, str, bool, float, np.ndarray]] = []  # utterance, text, family, ...
    utterance = 0
    for rate in RATES:
        for text in COMPLETE:
            utterance += 1
            spoken.append((utterance, text, "complete", True, rate, _speak(text, rate)))
        for text in HESITANT:
            utterance += 1
            speech = _speak(text, rate)
            spoken.append((utterance, text, "hesitant", True, rate, speech))
            stretched, starts = _stretch_pauses(speech, utterance)
            spoken.append((utterance, f"{text} [long pauses]", "hesitant_long", True, rate, stretched))
            for k, start in enumerate(starts, 1):
                prefix = _fade_out(stretched[:start])
                spoken.append((utterance, f"{text} [pause {k}]", "pause", False, rate, prefix))
        for text in FRAGMENTS:
            utterance += 1
            spoken.append((utterance, text, "fragment", False, rate, _speak(text, rate)))
        for text, keep in CUTS:
            utterance += 1
            cut = await _cut_speech(asr, text, keep, rate)
            if cut is None:
                log(f"skipped cut of {text!r} at {rate}: Whisper's words do not match")
                continue
            spoken.append((utterance, " ".join(text.split()[:keep]) + " |", "cut", False, rate, cut))
    clips = []
    for i, (utterance, text, family, complete, rate, speech) in enumerate(spoken):
        noise = NOISES[utterance % len(NOISES)]
        clips.append(Clip(utterance, text, family, complete, rate, "clean", _clip(speech, "clean", i)))
        clips.append(Clip(utterance, text, family, complete, rate, noise, _clip(speech, noise, i)))
    return clips


# -- evaluation ---------------------------------------------------------------------------------

POLICIES: dict[str, str] = {
    "text": "today's rule: Whisper's text decides (0.3 / 0.5 / 1.0 s)",
    "model": "model alone: 0.3 s if p >= 0.5, else 1.0 s",
    "model_lengthens": "text, but 1.0 s whenever p < 0.5 (the model can only lengthen)",
    "model_shortens": "text, but a neutral ending becomes 0.3 s if p >= 0.5 (only shortens)",
    "model_unless_hesitant": "model, but the text's hesitations (um, and, comma...) keep 1.0 s",
}


def waits(clip: Clip, settings: ConversationSettings, threshold: float) -> dict[str, float]:
    """Silence that ends this turn under each policy."""
    text = end_of_turn_silence(clip.asr_text, settings)
    done = clip.probability >= threshold
    fast, slow = settings.end_of_turn_complete_s, settings.end_of_turn_hesitant_s
    return {
        "text": text,
        "model": fast if done else slow,
        "model_lengthens": text if done else max(text, slow),
        "model_shortens": fast if done and text == settings.end_of_turn_silence_s else text,
        "model_unless_hesitant": slow if text == slow or not done else fast,
    }


def scores(
    clips: list[Clip], policy: str, settings: ConversationSettings, threshold: float
) -> dict[str, float]:
    """'Complete' = the short silence. Also p50 wait on complete clips and the share of incomplete
    clips held >= 0.8 s (a 0.6-0.8 s pause does not split them)."""
    fast = settings.end_of_turn_complete_s
    rows = [(c.complete, waits(c, settings, threshold)[policy]) for c in clips]
    tp = sum(1 for done, w in rows if done and w <= fast)
    fp = sum(1 for done, w in rows if not done and w <= fast)
    fn = sum(1 for done, w in rows if done and w > fast)
    tn = len(rows) - tp - fp - fn
    complete_waits = [w for done, w in rows if done]
    incomplete = [w for done, w in rows if not done]
    return {
        "precision": tp / max(1, tp + fp),
        "recall": tp / max(1, tp + fn),
        "accuracy": (tp + tn) / max(1, len(rows)),
        "p50_wait_complete_s": percentile(complete_waits, 50) if complete_waits else float("nan"),
        "p90_wait_complete_s": percentile(complete_waits, 90) if complete_waits else float("nan"),
        "mean_wait_complete_s": statistics.mean(complete_waits) if complete_waits else float("nan"),
        "held_incomplete": sum(1 for w in incomplete if w >= 0.8) / max(1, len(incomplete)),
        "n_complete": float(tp + fn),
        "n_incomplete": float(fp + tn),
    }


def hesitant_turns(
    clips: list[Clip], policy: str, settings: ConversationSettings, threshold: float
) -> dict[str, float]:
    """The issue's case, per hesitant utterance with 0.6-0.8 s pauses: the share split at one of
    its pauses (ended there: a wait shorter than 0.8 s), and the wait after its last word."""
    turns: dict[int, list[Clip]] = {}
    for clip in clips:
        if clip.family in ("pause", "hesitant_long"):
            turns.setdefault(clip.utterance, []).append(clip)
    split, end_waits = 0, []
    for turn in turns.values():
        split += any(waits(c, settings, threshold)[policy] < 0.8 for c in turn if c.family == "pause")
        end_waits += [waits(c, settings, threshold)[policy] for c in turn if c.family == "hesitant_long"]
    return {
        "split": split / max(1, len(turns)),
        "mean_end_wait_s": statistics.mean(end_waits) if end_waits else float("nan"),
        "n": float(len(turns)),
    }


def auc(clips: list[Clip], key: Callable[[Clip], float] = lambda c: c.probability) -> float:
    pos = [key(c) for c in clips if c.complete]
    neg = [key(c) for c in clips if not c.complete]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


async def evaluate(asr: WhisperASR, model: SmartTurn, clips: list[Clip], tails: bool = False) -> None:
    """Fills asr_text and probability (and, per tail length, the model's probability)."""
    cut = int((MODEL_TAIL_S - ASR_TAIL_S) * PCM_RATE) * 2
    for clip in clips:
        clip.asr_text = (await asr.transcribe(clip.pcm[: len(clip.pcm) - cut])).text
        clip.probability = await asyncio.to_thread(model.probability, clip.pcm)
        clip.probability_by_tail = {}
        if tails:
            speech_end = len(clip.pcm) - int(MODEL_TAIL_S * PCM_RATE) * 2
            for tail in (0.05, 0.1, 0.5):
                pcm = clip.pcm[:speech_end] + _tail(clip, tail)
                clip.probability_by_tail[f"{tail:g}"] = await asyncio.to_thread(model.probability, pcm)


def _tail(clip: Clip, seconds: float) -> bytes:
    n = int(seconds * PCM_RATE)
    if clip.noise == "clean":
        return b"\x00\x00" * n
    return float_to_pcm16(_noise(clip.noise, n, 99))


# -- cost ---------------------------------------------------------------------------------------


def latency(threads: int, runs: int = 60, busy: WhisperASR | None = None) -> dict[str, float]:
    """Seconds per probability() on 8 s of audio: wall p50/p95, CPU p50 (all threads, so what
    the call costs however loaded the machine is) and the numpy features' share; with ``busy``,
    while that Whisper engine transcribes without pause on other threads (as at a turn end)."""
    model = SmartTurn(threads=threads)
    pcm = _clip(_speak(COMPLETE[0] + " " + COMPLETE[1], 1.0), "pink", 1, 0.2)
    pcm = pcm[-8 * PCM_RATE * 2 :]
    for _ in range(5):
        model.probability(pcm)
    stop = threading.Event()
    worker = None
    if busy is not None:

        def transcribe_forever() -> None:
            while not stop.is_set():
                asyncio.run(busy.transcribe(pcm[-3 * PCM_RATE * 2 :]))

        worker = threading.Thread(target=transcribe_forever, daemon=True)
        worker.start()
        time.sleep(0.3)
    times, cpu, feature_times = [], [], []
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            model.features(pcm)
            t1, c1 = time.perf_counter(), time.process_time()
            model.probability(pcm)
            times.append(time.perf_counter() - t1)
            cpu.append(time.process_time() - c1)
            feature_times.append(t1 - t0)
    finally:
        stop.set()
        if worker is not None:
            worker.join()
        model.close()
    return {
        "p50": percentile(times, 50),
        "p95": percentile(times, 95),
        "cpu_p50": percentile(cpu, 50),  # meaningless with busy (Whisper's threads count too)
        "features_p50": percentile(feature_times, 50),
        "load": os.getloadavg()[0],
    }


_RSS_PROBE = """
import json, time
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) / 1024
import numpy, onnxruntime
from voiceagent.engines.turn.smart_turn import SmartTurn
before = rss()
t = time.perf_counter()
model = SmartTurn(threads={threads})
load = time.perf_counter() - t
loaded = rss()
pcm = bytes(8 * 16000 * 2)
for _ in range(10):
    model.probability(pcm)
print(json.dumps({{"load_s": load, "rss_load_mb": loaded - before, "rss_run_mb": rss() - before}}))
"""


def load_and_memory(threads: int = 1) -> dict[str, float]:
    """Load time and RSS growth in a fresh interpreter (onnxruntime and numpy already imported)."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE.format(threads=threads)], capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# -- report -------------------------------------------------------------------------------------


def table(clips: list[Clip], settings: ConversationSettings, thresholds: tuple[float, ...] = (0.5,)) -> str:
    lines = [
        "| policy | threshold | set | precision | recall | accuracy | wait on complete p50 / p90 / mean "
        "| incomplete held >= 0.8 s | hesitant turns split | their end wait |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for policy in POLICIES:
        for threshold in thresholds if policy != "text" else (float("nan"),):
            for name, subset in _subsets(clips).items():
                s = scores(subset, policy, settings, threshold)
                h = hesitant_turns(subset, policy, settings, threshold)
                lines.append(
                    f"| {policy} | {threshold:g} | {name} | {s['precision']:.2f} | {s['recall']:.2f} "
                    f"| {s['accuracy']:.2f} | {s['p50_wait_complete_s']:.2f} / "
                    f"{s['p90_wait_complete_s']:.2f} / {s['mean_wait_complete_s']:.2f} s "
                    f"| {s['held_incomplete']:.0%} | {h['split']:.0%} | {h['mean_end_wait_s']:.2f} s |"
                )
    return "\n".join(lines)


def _subsets(clips: list[Clip]) -> dict[str, list[Clip]]:
    return {
        "clean": [c for c in clips if c.noise == "clean"],
        "noisy": [c for c in clips if c.noise != "clean"],
    }


def family_table(clips: list[Clip], settings: ConversationSettings, threshold: float) -> str:
    """Per family and noise: share judged complete by text, by model, and the model's median p."""
    lines = [
        "| family | noise | n | text says complete | model says complete | model p50 |",
        "|---|---|---:|---:|---:|---:|",
    ]
    fast = settings.end_of_turn_complete_s
    for family in ("complete", "hesitant", "hesitant_long", "pause", "fragment", "cut"):
        for noise in ("clean", *NOISES):
            subset = [c for c in clips if c.family == family and c.noise == noise]
            if not subset:
                continue
            text = sum(end_of_turn_silence(c.asr_text, settings) == fast for c in subset)
            model = sum(c.probability >= threshold for c in subset)
            p50 = statistics.median(c.probability for c in subset)
            lines.append(
                f"| {family} | {noise} | {len(subset)} | {text / len(subset):.0%} | "
                f"{model / len(subset):.0%} | {p50:.2f} |"
            )
    return "\n".join(lines)


async def _run(
    log: Callable[[str], None] = print, tails: bool = False
) -> tuple[dict[str, Metric], list[Clip]]:
    settings = ConversationSettings()
    out: dict[str, Metric] = {}
    asr = WhisperASR()
    await asr.load()
    cost = load_and_memory(1)
    model = SmartTurn(threads=1)
    threshold = model.threshold
    try:
        started = time.perf_counter()
        clips = await recordings(asr, log)
        log(f"{len(clips)} clips synthesized in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        await evaluate(asr, model, clips, tails)
        log(f"evaluated in {time.perf_counter() - started:.0f} s")
        for threads in (1, 2):
            lat = latency(threads)
            note = (
                f"{threads} thread(s), 8 s window incl. {lat['features_p50'] * 1000:.0f} ms numpy features "
                f"(p50), 60 runs; CPU time p50 {lat['cpu_p50'] * 1000:.0f} ms; load average {lat['load']:.1f}"
            )
            out[f"turn_model_latency_t{threads}_p50_s"] = metric(lat["p50"], "s", "< 0.1", note)
            out[f"turn_model_latency_t{threads}_p95_s"] = metric(lat["p95"], "s", "< 0.15", note)
        lat = latency(1, busy=asr)
        out["turn_model_latency_t1_whisper_busy_p50_s"] = metric(
            lat["p50"],
            "s",
            "< 0.15",
            f"1 thread while Whisper ({asr.settings.cpu_threads} thread(s)) transcribes 3 s clips nonstop; "
            f"p95 {lat['p95']:.3f} s; "
            f"load average {lat['load']:.1f}",
        )
    finally:
        model.close()
        asr.close()
    out["turn_model_load_s"] = metric(
        cost["load_s"], "s", "< 0.5", "Smart Turn v3.2 cpu int8 ONNX, fresh process, 1 thread"
    )
    out["turn_model_rss_mb"] = metric(
        cost["rss_run_mb"],
        "MB",
        "< 100",
        f"RSS growth after load + 10 runs (after load alone {cost['rss_load_mb']:.0f} MB)",
    )
    for name, subset in _subsets(clips).items():
        n_pos = sum(c.complete for c in subset)
        out[f"turn_model_auc_{name}"] = metric(
            auc(subset),
            "",
            "> 0.9",
            f"ROC AUC of p(complete), {n_pos} complete / {len(subset) - n_pos} incomplete clips",
        )
        for policy, what in POLICIES.items():
            s = scores(subset, policy, settings, threshold)
            out[f"turn_eot_{policy}_{name}_accuracy"] = metric(
                s["accuracy"],
                "",
                "> 0.9",
                f"{what}; complete = ends after {settings.end_of_turn_complete_s:g} s: precision "
                f"{s['precision']:.2f}, recall {s['recall']:.2f}; p50 wait on complete clips "
                f"{s['p50_wait_complete_s']:.2f} s; incomplete held >= 0.8 s {s['held_incomplete']:.0%}",
            )
            h = hesitant_turns(subset, policy, settings, threshold)
            out[f"turn_eot_{policy}_{name}_hesitant_split"] = metric(
                h["split"],
                "",
                "< 0.1",
                f"{what}; share of {h['n']:.0f} hesitant turns (0.6-0.8 s pauses) ended at a pause; "
                f"wait after their last word {h['mean_end_wait_s']:.2f} s (mean)",
            )
    return out, clips


def run() -> dict[str, Metric]:
    return asyncio.run(_run())[0]


def report(clips: list[Clip], thresholds: tuple[float, ...] = (0.2, 0.3, 0.5, 0.7)) -> str:
    settings = ConversationSettings()
    parts = [table(clips, settings, thresholds), family_table(clips, settings, DEFAULT_THRESHOLD)]
    tails = list(clips[0].probability_by_tail) if clips else []
    lines = []
    for tail in tails:
        for name, subset in _subsets(clips).items():
            score = auc(subset, lambda c, t=tail: c.probability_by_tail[t])  # type: ignore[misc]
            lines.append(f"model AUC after {tail} s of silence (not {MODEL_TAIL_S:g}), {name}: {score:.3f}")
    return "\n\n".join([*parts, "\n".join(lines)])


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", help="write one JSON line per clip (text, family, noise, transcript, p)")
    parser.add_argument("--tails", action="store_true", help="also run the model after 0.05, 0.1 and 0.5 s")
    args = parser.parse_args(argv)
    results, clips = asyncio.run(_run(tails=args.tails))
    print(report(clips))
    print()
    for key, value in results.items():
        print(f"{key:48s} {value.value:>9g} {value.unit:3s} {value.note}")
    if args.clips:
        with open(args.clips, "w", encoding="utf-8") as f:
            for clip in clips:
                row = {k: v for k, v in asdict(clip).items() if k != "pcm"}
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
