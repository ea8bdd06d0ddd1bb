"""WebRTC calls with aiortc: offer validation, one peer connection per call, clean teardown.

Signaling is a single HTTP round trip (aiortc has no trickle ICE): the browser gathers all its
candidates before POSTing the offer and the gateway gathers all of its own before answering.
aiortc never reports "disconnected", so a call whose caller vanished is found by a watchdog:
no inbound audio for ``dead_peer_timeout_s``, the remote track ended, the connection failed or
closed, or it never connected within ``connect_timeout_s``. A caller who hangs up says so first
(``{"kind": "hangup"}`` on the events channel), so the call ends as a hang-up, not as a vanished peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.sdp import SessionDescription

from voiceagent.transport.ice import filter_candidates, is_loopback, loopback_host_candidates
from voiceagent.transport.settings import TransportSettings
from voiceagent.transport.tracks import FrameSource, InboundAudio, OutboundStats, OutboundTrack

__all__ = ["HANGUP", "CallTransport", "FrameSource", "SignalingError", "WebRTCGateway"]

log = logging.getLogger(__name__)

EVENTS_LABEL = "events"
MAX_EVENT_BYTES = 16 * 1024  # well under SCTP's usual 64 KiB message limit
MAX_EVENT_BACKLOG = 1024 * 1024  # a page that stopped reading must not grow our SCTP buffer
MAX_PAGE_MESSAGE_BYTES = 1024  # what the page says is tiny; anything bigger is not read
HANGUP = "hangup"  # the close reason of a call the caller hung up (page message or DELETE)
INBOUND_QUEUE_FRAMES = 250  # 5 s of caller audio


class SignalingError(Exception):
    """An offer the gateway refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _shrink_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    if isinstance(value, dict):
        return {k: _shrink_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_shrink_strings(v, limit) for v in value]
    return value


def _shorten_inbound_jitter_buffer(pc: RTCPeerConnection, packets: int) -> None:
    """aiortc fixes its audio receive buffer at 4 packets of prefetch and has no setting for it,
    so the receiver's buffer is replaced (checked against aiortc's private name, which an aiortc
    upgrade may change: then its default stays and a warning says so)."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio" or receiver is None:
            continue
        attribute = "_RTCRtpReceiver__jitter_buffer"
        if not isinstance(getattr(receiver, attribute, None), JitterBuffer):
            log.warning("aiortc's receive jitter buffer is not where expected: keeping its default")
            return
        setattr(receiver, attribute, JitterBuffer(capacity=16, prefetch=packets))


def encode_event(payload: dict[str, Any], max_bytes: int = MAX_EVENT_BYTES) -> str:
    """JSON for the data channel, at most ``max_bytes``: long strings (a runaway transcript) are
    cut, halving the per-string limit until it fits; failing that only the kind is sent."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)
    limit = max_bytes
    while len(text.encode()) > max_bytes and limit > 16:
        limit //= 2
        text = json.dumps(
            _shrink_strings(payload, limit), ensure_ascii=False, separators=(",", ":"), default=str
        )
    if len(text.encode()) > max_bytes:
        text = json.dumps({"kind": str(payload.get("kind", ""))[:64], "truncated": True})
    return text


