"""What every engine kind promises: typed messages in and out, async, streaming where it can.

One base class per kind (VAD, ASR, LLM, TTS, embeddings), one module per backend beside it. A
loaded model is shared by every call in the process; anything per call (VAD state, partial
buffers) lives in a stream object the engine hands out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

PCM_RATE = 16_000  # what VAD and ASR take: 16 kHz mono int16


class EngineError(RuntimeError):
    """Base of every engine failure; the message is meant for a log line or an operator."""


class ModelUnavailable(EngineError):
    """Model files are missing or corrupt (checksum), or the model server is not there."""


class BadAudio(EngineError, ValueError):
    """Empty, non-finite, wrong-rate or otherwise unusable audio."""


class BadText(EngineError, ValueError):
    """Text an engine cannot speak or read (nothing speakable left after cleaning, too long)."""


class EngineTimeout(EngineError, TimeoutError):
    pass


class EngineOverloaded(EngineError):
    """The engine's queue is full: back-pressure, try later or shed the request."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)


# -- VAD ----------------------------------------------------------------------------------------


class VADEvent(_Message):
    kind: Literal["speech_start", "speech_end"]
    at_s: float = Field(description="stream time of the event, seconds since the stream began")


class VADResult(_Message):
    probability: float = Field(ge=0, le=1, description="speech probability of the latest block")
    speaking: bool
    events: tuple[VADEvent, ...] = ()


class VADStream(ABC):
    """Per-call voice activity state: feed 16 kHz int16 PCM of any length, in order."""

    @abstractmethod
    async def process(self, pcm: bytes) -> VADResult: ...

    @abstractmethod
    def reset(self) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook, most streams hold nothing
        """Give back per-stream resources (e.g. a model instance) when the call ends."""


class VADEngine(ABC):
    @abstractmethod
    def stream(self) -> VADStream: ...


# -- ASR ----------------------------------------------------------------------------------------


class Word(_Message):
    text: str
    start_s: float
    end_s: float
    probability: float


class Transcript(_Message):
    text: str
    language: str
    duration_s: float = Field(description="audio length transcribed")
    processing_s: float = Field(description="wall time the engine took")
    words: tuple[Word, ...] = ()
    partial: bool = False


class ASREngine(ABC):
    @abstractmethod
    async def transcribe(
        self, pcm: bytes, *, partial: bool = False, language: str | None = None, prompt: str | None = None
    ) -> Transcript:
        """Text of an utterance (16 kHz int16 mono). ``partial`` asks for a cheaper pass over a
        growing buffer while the user still speaks."""


# -- LLM ----------------------------------------------------------------------------------------


class ToolCall(_Message):
    id: str
    name: str
    arguments: str = Field(description="JSON text, as the model wrote it")


class ChatMessage(_Message):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


class ToolSpec(_Message):
    name: str
    description: str
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class LLMDelta(_Message):
    """A piece of the reply: text as it streams, tool calls once complete."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None


class LLMEngine(ABC):
    @abstractmethod
    def stream(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float | None = None,
        grounded: bool = False,
    ) -> AsyncGenerator[LLMDelta, None]:
        """Deltas as the model produces them. Stopping iteration (or cancelling the task)
        cancels the request upstream. ``grounded``: the answer should repeat words from notes
        in the prompt (sampling that discourages repeating the prompt is relaxed)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook for engines holding clients
        """Release connections; the engine is not used afterwards."""


# -- TTS ----------------------------------------------------------------------------------------


class AudioChunk(_Message):
    pcm: bytes = Field(repr=False, description="int16 mono little-endian")
    sample_rate: int
    text: str = Field("", description="the text this audio speaks, when known")

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / 2 / self.sample_rate


class TTSEngine(ABC):
    sample_rate: int

    @abstractmethod
    def synthesize(self, text: str) -> AsyncGenerator[AudioChunk, None]:
        """Audio as it is produced; stopping iteration cancels the rest."""


# -- Embeddings ---------------------------------------------------------------------------------


class EmbeddingEngine(ABC):
    dimensions: int

    @abstractmethod
    async def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised rows, one per text, shaped for questions."""

    @abstractmethod
    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised rows, one per text, shaped for documents."""
