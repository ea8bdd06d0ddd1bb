"""The agent's outgoing audio: queued by the pipeline, consumed at real time by the transport.

`read_frame()` is what the outbound track calls every 20 ms; it never blocks and returns silence
when nothing is queued. `flush()` drops everything queued at once (barge-in). `hold()` keeps the
queue but plays silence until `release()`: a reply prepared before the caller's turn is surely
over waits there, and so does the agent's voice while a sound from the caller may or may not be
an interruption (resumed where it stopped if it was not). A ledger remembers which text each
stretch of audio speaks, so after a flush the conversation knows what the user actually heard.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

import numpy as np

from voiceagent.engines.audio import float_to_pcm16, pcm16_to_float, resample
from voiceagent.engines.base import AudioChunk


@dataclass
class _Segment:
    start: int  # sample offsets within the current reply
    end: int
    text: str


class Playout:
    def __init__(self, sample_rate: int = 48_000, frame_s: float = 0.02) -> None:
        self.sample_rate = sample_rate
        self.frame_samples = round(sample_rate * frame_s)
        self._silence = b"\x00\x00" * self.frame_samples
        self._queue: deque[bytes] = deque()  # int16 frames, each exactly one frame long
        self._partial = b""  # tail shorter than a frame, waiting for more audio
        self._segments: list[_Segment] = []
        self._enqueued = 0  # samples queued in the current reply
        self._played = 0  # samples of the current reply sent to the transport
        self._drained = asyncio.Event()
        self._drained.set()
        self.held = False

    @property
    def queued_s(self) -> float:
        return (len(self._queue) * self.frame_samples + len(self._partial) // 2) / self.sample_rate

    @property
    def played_s(self) -> float:
        return self._played / self.sample_rate

    def start_reply(self) -> None:
        """A new reply: the ledger (and what counts as heard) starts from zero."""
        self.flush()
        self._segments.clear()
        self._enqueued = self._played = 0

    def enqueue(self, chunk: AudioChunk) -> None:
        samples = pcm16_to_float(chunk.pcm, chunk.sample_rate)
        fresh = float_to_pcm16(resample(samples, chunk.sample_rate, self.sample_rate))
        count = len(fresh) // 2
        pcm = self._partial + fresh
        if chunk.text:
            self._segments.append(_Segment(self._enqueued, self._enqueued + count, chunk.text))
        elif self._segments:
            self._segments[-1].end = self._enqueued + count  # more audio of the same sentence
        self._enqueued += count
        step = self.frame_samples * 2
        whole = len(pcm) - len(pcm) % step
        self._queue.extend(pcm[i : i + step] for i in range(0, whole, step))
        self._partial = pcm[whole:]
        self._drained.clear()

    def end_reply(self) -> None:
        """No more audio is coming for this reply: pad the tail so it plays out."""
        if self._partial:
            self._queue.append(self._partial.ljust(self.frame_samples * 2, b"\x00"))
            self._partial = b""
        if not self._queue:
            self._drained.set()

    def hold(self) -> None:
        """Play silence from the next frame on, keeping what is queued (and still queueing)."""
        self.held = True

    def release(self) -> None:
        """Play on from where `hold` stopped."""
        self.held = False

    @property
    def audible(self) -> bool:
        """The caller hears the agent now (audio queued and not held)."""
        return bool(self._queue) and not self.held

    def read_frame(self) -> bytes:
        """One frame of int16 mono at ``sample_rate``: queued audio, else silence."""
        if not self._queue or self.held:
            return self._silence
        frame = self._queue.popleft()
        self._played += self.frame_samples
        if not self._queue and not self._partial:
            self._drained.set()
        return frame

    def flush(self) -> float:
        """Drop whatever is queued (and lift a hold); return how many seconds were dropped."""
        dropped = self.queued_s
        self.held = False
        self._queue.clear()
        self._partial = b""
        self._drained.set()
        return dropped

    async def drained(self) -> None:
        await self._drained.wait()

    def heard_text(self) -> str:
        """The reply's text up to where playout got: whole sentences, then the words of the
        sentence being spoken in proportion to how much of it played."""
        heard: list[str] = []
        for segment in self._segments:
            if self._played >= segment.end:
                heard.append(segment.text)
                continue
            if self._played > segment.start:
                words = segment.text.split()
                fraction = (self._played - segment.start) / max(1, segment.end - segment.start)
                spoken = words[: int(np.floor(len(words) * fraction))]
                if spoken:
                    heard.append(" ".join(spoken))
            break
        return " ".join(heard)
