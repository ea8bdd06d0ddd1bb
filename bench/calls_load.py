"""Simultaneous calls held in real time: aiortc callers against fake engines, then real models."""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.calls_common import BenchServer, log, p50, speech, start_server
from bench.results import Metric, metric


class LoopSource:
    """FrameSource: ``pcm`` (16 kHz int16) looped, starting at ``offset`` samples."""

    sample_rate = 16_000

    def __init__(self, pcm: np.ndarray, offset: int = 0) -> None:
        self.pcm = pcm.astype("<i2")
        self.pos = offset % len(pcm)

    def read_frame(self) -> bytes:
        out = np.take(self.pcm, np.arange(self.pos, self.pos + 320), mode="wrap")
        self.pos = (self.pos + 320) % len(self.pcm)
        return bytes(out.tobytes())


@dataclass
class LoadClient:
    pc: Any
    track: Any
    call_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    frames: int = 0
    gaps_over_60ms: int = 0
    max_gap_s: float = 0.0
    last_rx: float | None = None
    task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        self.track.stop()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.pc.close()


async def connect_client(http: Any, base: str, source: LoopSource, user: str) -> LoadClient:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.mediastreams import MediaStreamError

    from voiceagent.transport.ice import filter_candidates, is_loopback, loopback_host_candidates
    from voiceagent.transport.tracks import OutboundTrack

    loop = asyncio.get_running_loop()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    track = OutboundTrack(source)
    pc.addTrack(track)
    channel = pc.createDataChannel("events")
    remote: asyncio.Future[Any] = loop.create_future()

    @pc.on("track")
    def on_track(t: Any) -> None:
        if t.kind == "audio" and not remote.done():
            remote.set_result(t)

    try:
        with loopback_host_candidates():
            await pc.setLocalDescription(await pc.createOffer())
        response = await http.post(
            f"{base}/api/calls", json={"sdp": pc.localDescription.sdp, "type": "offer", "user_id": user}
        )
        response.raise_for_status()
        answer = response.json()
        await pc.setRemoteDescription(
            RTCSessionDescription(filter_candidates(answer["sdp"], is_loopback), "answer")
        )
    except BaseException:
        await pc.close()
        raise
    client = LoadClient(pc, track, answer["call_id"])

    @channel.on("message")
    def on_message(message: str | bytes) -> None:
        client.events.append(json.loads(message))

    async def receive() -> None:
        incoming = await asyncio.wait_for(remote, 10)
        try:
            while True:
                await incoming.recv()
                now = loop.time()
                if client.last_rx is not None:
                    gap = now - client.last_rx
                    client.max_gap_s = max(client.max_gap_s, gap)
                    client.gaps_over_60ms += gap > 0.06
                client.last_rx = now
                client.frames += 1
        except MediaStreamError:
            pass

    client.task = loop.create_task(receive())
    return client


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_level(
    server: BenchServer, n: int, make_source: Callable[[int], LoopSource], settle_s: float, window_s: float
) -> dict[str, Any]:
    import httpx

    clients: list[LoadClient] = []
    async with httpx.AsyncClient(timeout=30) as http:
        try:
            t0 = time.monotonic()
            for batch in range(0, n, 8):
                users = range(batch, min(n, batch + 8))
                clients += await asyncio.gather(
                    *(connect_client(http, server.base, make_source(i), f"load-{i}") for i in users)
                )
            setup_s = time.monotonic() - t0
            await asyncio.sleep(settle_s)
            s0, c0, w0 = await asyncio.to_thread(server.stats, True), self_cpu(), time.monotonic()
            rx0 = [(c.frames, c.gaps_over_60ms) for c in clients]
            for c in clients:
                c.max_gap_s = 0.0
            await asyncio.sleep(window_s)
            s1, c1, w1 = await asyncio.to_thread(server.stats), self_cpu(), time.monotonic()
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    wall = s1["time"] - s0["time"]
    ids = [c.call_id for c in clients if c.call_id in s0["calls"] and c.call_id in s1["calls"]]

    def delta(key: str) -> int:
        return int(sum(s1["calls"][i][key] - s0["calls"][i][key] for i in ids))

    frames = delta("out_frames")
    late = delta("late_frames")
    v2v = [x for i in ids for x in s1["calls"][i]["v2v_s"]]
    result = {
        "calls": n,
        "alive": len(ids),
        "setup_s": round(setup_s, 2),
        "server_cpu_pct_of_core": round((s1["cpu_s"] - s0["cpu_s"]) / wall * 100, 1),
        "loadgen_cpu_pct_of_core": round((c1 - c0) / (w1 - w0) * 100, 1),
        "out_frames": frames,
        "out_frames_expected": int(wall / 0.02 * len(ids)),
        "late_frames": late,
        "late_pct": round(late / max(frames, 1) * 100, 2),
        "resyncs": delta("resyncs"),
        "max_late_ms": round(max((s1["calls"][i]["max_late_s"] for i in ids), default=0) * 1000, 1),
        "server_loop_lag_max_ms": round(s1["loop_lag_max_s"] * 1000, 1),
        "inbound_dropped": delta("inbound_dropped"),
        "client_gaps_over_60ms": sum(c.gaps_over_60ms - g for c, (_, g) in zip(clients, rx0, strict=True)),
        "client_max_gap_ms": round(max((c.max_gap_s for c in clients), default=0) * 1000, 1),
        "client_rx_frames": sum(c.frames - f for c, (f, _) in zip(clients, rx0, strict=True)),
        "client_late_frames": sum(c.track.stats.late_frames for c in clients),
        "answered_turns": delta("answered_turns"),
        "calls_answered": sum(1 for i in ids if s1["calls"][i]["answered_turns"] > 0),
        "v2v_p50_s": round(p50(v2v), 3) if v2v else None,
        "v2v_s": [round(x, 3) for x in v2v],
    }
    # Let the server notice the hang-ups before the next level.
    for _ in range(50):
        if not (await asyncio.to_thread(server.stats))["calls"]:
            break
        await asyncio.sleep(0.2)
    return result


