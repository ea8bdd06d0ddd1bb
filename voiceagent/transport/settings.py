"""WebRTC transport settings (the `transport:` section)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class IceServer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str]
    username: str | None = None
    credential: str | None = None


class TransportSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # None needed on loopback or a LAN; add STUN/TURN for callers behind NAT.
    ice_servers: list[IceServer] = Field(default_factory=list)
    # Offer only 127.0.0.1 host candidates (and ignore the browser's others): this machine's
    # default; turn off when serving real networks.
    loopback_only: bool = True
    max_calls: int = Field(16, ge=1, description="simultaneous calls; more get HTTP 503")
    max_offer_bytes: int = Field(64 * 1024, ge=1024)
    # aiortc never reports "disconnected": a call with no inbound audio this long is hung up.
    dead_peer_timeout_s: float = Field(3.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0, description="ICE + DTLS must connect within this")
    # Caller audio packets aiortc holds before decoding one (its default 4 = 80 ms on every turn
    # and every barge-in). 1 waits only for the next packet; a packet reordered further is lost
    # (20 ms of audio), which on loopback or a LAN practically never happens.
    inbound_jitter_packets: int = Field(1, ge=1, le=8)