class CallTransport:
    """One caller: a peer connection, the agent's outbound audio, the caller's inbound audio and
    the "events" data channel. Created by ``WebRTCGateway.accept``."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        source: FrameSource,
        settings: TransportSettings,
        *,
        on_late: Callable[[], None] | None = None,
        on_closed: Callable[[CallTransport], None] | None = None,
    ) -> None:
        self.id = secrets.token_urlsafe(12)
        self.closed = asyncio.Event()
        self.close_reason: str | None = None
        self.events_sent = 0
        self.events_skipped = 0  # channel not open yet, or the page stopped reading
        self._pc = pc
        self._settings = settings
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._created_at = self._loop.time()
        self._connected_at: float | None = None
        self._outbound = OutboundTrack(source, on_late=on_late)
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(INBOUND_QUEUE_FRAMES)
        self._inbound: InboundAudio | None = None
        self._channel: RTCDataChannel | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closer: asyncio.Task[None] | None = None

    # -- public -------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected_at is not None and not self.closed.is_set()

    @property
    def outbound_stats(self) -> OutboundStats:
        return self._outbound.stats

    @property
    def inbound_dropped(self) -> int:
        return self._inbound.dropped if self._inbound is not None else 0

    @property
    def peer_connection(self) -> RTCPeerConnection:
        return self._pc

    async def frames(self) -> AsyncIterator[bytes]:
        """The caller's audio, 16 kHz mono int16, 640 bytes per 20 ms; ends when the call closes."""
        while not (self.closed.is_set() and self._queue.empty()):
            frame = await self._queue.get()
            if frame is None:
                return
            yield frame

    def send_event(self, payload: dict[str, Any]) -> None:
        """Send ``payload`` as JSON to the page; skipped (and counted) while the channel is not
        open, since events are UI updates that are stale by the time it would be."""
        channel = self._channel
        if (
            channel is None
            or channel.readyState != "open"
            or channel.bufferedAmount > MAX_EVENT_BACKLOG
            or self.closed.is_set()
        ):
            self.events_skipped += 1
            return
        channel.send(encode_event(payload))
        self.events_sent += 1

    async def close(self, reason: str) -> None:
        """Hang up (idempotent; the first reason wins). Teardown runs in its own task and is
        shielded, so a caller cancelled mid-way (an HTTP client gone) cannot leave it half done."""
        self.request_close(reason)
        assert self._closer is not None
        await asyncio.shield(self._closer)

    def request_close(self, reason: str) -> None:
        """Start closing without waiting (for callbacks that cannot await)."""
        if self._closer is None:
            self.close_reason = reason
            self._closer = self._loop.create_task(self._teardown(), name=f"call-{self.id}-close")

    # -- wiring (called by the gateway) ---------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = self._loop.create_task(coro, name=f"call-{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wire(self) -> None:
        pc = self._pc

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self._inbound is None:
                self._inbound = InboundAudio(track, self._queue, self._loop.time)
                self._spawn(self._inbound.run(), "inbound")

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == EVENTS_LABEL and self._channel is None:
                self._channel = channel
                channel.on("message", self._on_page_message)

        @pc.on("connectionstatechange")
        def on_connection_state() -> None:
            state = pc.connectionState
            if state == "connected" and self._connected_at is None:
                self._connected_at = self._loop.time()
            elif state in ("failed", "closed"):
                self.request_close(f"connection-{state}")

        pc.addTrack(self._outbound)

    def _on_page_message(self, message: str | bytes) -> None:
        """The page's hang-up. It travels inside the connection, ahead of the peer's close, so the
        call is a hang-up whether the peer's close or the page's DELETE reaches us first."""
        if len(message) > MAX_PAGE_MESSAGE_BYTES:
            return
        try:
            said = json.loads(message)
        except ValueError:
            return
        if isinstance(said, dict) and said.get("kind") == HANGUP:
            self.request_close(HANGUP)

    def _start_watchdog(self) -> None:
        self._spawn(self._watchdog(), "watchdog")

    async def _watchdog(self) -> None:
        s = self._settings
        period = min(0.5, s.dead_peer_timeout_s / 4, s.connect_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = self._loop.time()
            if self._connected_at is None:
                if now - self._created_at > s.connect_timeout_s:
                    return self.request_close("connect-timeout")
                continue
            inbound = self._inbound
            if inbound is not None and inbound.ended:
                return self.request_close("remote-track-ended")
            last = max(self._connected_at, inbound.last_rx or 0.0) if inbound else self._connected_at
            if now - last > s.dead_peer_timeout_s:
                return self.request_close("no-inbound-audio")

    async def _teardown(self) -> None:
        log.info("call %s closing: %s", self.id, self.close_reason)
        try:
            self._outbound.stop()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self._pc.close()
            except Exception:
                log.exception("call %s: closing the peer connection failed", self.id)
        finally:
            if self._inbound is not None:
                self._inbound.push(None)
            else:
                self._queue.put_nowait(None)
            self.closed.set()
            if self._on_closed is not None:
                self._on_closed(self)


class WebRTCGateway:
    """Accepts offers and owns the active calls. Counters are plain attributes for /metrics."""

    def __init__(self, settings: TransportSettings) -> None:
        self.settings = settings
        self.calls: dict[str, CallTransport] = {}
        self.calls_accepted = 0
        self.calls_rejected = 0
        self.calls_closed = 0
        self.late_frames = 0  # outbound frames sent > 20 ms after their due time, all calls
        self._negotiating = 0
        self._inbound_dropped_closed = 0

    @property
    def active(self) -> int:
        return len(self.calls)

    @property
    def inbound_frames_dropped(self) -> int:
        return self._inbound_dropped_closed + sum(c.inbound_dropped for c in self.calls.values())

    def get(self, call_id: str) -> CallTransport | None:
        return self.calls.get(call_id)

    def validate_offer(self, sdp: str, type_: str) -> RTCSessionDescription:
        """Everything that can be refused before spending a peer connection on it."""
        if len(sdp.encode()) > self.settings.max_offer_bytes:
            raise SignalingError(413, f"offer larger than {self.settings.max_offer_bytes} bytes")
        if type_ != "offer":
            raise SignalingError(400, f"type must be 'offer', got {type_!r}")
        if not sdp.startswith("v=0"):
            raise SignalingError(400, "malformed SDP: must start with 'v=0'")
        try:
            parsed = SessionDescription.parse(sdp)
        except Exception as e:  # aiortc raises ValueError/KeyError/IndexError/... on junk
            raise SignalingError(400, f"malformed SDP: {type(e).__name__}: {e}") from None
        audio = [m for m in parsed.media if m.kind == "audio" and m.port != 0]
        if not audio:
            raise SignalingError(400, "offer has no audio m-line")
        if not any(codec.name.lower() == "opus" for m in audio for codec in m.rtp.codecs):
            raise SignalingError(400, "offer's audio has no Opus codec")
        if self.settings.loopback_only:
            sdp = filter_candidates(sdp, is_loopback)
        return RTCSessionDescription(sdp=sdp, type="offer")

    async def accept(self, sdp: str, type_: str, source: FrameSource) -> tuple[CallTransport, str]:
        """Validate the offer, set up the call, gather all candidates; return (call, answer SDP).

        Raises SignalingError (400/413/503); the caller owns the returned call and must close it.
        """
        try:
            offer = self.validate_offer(sdp, type_)
            if self.active + self._negotiating >= self.settings.max_calls:
                raise SignalingError(503, f"too many calls (limit {self.settings.max_calls})")
        except SignalingError:
            self.calls_rejected += 1
            raise
        self._negotiating += 1
        try:
            call, answer = await self._negotiate(offer, source)
        except SignalingError:
            self.calls_rejected += 1
            raise
        finally:
            self._negotiating -= 1
        self.calls[call.id] = call
        self.calls_accepted += 1
        call._start_watchdog()
        return call, answer

    async def _negotiate(
        self, offer: RTCSessionDescription, source: FrameSource
    ) -> tuple[CallTransport, str]:
        ice_servers = [
            RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
            for s in self.settings.ice_servers
        ]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers))
        call = CallTransport(pc, source, self.settings, on_late=self._count_late, on_closed=self._forget)
        try:
            call._wire()
            await pc.setRemoteDescription(offer)
            _shorten_inbound_jitter_buffer(pc, self.settings.inbound_jitter_packets)
            answer = await pc.createAnswer()
            gathering = (
                loopback_host_candidates() if self.settings.loopback_only else contextlib.nullcontext()
            )
            with gathering:
                await pc.setLocalDescription(answer)  # gathers every candidate: no trickle ICE
            local = pc.localDescription
        except BaseException as e:
            # Cancelled (client went away) or aiortc refused the offer: nothing may leak.
            await asyncio.shield(call.close("negotiation-failed"))
            if isinstance(e, Exception):
                raise SignalingError(400, f"could not negotiate: {type(e).__name__}: {e}") from None
            raise
        return call, local.sdp

    def _count_late(self) -> None:
        self.late_frames += 1

    def _forget(self, call: CallTransport) -> None:
        if self.calls.pop(call.id, None) is not None:
            self.calls_closed += 1
            self._inbound_dropped_closed += call.inbound_dropped

    async def close_all(self, reason: str = "shutdown") -> None:
        await asyncio.gather(*(call.close(reason) for call in list(self.calls.values())))
