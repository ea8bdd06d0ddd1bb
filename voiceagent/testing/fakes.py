"""Fake engines for conversation tests, all on the event loop's clock (virtual under looptime).

Speech is encoded in the audio itself: a frame whose samples are `SPEECH_BASE + k` belongs to
utterance k, so the fake ASR knows what was "said" and the fake VAD hears it as speech.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from voiceagent.engines.base import (
    ASREngine,
    AudioChunk,
    ChatMessage,
    EngineError,
    LLMDelta,
    LLMEngine,
    ToolCall,
    ToolSpec,
    Transcript,
    TTSEngine,
    VADEngine,
    VADEvent,
    VADResult,
    VADStream,
)
from voiceagent.engines.registry import CallEngines
from voiceagent.events import AskEvent, GreetEvent
from voiceagent.pipeline.knowledge import Consulted
from voiceagent.store import NewTurn, StoreUnavailable
from voiceagent.store.records import Reference

if TYPE_CHECKING:
    from voiceagent.engines.registry import Engines
    from voiceagent.store import Store

SPEECH_BASE = 2000
FRAME_BYTES = 640  # 20 ms at 16 kHz


def frame(utterance: int | None) -> bytes:
    value = 0 if utterance is None else SPEECH_BASE + utterance
    return np.full(FRAME_BYTES // 2, value, dtype="<i2").tobytes()


class FakeVADStream(VADStream):
    """Silero-like hysteresis on frames that are speech or not."""

    def __init__(self, min_speech_s: float, min_silence_s: float, engine: FakeVAD | None = None) -> None:
        self.min_speech_s, self.min_silence_s = min_speech_s, min_silence_s
        self.engine = engine
        self.t = 0.0
        self.speaking = False
        self.run_start: float | None = None  # start of the current run of speech/silence frames
        self.closed = False

    async def process(self, pcm: bytes) -> VADResult:
        if self.engine is not None:
            self.engine.frames_seen += 1
            if self.engine.frames_seen in self.engine.fail_frames:
                raise self.engine.error
        samples = np.frombuffer(pcm, dtype="<i2")
        voiced = bool(samples.size and int(np.abs(samples).max()) >= SPEECH_BASE)
        start, self.t = self.t, self.t + len(pcm) / 32000
        events: list[VADEvent] = []
        if voiced != self.speaking:
            if self.run_start is None:
                self.run_start = start
            needed = self.min_speech_s if voiced else self.min_silence_s
            if self.t - self.run_start >= needed - 1e-9:
                self.speaking = voiced
                kind = "speech_start" if voiced else "speech_end"
                events.append(VADEvent(kind=kind, at_s=self.run_start))
                self.run_start = None
        else:
            self.run_start = None
        return VADResult(probability=1.0 if voiced else 0.0, speaking=self.speaking, events=tuple(events))

    def reset(self) -> None:
        self.t, self.speaking, self.run_start = 0.0, False, None

    def close(self) -> None:
        self.closed = True


class FakeVAD(VADEngine):
    """``fail_frames``: frame numbers (1-based, counted across all streams) that raise ``error``."""

    def __init__(
        self,
        min_speech_s: float = 0.25,
        min_silence_s: float = 0.4,
        *,
        fail_frames: range = range(0),
        error: BaseException | None = None,
    ) -> None:
        self.args = (min_speech_s, min_silence_s)
        self.streams: list[FakeVADStream] = []
        self.frames_seen = 0
        self.fail_frames = fail_frames
        self.error = error or RuntimeError("VAD backend crashed")

    def stream(self) -> FakeVADStream:
        self.streams.append(FakeVADStream(*self.args, engine=self))
        return self.streams[-1]


class FakeASR(ASREngine):
    """Knows the text of each utterance id; a partial pass returns its first half.

    ``fail_utterances`` makes a final transcript of audio holding that utterance raise;
    ``partial_error`` makes every partial pass raise."""

    def __init__(
        self,
        texts: dict[int, str],
        delay_s: float = 0.15,
        *,
        fail_utterances: dict[int, BaseException] | None = None,
        partial_error: BaseException | None = None,
    ) -> None:
        self.texts, self.delay_s = texts, delay_s
        self.fail_utterances = fail_utterances or {}
        self.partial_error = partial_error
        self.calls: list[tuple[bool, float]] = []  # (partial, seconds of audio)

    async def transcribe(
        self, pcm: bytes, *, partial: bool = False, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        self.calls.append((partial, len(pcm) / 32000))
        await asyncio.sleep(self.delay_s)
        samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
        ids = sorted({int(v) - SPEECH_BASE for v in np.unique(samples) if v >= SPEECH_BASE})
        if partial and self.partial_error is not None:
            raise self.partial_error
        failing = [self.fail_utterances[i] for i in ids if i in self.fail_utterances]
        if failing and not partial:
            raise failing[0]
        text = " ".join(self.texts.get(i, "") for i in ids).strip()
        if partial:
            words = text.split()
            text = " ".join(words[: max(1, len(words) // 2)]) if words else ""
        return Transcript(
            text=text, language="en", duration_s=len(pcm) / 32000, processing_s=self.delay_s, partial=partial
        )


@dataclass
class ScriptedReply:
    tokens: Sequence[str] = ()
    token_delay_s: float = 0.02
    first_token_s: float = 0.1
    tool_calls: tuple[ToolCall, ...] = ()
    fail_after: int | None = None  # raise `error` after this many tokens
    error: BaseException | None = None  # what fail_after raises (default: an EngineError)
    error_on_close: BaseException | None = None  # raised when the consumer stops the stream early


@dataclass
class FakeLLM(LLMEngine):
    replies: list[ScriptedReply]
    requests: list[list[ChatMessage]] = field(default_factory=list)
    grounded: list[bool] = field(default_factory=list)  # per request: answering from notes
    closed_early: int = 0  # streams the consumer stopped before the end (cancel/barge-in)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        grounded: bool = False,
    ) -> AsyncGenerator[LLMDelta, None]:
        self.requests.append(list(messages))
        self.grounded.append(grounded)
        reply = self.replies.pop(0)
        finished = False
        try:
            await asyncio.sleep(reply.first_token_s)
            failure = reply.error or EngineError("upstream answered HTTP 500: model crashed")
            for i, token in enumerate(reply.tokens):
                if reply.fail_after is not None and i >= reply.fail_after:
                    raise failure
                if i:
                    await asyncio.sleep(reply.token_delay_s)
                yield LLMDelta(text=token)
            if reply.fail_after is not None and reply.fail_after >= len(reply.tokens):
                raise failure
            if reply.tool_calls:
                yield LLMDelta(tool_calls=reply.tool_calls, finish_reason="tool_calls")
            finished = True
        finally:
            if not finished:
                self.closed_early += 1
                if reply.error_on_close is not None:
                    raise reply.error_on_close


class FakeTTS(TTSEngine):
    """0.25 s of audio per word, in two chunks, after a short synthesis delay.

    Faults for sentences containing a key: ``fail_before`` raises before any audio,
    ``fail_mid`` after the first chunk; ``error_on_close`` is raised when stopped early."""

    sample_rate = 16_000

    def __init__(
        self,
        delay_s: float = 0.05,
        seconds_per_word: float = 0.25,
        *,
        fail_before: dict[str, BaseException] | None = None,
        fail_mid: dict[str, BaseException] | None = None,
        error_on_close: BaseException | None = None,
    ) -> None:
        self.delay_s, self.seconds_per_word = delay_s, seconds_per_word
        self.fail_before = fail_before or {}
        self.fail_mid = fail_mid or {}
        self.error_on_close = error_on_close
        self.started: list[str] = []
        self.stopped_early = 0

    def _failure(self, faults: dict[str, BaseException], text: str) -> BaseException | None:
        return next((error for key, error in faults.items() if key in text), None)

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        self.started.append(text)
        samples = int(len(text.split()) * self.seconds_per_word * self.sample_rate)
        pcm = np.full(samples, 1000, dtype="<i2").tobytes()
        half = (len(pcm) // 4) * 2
        finished = False
        try:
            for n, part in enumerate((pcm[:half], pcm[half:])):
                await asyncio.sleep(self.delay_s)
                failure = self._failure(self.fail_before if n == 0 else self.fail_mid, text)
                if failure is not None:
                    finished = True  # a failure, not a consumer that stopped early
                    raise failure
                yield AudioChunk(pcm=part, sample_rate=self.sample_rate)
            finished = True
        finally:
            if not finished:
                self.stopped_early += 1
                if self.error_on_close is not None:
                    raise self.error_on_close


# -- long-running fakes: many calls on one server (leak tests, load and soak benchmarks) ----------

# The looping reply: two sentences, 9 words, ~2.25 s of FakeTTS audio.
REPLY_TOKENS = ("Sure", ",", " here", " is", " an", " answer", ".", " That", " is", " all", ".")


class AnyVoiceASR(FakeASR):
    """Any voiced audio (a tone through Opus, not the exact SPEECH_BASE+k values) is one question."""

    def __init__(self, question: str = "What can you do for me today?", delay_s: float = 0.15) -> None:
        super().__init__({}, delay_s)
        self.question = question

    async def transcribe(
        self, pcm: bytes, *, partial: bool = False, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        await asyncio.sleep(self.delay_s)
        voiced = bool(pcm) and int(np.abs(np.frombuffer(pcm, dtype="<i2")).max()) >= SPEECH_BASE
        text = self.question if voiced else ""
        if partial:
            text = " ".join(text.split()[:3])
        return Transcript(
            text=text, language="en", duration_s=len(pcm) / 32000, processing_s=self.delay_s, partial=partial
        )


class EndlessLLM(FakeLLM):
    """Answers every request with the same reply, keeping no per-request state."""

    def __init__(self, tokens: Sequence[str] = REPLY_TOKENS) -> None:
        super().__init__([])
        self.tokens = tuple(tokens)

    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        grounded: bool = False,
    ) -> AsyncGenerator[LLMDelta, None]:
        self.replies.append(ScriptedReply(tokens=self.tokens))
        self.requests.clear()
        self.grounded.clear()
        return super().stream(
            messages, tools=tools, max_tokens=max_tokens, temperature=temperature, grounded=grounded
        )


class LeanVAD(FakeVAD):
    """Keeps no reference to the streams it hands out (each call's dies with the call)."""

    def stream(self) -> FakeVADStream:
        stream = super().stream()
        self.streams.clear()
        return stream


class LeanTTS(FakeTTS):
    """Keeps no record of what it said."""

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        self.started.clear()
        async for chunk in super().synthesize(text):
            yield chunk


def long_running_engines() -> CallEngines:
    return CallEngines(vad=LeanVAD(), asr=AnyVoiceASR(), llm=EndlessLLM(), tts=LeanTTS())


def install_fake_engines(engines: Engines) -> None:
    """Make a runtime's engine registry ready with the long-running fakes (no model is loaded)."""
    fakes = long_running_engines()
    engines.vad, engines.asr, engines.llm, engines.tts = fakes.vad, fakes.asr, fakes.llm, fakes.tts
    engines.load_s = {"fake": 0.0}
    engines.mark_loaded()


class FakeEngineSource:
    """What a CallManager needs of the engine registry, with the long-running fakes."""

    def __init__(self, engines: CallEngines | None = None, ready: bool = True) -> None:
        self.engines = engines or long_running_engines()
        self.ready = ready

    def for_call(self) -> CallEngines:
        return self.engines


class FlakyStore:
    """A real store that can be taken down: while ``down`` (or for the next ``fail_next`` calls)
    every write raises StoreUnavailable, as an unreachable database does."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.fail_next = 0
        self.failures = 0

    def _check(self) -> None:
        if self.down or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            self.failures += 1
            raise StoreUnavailable("database unreachable (injected)")

    async def touch_user(self, user_id: str) -> Any:
        self._check()
        return await self.store.touch_user(user_id)

    async def start_call(self, user_id: str, node_id: str, call_id: str | None = None) -> Any:
        self._check()
        return await self.store.start_call(user_id, node_id, call_id=call_id)

    async def add_turn(self, call_id: str, turn: NewTurn) -> Any:
        self._check()
        return await self.store.add_turn(call_id, turn)

    async def end_call(self, call_id: str, reason: str) -> Any:
        self._check()
        return await self.store.end_call(call_id, reason)


class FakePublisher:
    """Like OutreachPublisher: a known idempotency key returns the first event's id, unpublished;
    the next ``failures`` sends raise as an unreachable broker does."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.published: list[GreetEvent | AskEvent] = []
        self.ids: dict[str, str] = {}

    async def send(self, event: GreetEvent | AskEvent) -> str:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker unreachable")
        if event.idempotency_key not in self.ids:
            self.ids[event.idempotency_key] = event.id
            self.published.append(event)
        return self.ids[event.idempotency_key]

    async def send_many(self, events: Sequence[GreetEvent | AskEvent]) -> list[str | Exception]:
        outcomes: list[str | Exception] = []
        for event in events:
            try:
                outcomes.append(await self.send(event))
            except ConnectionError as exc:
                outcomes.append(exc)
        return outcomes


class FakeKnowledge:
    """A knowledge base that knows one thing (the Wi-Fi password, for questions naming "wifi"),
    takes ``delay_s`` to say so, and records what it was asked."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.asked: list[str] = []

    async def lookup(self, question: str) -> Consulted:
        self.asked.append(question)
        await asyncio.sleep(self.delay_s)
        if "wifi" not in question.lower():
            return Consulted(outcome="nothing", seconds=self.delay_s)
        source = Reference(doc_id="wifi.md", title="Wi-Fi", score=0.9, text="The password is banana.")
        notes = "Notes: the password is banana."
        return Consulted(outcome="found", notes=notes, references=(source,), seconds=self.delay_s)
