"""The conversation benchmark's server (bench/conversation_browser.py starts it with --serve):
bench/call_load_server.py's real-model app plus recorders of the transport hops. A module of its own
because it runs in another process and is the only part that touches aiortc and the pipeline.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.calls_common import REPO, BenchServer, wait_until_ready


class _Hops:
    """Per-process recordings (the bench makes one call per server)."""

    def __init__(self) -> None:
        self.rtp: list[tuple[float, int, int]] = []  # (monotonic, rtp timestamp, seq)
        self.decoded: list[tuple[float, int, int]] = []  # (monotonic, pts, samples) from aiortc
        self.pushed: list[float] = []  # monotonic of each 20 ms 16 kHz frame given to the pipeline
        self.pcm = bytearray()  # ...and its audio
        self.vad: list[tuple[float, float, int]] = []  # (monotonic, probability, samples) per feed
        # (monotonic, int16 rms, seconds still queued in the Playout, held) per outbound frame
        self.out: list[tuple[float, float, float, float]] = []
        self.origins: list[float] = []  # conversation clock origins (loop time = monotonic)
        self.dropped = 0

    def summary(self) -> dict[str, Any]:
        return {
            "wall": time.time(), "mono": time.monotonic(), "rtp": self.rtp, "decoded": self.decoded,
            "pushed": self.pushed, "vad": self.vad, "out": self.out, "origins": self.origins,
            "dropped": self.dropped,
        }  # fmt: skip


HOPS = _Hops()


def _install_recorders() -> None:
    """Wrap (never change) the transport and VAD: each wrapper records a time and calls through."""
    from aiortc.rtcrtpreceiver import RTCRtpReceiver

    from voiceagent.engines.vad.silero import SileroVADStream
    from voiceagent.pipeline.conversation import Conversation
    from voiceagent.transport.tracks import InboundAudio, OutboundTrack

    wrapped = [
        (RTCRtpReceiver, "_handle_rtp_packet"), (InboundAudio, "push"), (SileroVADStream, "process"),
        (OutboundTrack, "_next_pcm"),
    ]  # fmt: skip
    missing = [f"{cls.__name__}.{name}" for cls, name in wrapped if not hasattr(cls, name)]
    if missing:  # the call still runs; the hop keys are left out
        print(f"bench server: hop recorders not installed, gone: {', '.join(missing)}", flush=True)
        return

    handle_rtp = RTCRtpReceiver._handle_rtp_packet

    async def _handle_rtp_packet(self: Any, packet: Any, arrival_time_ms: int) -> None:
        HOPS.rtp.append((time.monotonic(), packet.timestamp, packet.sequence_number))
        await handle_rtp(self, packet, arrival_time_ms)

    class _TimedTrack:
        def __init__(self, track: Any) -> None:
            self._track = track

        async def recv(self) -> Any:
            frame = await self._track.recv()
            HOPS.decoded.append((time.monotonic(), int(frame.pts or 0), int(getattr(frame, "samples", 0))))
            return frame

        def __getattr__(self, name: str) -> Any:
            return getattr(self._track, name)

    inbound_init = InboundAudio.__init__

    def _inbound_init(self: Any, track: Any, *args: Any, **kwargs: Any) -> None:
        inbound_init(self, _TimedTrack(track), *args, **kwargs)  # type: ignore[arg-type]

    push = InboundAudio.push

    def _push(self: Any, item: bytes | None) -> None:
        if item is not None:
            HOPS.pushed.append(time.monotonic())
            HOPS.pcm += item
        push(self, item)
        HOPS.dropped = max(HOPS.dropped, self.dropped)

    process = SileroVADStream.process

    async def _process(self: Any, pcm: Any) -> Any:
        fed = time.monotonic()
        result = await process(self, pcm)
        n = len(pcm) // 2 if isinstance(pcm, bytes | bytearray | memoryview) else len(pcm)
        HOPS.vad.append((fed, float(result.probability), n))
        return result

    next_pcm = OutboundTrack._next_pcm

    def _next_pcm(self: Any) -> bytes:
        pcm: bytes = next_pcm(self)
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
        rms = float(np.sqrt((samples**2).mean())) if len(samples) else 0.0
        # Whether the Playout still had audio for the caller (a pause, not the end of a reply).
        queued = float(getattr(self._source, "queued_s", 0.0) or 0.0)
        HOPS.out.append((time.monotonic(), rms, queued, float(bool(getattr(self._source, "held", False)))))
        return pcm

    conversation_init = Conversation.__init__

    def _conversation_init(self: Any, *args: Any, **kwargs: Any) -> None:
        conversation_init(self, *args, **kwargs)
        origin = getattr(self, "_origin", None)
        if origin is not None:
            HOPS.origins.append(float(origin))

    RTCRtpReceiver._handle_rtp_packet = _handle_rtp_packet  # type: ignore[method-assign]
    InboundAudio.__init__ = _inbound_init  # type: ignore[method-assign]
    InboundAudio.push = _push  # type: ignore[method-assign]
    SileroVADStream.process = _process  # type: ignore[method-assign]
    OutboundTrack._next_pcm = _next_pcm  # type: ignore[method-assign]
    Conversation.__init__ = _conversation_init  # type: ignore[method-assign]


def serve(port_file: Path) -> None:
    """bench/call_load_server.py's real-model server plus GET /bench/hops and /bench/hops/pcm."""
    from fastapi import Response

    import voiceagent.server.app as app_module
    from bench import call_load_server

    _install_recorders()
    create_app = app_module.create_app

    def _create_app(runtime: Any, **kwargs: Any) -> Any:
        app = create_app(runtime, **kwargs)

        async def hops() -> dict[str, Any]:
            return HOPS.summary()

        async def hops_pcm() -> Response:
            return Response(bytes(HOPS.pcm), media_type="application/octet-stream")

        app.add_api_route("/bench/hops", hops, methods=["GET"], include_in_schema=False)
        app.add_api_route("/bench/hops/pcm", hops_pcm, methods=["GET"], include_in_schema=False)
        return app

    app_module.create_app = _create_app  # call_load_server imports it when it starts serving
    asyncio.run(call_load_server._serve("real", port_file))


def default_llm() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    return {"max_tokens": data["llm"]["max_tokens"], "temperature": data["llm"]["temperature"]}


def start_server(timeout_s: float = 240) -> BenchServer:
    """Like bench.calls_common.start_server("real") but with the default LLM settings (that one
    pins max_tokens 40 and temperature 0 for the friendly figures) and the hop recorders."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-conversation-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
    env.update(
        {
            "PYTHONPATH": str(REPO),
            "VOICEAGENT_STORE__URL": f"sqlite+aiosqlite:///{workdir}/va.db",
            "VOICEAGENT_SERVER__LOG_LEVEL": "warning",
        }
    )
    port_file = workdir / "port"
    with (workdir / "server.log").open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.conversation_browser", "--serve", "--port-file", str(port_file)],
            cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return wait_until_ready(proc, workdir, timeout_s)


def fetch(url: str, timeout: float = 30) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: bytes = response.read()
        return data
