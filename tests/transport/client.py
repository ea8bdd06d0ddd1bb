"""An in-process aiortc caller for transport tests: sends a tone, records what it hears, collects
data-channel events. Signaling goes straight to a WebRTCGateway (no HTTP)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)

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


# -- a caller of a running server (HTTP signaling) ---------------------------------------------


class SpeechSource:
    """A caller's microphone: speech queued with ``say`` goes out at real time (the outbound
    track paces it), silence otherwise, so the far end's VAD hears a pause end each utterance."""

    sample_rate = 16_000
    _FRAME_BYTES = 640  # 20 ms of 16 kHz int16

    def __init__(self) -> None:
        self._pending = bytearray()

    def say(self, pcm: bytes) -> None:
        """Queue 16 kHz int16 mono speech after whatever is still being said."""
        self._pending += pcm

    @property
    def idle(self) -> bool:
        return not self._pending

    def read_frame(self) -> bytes:
        frame = bytes(self._pending[: self._FRAME_BYTES])
        del self._pending[: self._FRAME_BYTES]
        return frame.ljust(self._FRAME_BYTES, b"\x00")


@dataclass
class RemoteCall:
    """A call placed on a running server with ``POST /api/calls``, as a browser would."""

    pc: RTCPeerConnection
    track: PausableTrack
    call_id: str
    base_url: str = ""  # for calls placed over HTTP
    channel: RTCDataChannel | None = None  # "events": the server's events in, the page's words out
    received: list[Received] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def audio_since(self, t: float) -> np.ndarray:
        return np.frombuffer(b"".join(r.pcm for r in self.received if r.at >= t), dtype="<i2")

    async def wait_event(
        self, kind: str, since: int = 0, within_s: float = 30.0, **match: Any
    ) -> dict[str, Any]:
        """The first event of ``kind`` (and ``match``ing fields) at index ``since`` or later."""
        async with asyncio.timeout(within_s):
            while True:
                for event in self.events[since:]:
                    if event.get("kind") == kind and all(event.get(k) == v for k, v in match.items()):
                        return event
                await asyncio.sleep(0.02)

    async def say(self, message: dict[str, Any]) -> None:
        """Send ``message`` on the events channel as the page does, and return once it is on the
        wire: aiortc's close aborts the association, dropping whatever it had not sent yet."""
        assert self.channel is not None
        self.channel.send(json.dumps(message))
        async with asyncio.timeout(5):
            while self.channel.bufferedAmount:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        self.track.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.pc.close()


Signal = Callable[[str], Awaitable[tuple[str, str]]]  # offer SDP -> (call id, answer SDP)


async def place_call(signal: Signal, source: FrameSource, within_s: float = 10.0) -> RemoteCall:
    """Offer a call through ``signal`` and wait until media flows both ways and the events channel
    is open (events sent before that are dropped by the server)."""
    loop = asyncio.get_running_loop()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = PausableTrack(source)
    pc.addTrack(track)
    channel = pc.createDataChannel("events")
    remote: asyncio.Future[MediaStreamTrack] = loop.create_future()

    @pc.on("track")
    def on_track(t: MediaStreamTrack) -> None:
        if t.kind == "audio" and not remote.done():
            remote.set_result(t)

    try:
        with loopback_host_candidates():
            await pc.setLocalDescription(await pc.createOffer())
        call_id, answer = await signal(pc.localDescription.sdp)
        await pc.setRemoteDescription(RTCSessionDescription(filter_candidates(answer, is_loopback), "answer"))
    except BaseException:
        await pc.close()
        raise
    call = RemoteCall(pc=pc, track=track, call_id=call_id, channel=channel)

    @channel.on("message")
    def on_message(message: str | bytes) -> None:
        call.events.append(json.loads(message))

    queue: asyncio.Queue[bytes | None] = asyncio.Queue(100_000)

    async def record() -> None:
        while (pcm := await queue.get()) is not None:
            call.received.append(Received(loop.time(), pcm))

    try:
        async with asyncio.timeout(within_s):
            inbound = InboundAudio(await remote, queue, loop.time)
            call.tasks += [loop.create_task(inbound.run()), loop.create_task(record())]
            while not (channel.readyState == "open" and call.received):
                await asyncio.sleep(0.01)
    except BaseException:
        await call.close()
        raise
    return call


async def call_server(
    base_url: str, source: FrameSource, user_id: str | None = None, within_s: float = 10.0
) -> RemoteCall:
    """Call ``voiceagent serve`` at ``base_url`` with ``POST /api/calls``, as a browser would."""
    import httpx

    async def over_http(sdp: str) -> tuple[str, str]:
        async with httpx.AsyncClient(base_url=base_url, timeout=within_s) as http:
            response = await http.post("/api/calls", json={"sdp": sdp, "type": "offer", "user_id": user_id})
        response.raise_for_status()
        answer = response.json()
        return answer["call_id"], answer["sdp"]

    call = await place_call(over_http, source, within_s)
    call.base_url = base_url
    return call


@dataclass(kw_only=True)
class Client(RemoteCall):
    """A caller of a WebRTCGateway in this process, with the server side of its call at hand."""

    call: CallTransport
    answer: str


async def connect(
    gateway: WebRTCGateway, server_source: FrameSource, client_source: FrameSource | None = None
) -> Client:
    """Call ``gateway`` directly (no HTTP) and wait until media flows both ways, the events
    channel is open and the gateway sees the call connected."""
    accepted: list[tuple[CallTransport, str]] = []

    async def direct(sdp: str) -> tuple[str, str]:
        call, answer = await gateway.accept(sdp, "offer", server_source)
        accepted.append((call, answer))
        return call.id, answer

    remote = await place_call(direct, client_source or ToneSource(440.0))
    call, answer = accepted[0]
    try:
        async with asyncio.timeout(10):
            while not call.connected:
                await asyncio.sleep(0.01)
    except BaseException:
        await remote.close()
        raise
    shared = {f.name: getattr(remote, f.name) for f in fields(RemoteCall)}
    return Client(**shared, call=call, answer=answer)
