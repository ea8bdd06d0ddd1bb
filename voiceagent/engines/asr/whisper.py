"""Whisper (faster-whisper / CTranslate2) speech recognition, tuned for end-of-turn latency.

Whisper is trained on 30 s windows, and faster-whisper pads every call to one, so a 2 s
utterance pays for encoding 28 s of zeros (~0.5 s of the ~0.6–0.8 s a call costs here).
``encoder_window="fit"`` encodes only the audio plus a margin of padding instead. Measured on
the test sentences (bench/asr_vad.py) this cuts a call 4-5x at the same WER, *provided* the
decoder predicts timestamp tokens: without them it sometimes never emits end-of-text on a short
window and repeats the sentence until max_length, which is why timestamps stay on (they cost
little) and every call also gets a token budget proportional to its duration.

Audio is 16 kHz mono: int16 PCM bytes, or float32 samples. Resampling is the caller's job.
Audio shorter than MIN_AUDIO_S gives an empty transcript rather than an error: VAD blips reach
here in normal operation and "nothing was said" is the right answer for them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
from faster_whisper import WhisperModel

from voiceagent.engines.asr.weights import resolve_model
from voiceagent.engines.audio import audio_samples
from voiceagent.engines.base import PCM_RATE, ASREngine, ModelUnavailable, Transcript, Word
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.engines.settings import ASRSettings
from voiceagent.engines.vad.silero import SileroVAD

if TYPE_CHECKING:
    from voiceagent.observability.metrics import Metrics

log = logging.getLogger(__name__)

MIN_AUDIO_S = 0.1
FULL_WINDOW_FRAMES = 3000  # 30 s of 10 ms mel frames, what Whisper was trained on
FRAMES_PER_S = 100
MAX_NEW_TOKENS = 200  # leaves room for a 223-token prompt inside Whisper's 448


class _FitWindowWhisper(WhisperModel):  # type: ignore[misc]
    """Encodes only as many mel frames as the audio needs (plus a margin), not 30 s.

    faster-whisper hands ``encode`` a window zero-padded to 3000 frames. Real audio never
    yields an all-zero frame (log-mel is floored at max-8 and then shifted), so the trailing
    zero frames are exactly the padding and can be cut. The window policy is per call (engines
    sharing one model may differ), so it rides on the worker thread.
    """

    _window = threading.local()

    def set_window(self, margin_frames: int | None, min_frames: int = 0) -> None:
        """For calls on this thread: None keeps the stock 30 s window."""
        self._window.margin, self._window.minimum = margin_frames, min_frames

    def encode(self, features: np.ndarray) -> Any:
        margin = getattr(self._window, "margin", None)
        if margin is not None and features.shape[-1] == FULL_WINDOW_FRAMES:
            columns = np.any(features.reshape(-1, features.shape[-1]) != 0, axis=0)
            used = int(np.flatnonzero(columns)[-1]) + 1 if columns.any() else 1
            frames = max(self._window.minimum, used + margin)
            frames = min(FULL_WINDOW_FRAMES, -(-frames // FRAMES_PER_S) * FRAMES_PER_S)
            features = features[..., :frames]
        return super().encode(features)


class WhisperASR(ASREngine):
    """One Whisper model per process; every call goes through the pool.

    Settings ``encoder_window``: "fit" (audio + ``window_margin_s`` of padding, at least
    ``min_window_s``) or "full" (Whisper's stock 30 s). ``trim_silence`` cuts the audio to
    what ``vad`` (a private SileroVAD by default) hears as speech, and answers "" without
    decoding when it hears none: on a fit window, pure silence otherwise comes back as "You".
    ``full_check`` re-hashes the cached weights at load.
    """

    def __init__(
        self,
        settings: ASRSettings | None = None,
        pool: ModelWorkerPool | None = None,
        *,
        metrics: Metrics | None = None,
        vad: SileroVAD | None = None,
        full_check: bool = False,
    ) -> None:
        self.settings = settings or ASRSettings()
        self.pool = pool or ModelWorkerPool("asr", **self.settings.pool.model_dump(), metrics=metrics)
        self.encoder_window = self.settings.encoder_window
        self.window_margin_s = self.settings.window_margin_s
        self.min_window_s = self.settings.min_window_s
        self.full_check = full_check
        self._vad = (vad or SileroVAD()) if self.settings.trim_silence else None
        self.load_s: float | None = None
        self._model: _FitWindowWhisper | None = None
        self._loading = asyncio.Lock()

    async def load(self) -> None:
        """Assemble/verify the weights and load the model, off the event loop; idempotent."""
        async with self._loading:
            if self._model is None:
                self._model = await self.pool.run(self._load_sync)

    def _load_sync(self) -> _FitWindowWhisper:
        started = time.perf_counter()
        path = resolve_model(self.settings, full_check=self.full_check)
        try:
            model = _FitWindowWhisper(
                str(path),
                device=self.settings.device,
                compute_type=self.settings.compute_type,
                cpu_threads=self.settings.cpu_threads,
                num_workers=self.pool.workers,  # lets pool workers decode in parallel
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelUnavailable(f"cannot load Whisper model from {path}: {exc}") from exc
        self.load_s = time.perf_counter() - started
        log.info("Whisper loaded from %s in %.2f s (window %s)", path, self.load_s, self.encoder_window)
        return model

    async def transcribe(
        self,
        pcm: bytes | np.ndarray,
        *,
        partial: bool = False,
        language: str | None = None,
        prompt: str | None = None,
    ) -> Transcript:
        """``partial`` skips word timing and temperature fallback: it is a preview, redone at
        the end of the turn anyway."""
        samples = audio_samples(pcm)  # validate before taking a queue slot
        language = language or self.settings.language
        if samples.size < MIN_AUDIO_S * PCM_RATE:
            return Transcript(
                text="",
                language=language or "",
                duration_s=samples.size / PCM_RATE,
                processing_s=0.0,
                partial=partial,
            )
        await self.load()
        return await self.pool.run(
            self._transcribe_sync, samples, partial, language, prompt or self.settings.initial_prompt
        )

    def _transcribe_sync(
        self, samples: np.ndarray, partial: bool, language: str | None, prompt: str | None
    ) -> Transcript:
        assert self._model is not None
        started = time.perf_counter()
        duration = samples.size / PCM_RATE
        offset = 0
        if self._vad is not None:
            bounds = self._vad.speech_bounds(samples)
            if bounds is None:
                return Transcript(
                    text="",
                    language=language or "",
                    duration_s=duration,
                    processing_s=time.perf_counter() - started,
                    partial=partial,
                )
            offset, end = bounds
            samples = samples[offset:end]
        fit = self.encoder_window == "fit"
        self._model.set_window(
            round(self.window_margin_s * FRAMES_PER_S) if fit else None,
            round(self.min_window_s * FRAMES_PER_S),
        )
        segments, info = self._model.transcribe(
            samples,
            language=language,
            beam_size=self.settings.beam_size,
            best_of=1,
            temperature=0.0 if partial else (0.0, 0.4, 0.8),
            condition_on_previous_text=False,
            without_timestamps=False,
            word_timestamps=not partial,
            initial_prompt=prompt,
            hotwords=self.settings.hotwords,
            max_new_tokens=min(MAX_NEW_TOKENS, int(24 + 8 * samples.size / PCM_RATE)),
        )
        segments = list(segments)  # the generator does the decoding: keep it on this thread
        shift = offset / PCM_RATE  # word times refer to the audio the caller sent
        words = tuple(
            Word(text=w.word.strip(), start_s=w.start + shift, end_s=w.end + shift, probability=w.probability)
            for segment in segments
            for w in segment.words or ()
        )
        return Transcript(
            text="".join(segment.text for segment in segments).strip(),
            language=info.language,
            duration_s=duration,
            processing_s=time.perf_counter() - started,
            words=words,
            partial=partial,
        )

    def close(self) -> None:
        self.pool.close()