def held(level: dict[str, Any]) -> bool:
    return level["alive"] == level["calls"] and level["late_pct"] < 1.0 and level["resyncs"] == 0


async def measure_fake_load() -> tuple[dict[str, Metric], list[dict[str, Any]]]:
    log("fake-engine load: starting the bench server with fake engines")
    server = start_server("fake", timeout_s=60)
    rate = 16_000
    t = np.arange(int(1.2 * rate)) / rate
    talk = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    pattern = np.concatenate([talk, np.zeros(int(4.0 * rate), dtype="<i2")])  # talk 1.2 s, pause 4 s
    rng = random.Random(7)
    levels = []
    try:
        for n in (8, 16, 24, 32):
            result = await run_level(
                server, n, lambda _: LoopSource(pattern, rng.randrange(len(pattern))), settle_s=3, window_s=15
            )
            log(f"  N={n}: {json.dumps(result)}")
            levels.append(result)
    finally:
        server.stop()
    ok = [lv["calls"] for lv in levels if held(lv)]
    best = max(ok) if ok else 0
    summary = "; ".join(
        f"N={lv['calls']}: server cpu {lv['server_cpu_pct_of_core']}% of a core, late {lv['late_pct']}%, "
        f"resyncs {lv['resyncs']}, max late {lv['max_late_ms']} ms, client gaps>60ms "
        f"{lv['client_gaps_over_60ms']}, "
        f"loadgen cpu {lv['loadgen_cpu_pct_of_core']}%, answered turns {lv['answered_turns']}"
        for lv in levels
    )
    note = (
        "largest N with every call alive, < 1 % late outbound frames (handed to aiortc > 20 ms after their "
        "slot) and no resyncs, over a 15 s window after 3 s settling; fake VAD/ASR/LLM/TTS in the real "
        "app (bench/call_load_server.py), N aiortc callers (440 Hz tone 1.2 s / pause 4 s) in one load "
        f"generator process on the same {os.cpu_count()}-core machine. {summary}"
    )
    out = {"calls_held_fake_engines": metric(best, "calls", ">= 24", note)}
    for lv in levels:
        out[f"calls_fake_n{lv['calls']}_late_frames_pct"] = metric(
            lv["late_pct"],
            "%",
            "< 1 %",
            f"resyncs {lv['resyncs']}, server cpu {lv['server_cpu_pct_of_core']}%",
        )
    return out, levels


async def measure_real_load(server: BenchServer) -> tuple[dict[str, Metric], list[dict[str, Any]]]:
    rate = 16_000
    questions = [speech(q) for q in ("What is the capital of France?", "What do bees make?")]
    gap = np.zeros(int(12.0 * rate), dtype="<i2")
    pattern = np.concatenate([questions[0], gap, questions[1], gap])
    levels = []
    for n in (1, 2, 4, 6):
        result = await run_level(
            server, n, lambda i: LoopSource(pattern, -int((0.5 + 0.7 * i) * rate)), settle_s=1, window_s=27
        )
        log(f"  N={n}: {json.dumps(result)}")
        levels.append(result)
    ok = [
        lv["calls"] for lv in levels
        if lv["alive"] == lv["calls"] and lv["calls_answered"] == lv["calls"] and lv["late_pct"] < 1.0
    ]  # fmt: skip
    best = max(ok) if ok else 0
    at = next((lv for lv in levels if lv["calls"] == best), None)
    summary = "; ".join(
        f"N={lv['calls']}: answered {lv['calls_answered']}/{lv['calls']} calls ({lv['answered_turns']} "
        "turns), "
        f"late {lv['late_pct']}%, resyncs {lv['resyncs']}, max late {lv['max_late_ms']} ms, server cpu "
        f"{lv['server_cpu_pct_of_core']}%, loop lag max {lv['server_loop_lag_max_ms']} ms, v2v p50 "
        f"{lv['v2v_p50_s']} s"
        for lv in levels
    )
    note = (
        "largest N where every call got an answer and < 1 % late outbound frames, 28 s per level; real "
        "Silero/Whisper/SmolLM2/Piper in the real app (bench/call_load_server.py --engines real: the same "
        "Runtime, create_app and Engines.load as `voiceagent serve`, plus a stats endpoint), N aiortc "
        "callers "
        f"each asking synthesized questions 12 s apart, staggered 0.7 s. {summary}"
    )
    out = {"calls_held_real_models": metric(best, "calls", ">= 4", note)}
    if at is not None and at["v2v_p50_s"] is not None:
        out["calls_real_models_v2v_p50_s"] = metric(
            at["v2v_p50_s"], "s", "<= 1.0 s", f"server-side voice_to_voice p50 of the turns at N={best}"
        )
    return out, levels
