"""Audio between aiortc and the pipeline: a real-time paced outbound track and an inbound reader.

Outbound has no buffer of its own: every 20 ms it pulls one frame from a ``FrameSource`` (the
call's ``Playout``), so a barge-in flush of the Playout is heard as silence one frame later.
Inbound turns whatever aiortc decodes (48 kHz stereo Opus) into the 16 kHz mono frames that VAD
and ASR take, into a bounded queue that drops the oldest frame rather than grow.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

log = logging.getLogger(__name__)

FRAME_S = 0.020
OUT_RATE = 48_000
OUT_SAMPLES = 960  # 20 ms at 48 kHz
IN_RATE = 16_000
IN_SAMPLES = 320  # 20 ms at 16 kHz
IN_FRAME_BYTES = IN_SAMPLES * 2


class FrameSource(Protocol):
    """Where the outbound track pulls the agent's audio from (``Playout`` is one)."""

    sample_rate: int

    def read_frame(self) -> bytes:
        """Exactly 20 ms of int16 mono PCM at ``sample_rate`` (silence when idle); never blocks."""
        ...


@dataclass
class OutboundStats:
    frames: int = 0
    late_frames: int = 0  # handed over more than one frame after their scheduled time
    resyncs: int = 0  # so late (loop stalled) the clock was re-anchored; that audio time is lost
    max_late_s: float = 0.0
    source_errors: int = 0


def _pcm_frame(pcm: bytes, rate: int) -> av.AudioFrame:
    frame = av.AudioFrame(format="s16", layout="mono", samples=len(pcm) // 2)
    frame.planes[0].update(pcm)
    frame.sample_rate = rate
    return frame


def _frame_pcm(frame: av.AudioFrame) -> bytes:
    """Packed s16 mono bytes of a resampler output (planes may carry alignment padding)."""
    return bytes(frame.planes[0])[: frame.samples * 2]


class OutboundTrack(MediaStreamTrack):
    """48 kHz mono audio paced at real time (frame n is due at start + n·20 ms on the loop clock).

    aiortc's sender calls ``recv()`` as fast as it returns, so the pacing here is what keeps the
    browser's jitter buffer fed without bursts. When the loop stalls by more than
    ``resync_after_s`` the schedule is re-anchored: sending the backlog at once would only
    overflow the far end's jitter buffer.
    """

    kind = "audio"

    def __init__(
        self,
        source: FrameSource,
        *,
        resync_after_s: float = 0.2,
        on_late: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self._source = source
        self._resync_after_s = resync_after_s
        self._on_late = on_late
        self._resampler = (
            None
            if source.sample_rate == OUT_RATE
            else av.AudioResampler(format="s16", layout="mono", rate=OUT_RATE)
        )
        self._carry = b""  # resampler output beyond one frame (< 20 ms + filter delay)
        self._start: float | None = None
        self._n = 0
        self._time_base = fractions.Fraction(1, OUT_RATE)
        self.stats = OutboundStats()

    def stop(self) -> None:
        super().stop()
        # An FFmpeg resampler's filter graph runs native threads until it is freed; held in a
        # reference cycle (aiortc's peer connection) that would wait for the cyclic collector.
        self._resampler = None

    def _pull(self) -> bytes:
        try:
            return self._source.read_frame()
        except Exception:
            # A broken source must not kill aiortc's sender loop: send silence, log once.
            if not self.stats.source_errors:
                log.exception("frame source failed; sending silence")
            self.stats.source_errors += 1
            return b""

    def _next_pcm(self) -> bytes:
        need = OUT_SAMPLES * 2
        if self._resampler is None and not self._carry:
            pcm = self._pull()
            if len(pcm) == need:
                return pcm
            self._carry = pcm
        for _ in range(4):  # a 20 ms source frame yields ~20 ms; bounded in case it yields nothing
            if len(self._carry) >= need:
                break
            pcm = self._pull()
            if not pcm:
                break
            if self._resampler is None:
                self._carry += pcm
            else:
                for out in self._resampler.resample(_pcm_frame(pcm, self._source.sample_rate)):
                    self._carry += _frame_pcm(out)
        chunk, self._carry = self._carry[:need], self._carry[need:]
        return chunk.ljust(need, b"\x00")

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._n * FRAME_S
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        late = loop.time() - due
        stats = self.stats
        stats.max_late_s = max(stats.max_late_s, late)
        if late > FRAME_S:
            stats.late_frames += 1
            if self._on_late is not None:
                self._on_late()
        if late > self._resync_after_s:
            stats.resyncs += 1
            self._start = loop.time() - self._n * FRAME_S

        frame = _pcm_frame(self._next_pcm(), OUT_RATE)
        if self.readyState != "live":  # stopped while we waited
            raise MediaStreamError
        frame.pts = self._n * OUT_SAMPLES
        frame.time_base = self._time_base
        self._n += 1
        stats.frames += 1
        return frame


class InboundAudio:
    """Reads the caller's track into 16 kHz mono int16 20 ms frames (640 bytes each).

    The queue is bounded: if the consumer (VAD/ASR) falls behind, the oldest audio is dropped
    and counted, so memory stays flat and what is kept is the most recent speech.
    """

    def __init__(self, track: MediaStreamTrack, queue: asyncio.Queue[bytes | None], now: Callable[[], float]):
        self._track = track
        self._queue = queue
        self._now = now
        self._pending = b""
        self.last_rx: float | None = None
        self.rx_frames = 0  # decoded frames from aiortc
        self.frames_out = 0  # 20 ms frames queued
        self.dropped = 0  # oldest frames discarded because the queue was full
        self.ended = False

    def push(self, item: bytes | None) -> None:
        """Queue without blocking, dropping the oldest frame when full (None = end of audio)."""
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    async def run(self) -> None:
        # Local to this run, so its filter graph (and the native threads FFmpeg starts for it) is
        # freed the moment the call's audio ends, not whenever a gc cycle runs.
        resampler = av.AudioResampler(format="s16", layout="mono", rate=IN_RATE)
        try:
            while True:
                frame = await self._track.recv()
                self.last_rx = self._now()
                self.rx_frames += 1
                if not isinstance(frame, av.AudioFrame):
                    continue
                for out in resampler.resample(frame):
                    self._pending += _frame_pcm(out)
                while len(self._pending) >= IN_FRAME_BYTES:
                    self.push(self._pending[:IN_FRAME_BYTES])
                    self._pending = self._pending[IN_FRAME_BYTES:]
                    self.frames_out += 1
        except MediaStreamError:
            self.ended = True
