"""An in-process aiortc caller for transport tests: sends a tone, records what it hears, collects
data-channel events. Signaling goes straight to a WebRTCGateway (no HTTP)."""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from voiceagent.transport.ice import filter_candidates, is_loopback, loopback_host_candidates
from voiceagent.transport.tracks import FrameSource, InboundAudio, OutboundTrack
from voiceagent.transport.webrtc import CallTransport, WebRTCGateway


class ToneSource:
    """A FrameSource playing a continuous sine (phase kept across frames)."""

    def __init__(self, freq: float, sample_rate: int = 48_000, amplitude: float = 0.3) -> None:
        self.sample_rate = sample_rate
        self.freq = freq
        self.amplitude = amplitude
        self._n = 0

    def read_frame(self) -> bytes:
        count = self.sample_rate // 50
        t = (self._n + np.arange(count)) / self.sample_rate
        self._n += count
        pcm: bytes = (self.amplitude * 32767 * np.sin(2 * math.pi * self.freq * t)).astype("<i2").tobytes()
        return pcm


def tone(freq: float, seconds: float, rate: int, amplitude: float = 0.3) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm: bytes = (amplitude * 32767 * np.sin(2 * math.pi * freq * t)).astype("<i2").tobytes()
    return pcm


class PausableTrack(OutboundTrack):
    """Stops handing frames to aiortc while paused: the peer sees RTP stop, nothing else."""

    def __init__(self, source: FrameSource) -> None:
        super().__init__(source)
        self.sending = asyncio.Event()
        self.sending.set()

    async def recv(self) -> av.AudioFrame:
        await self.sending.wait()
        return await super().recv()


@dataclass
class Received:
    at: float  # loop time the 20 ms frame was decoded
    pcm: bytes  # 16 kHz mono int16


@dataclass
class Client:
    pc: RTCPeerConnection
    track: PausableTrack
    call: CallTransport
    answer: str
    received: list[Received] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def audio_since(self, t: float) -> np.ndarray:
        return np.frombuffer(b"".join(r.pcm for r in self.received if r.at >= t), dtype="<i2")

    async def close(self) -> None:
        self.track.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pc.close()


async def open_offer(*kinds: str) -> tuple[RTCPeerConnection, str]:
    """A real aiortc offer with the given transceivers; the offering peer stays up (never answered)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for kind in kinds:
        pc.addTransceiver(kind)
    pc.createDataChannel("events")
    with loopback_host_candidates():
        await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def offer_sdp(*kinds: str) -> str:
    """A real aiortc offer with the given transceivers (the offering peer is discarded)."""
    pc, sdp = await open_offer(*kinds)
    await pc.close()
    return sdp


async def connect(
    gateway: WebRTCGateway, server_source: FrameSource, client_source: FrameSource | None = None
) -> Client:
    """Call ``gateway`` and wait until media flows both ways and the events channel is open."""
    loop = asyncio.get_running_loop()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = PausableTrack(client_source or ToneSource(440.0))
    pc.addTrack(track)
    channel = pc.createDataChannel("events")
    remote: asyncio.Future[MediaStreamTrack] = loop.create_future()

    @pc.on("track")
    def on_track(t: MediaStreamTrack) -> None:
        if t.kind == "audio" and not remote.done():
            remote.set_result(t)

    with loopback_host_candidates():
        await pc.setLocalDescription(await pc.createOffer())
    try:
        call, answer = await gateway.accept(pc.localDescription.sdp, "offer", server_source)
    except BaseException:
        await pc.close()
        raise
    await pc.setRemoteDescription(RTCSessionDescription(filter_candidates(answer, is_loopback), "answer"))
    client = Client(pc=pc, track=track, call=call, answer=answer)

    @channel.on("message")
    def on_message(message: str | bytes) -> None:
        client.events.append(json.loads(message))

    queue: asyncio.Queue[bytes | None] = asyncio.Queue(100_000)
    inbound = InboundAudio(await asyncio.wait_for(remote, 5), queue, loop.time)

    async def record() -> None:
        while (pcm := await queue.get()) is not None:
            client.received.append(Received(loop.time(), pcm))

    client.tasks += [loop.create_task(inbound.run()), loop.create_task(record())]
    async with asyncio.timeout(10):
        while not (call.connected and channel.readyState == "open" and client.received):
            await asyncio.sleep(0.01)
    return client
