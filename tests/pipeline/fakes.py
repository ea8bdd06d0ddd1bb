"""Fake engines for conversation tests, all on the event loop's clock (virtual under looptime).

Speech is encoded in the audio itself: a frame whose samples are `SPEECH_BASE + k` belongs to
utterance k, so the fake ASR knows what was "said" and the fake VAD hears it as speech.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

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

SPEECH_BASE = 2000
FRAME_BYTES = 640  # 20 ms at 16 kHz


def frame(utterance: int | None) -> bytes:
    value = 0 if utterance is None else SPEECH_BASE + utterance
    return np.full(FRAME_BYTES // 2, value, dtype="<i2").tobytes()


class FakeVADStream(VADStream):
    """Silero-like hysteresis on frames that are speech or not."""

    def __init__(self, min_speech_s: float, min_silence_s: float) -> None:
        self.min_speech_s, self.min_silence_s = min_speech_s, min_silence_s
        self.t = 0.0
        self.speaking = False
        self.run_start: float | None = None  # start of the current run of speech/silence frames
        self.closed = False

    async def process(self, pcm: bytes) -> VADResult:
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
    def __init__(self, min_speech_s: float = 0.25, min_silence_s: float = 0.4) -> None:
        self.args = (min_speech_s, min_silence_s)
        self.streams: list[FakeVADStream] = []

    def stream(self) -> FakeVADStream:
        self.streams.append(FakeVADStream(*self.args))
        return self.streams[-1]


class FakeASR(ASREngine):
    """Knows the text of each utterance id; a partial pass returns its first half."""

    def __init__(self, texts: dict[int, str], delay_s: float = 0.15) -> None:
        self.texts, self.delay_s = texts, delay_s
        self.calls: list[tuple[bool, float]] = []  # (partial, seconds of audio)

    async def transcribe(
        self, pcm: bytes, *, partial: bool = False, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        self.calls.append((partial, len(pcm) / 32000))
        await asyncio.sleep(self.delay_s)
        samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
        ids = sorted({int(v) - SPEECH_BASE for v in np.unique(samples) if v >= SPEECH_BASE})
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
    fail_after: int | None = None  # raise EngineError after this many tokens


@dataclass
class FakeLLM(LLMEngine):
    replies: list[ScriptedReply]
    requests: list[list[ChatMessage]] = field(default_factory=list)
    closed_early: int = 0  # streams the consumer stopped before the end (cancel/barge-in)

    async def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncGenerator[LLMDelta, None]:
        self.requests.append(list(messages))
        reply = self.replies.pop(0)
        finished = False
        try:
            await asyncio.sleep(reply.first_token_s)
            for i, token in enumerate(reply.tokens):
                if reply.fail_after is not None and i >= reply.fail_after:
                    raise EngineError("upstream answered HTTP 500: model crashed")
                if i:
                    await asyncio.sleep(reply.token_delay_s)
                yield LLMDelta(text=token)
            if reply.fail_after is not None and reply.fail_after >= len(reply.tokens):
                raise EngineError("upstream answered HTTP 500: model crashed")
            if reply.tool_calls:
                yield LLMDelta(tool_calls=reply.tool_calls, finish_reason="tool_calls")
            finished = True
        finally:
            if not finished:
                self.closed_early += 1


class FakeTTS(TTSEngine):
    """0.25 s of audio per word, in two chunks, after a short synthesis delay."""

    sample_rate = 16_000

    def __init__(self, delay_s: float = 0.05, seconds_per_word: float = 0.25) -> None:
        self.delay_s, self.seconds_per_word = delay_s, seconds_per_word
        self.started: list[str] = []
        self.stopped_early = 0

    async def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        self.started.append(text)
        samples = int(len(text.split()) * self.seconds_per_word * self.sample_rate)
        pcm = np.full(samples, 1000, dtype="<i2").tobytes()
        half = (len(pcm) // 4) * 2
        finished = False
        try:
            for part in (pcm[:half], pcm[half:]):
                await asyncio.sleep(self.delay_s)
                yield AudioChunk(pcm=part, sample_rate=self.sample_rate)
            finished = True
        finally:
            if not finished:
                self.stopped_early += 1
