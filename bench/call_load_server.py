"""Bench-only server: the real app (HTTP signaling, WebRTC gateway, CallManager, Conversation,
Playout, store) with either the fake engines of voiceagent/testing/fakes.py or the real models, plus
``GET /bench/stats`` with per-call outbound-track stats, the process's CPU time and its resources
(RSS, fds, asyncio tasks, threads; ``?gc=1`` adds the gc object count, which costs a few ms;
``?collect=1`` runs a full collection first).

  python -m bench.call_load_server --engines fake|real --port-file FILE [--soak]

``--soak`` (bench/soak.py) adds run-long totals that outlive each call (frames, late frames, turns,
barge-ins) and keeps the node's EventBus busy: one typed event per completed turn is published
and consumed here, so a leak in the event layer shows up in the soak's resource figures.

Listens on 127.0.0.1 on a free port and writes ``http://127.0.0.1:PORT`` to ``--port-file`` once
it answers. SIGTERM stops it cleanly (calls hung up, engines closed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import resource
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

from voiceagent.calls.session import CallStats
from voiceagent.config import load_settings
from voiceagent.events import (
    AnyEvent,
    BusError,
    EventConsumer,
    KnowledgeChangedEvent,
    KnowledgeChangedPayload,
)
from voiceagent.events.envelope import utcnow
from voiceagent.runtime import Runtime
from voiceagent.testing.fakes import install_fake_engines
from voiceagent.transport.tracks import OutboundStats


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _fd_kinds(fds: list[str]) -> dict[str, int]:
    """socket / pipe / anon_inode:[eventfd] / the file's suffix: says what a growing fd count holds."""
    kinds: Counter[str] = Counter()
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (the listing's own fd among them)
            continue
        kind = target.split(":", 1)[0] if target.startswith(("socket:", "pipe:")) else target
        kinds[kind if not kind.startswith("/") else "file " + Path(kind).suffix] += 1
    return dict(kinds)


def _process(count_gc: bool) -> dict[str, Any]:
    """What a leak grows: memory, fds, tasks, threads (gc objects only on request: it is O(heap))."""
    status = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    fds = os.listdir("/proc/self/fd")
    out: dict[str, Any] = {
        "rss_mb": round(int(status["VmRSS"].split()[0]) / 1024, 2),
        "fds": len(fds),
        "fd_kinds": _fd_kinds(fds),
        "tasks": len(asyncio.all_tasks()),
        "threads": int(status["Threads"]),
        "py_threads": threading.active_count(),
        "allocated_blocks": sys.getallocatedblocks(),  # pymalloc blocks in use: O(1), leak-sensitive
    }
    if count_gc:
        started = time.perf_counter()
        out["gc_objects"] = len(gc.get_objects())
        out["gc_count_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return out


class SoakTracker:
    """Run-long totals and event traffic for the soak.

    Per-call figures vanish with their call, so this keeps a reference to each live call's
    OutboundStats and CallStats (small counters, not the call) and folds them into totals once
    the call is gone. Every completed turn becomes one ``knowledge.changed`` event on
    runtime.events, received by this node's own consumer group through EventConsumer (dedup,
    ack) under a tag of its own, so the real publish/receive/ack path runs for the whole soak.
    """

    POLL_S = 0.25

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.tag = f"bench-soak-{uuid.uuid4().hex[:8]}"
        self.out_closed = OutboundStats()
        self.out_live: dict[str, OutboundStats] = {}
        self.calls_closed = CallStats()
        self.calls_live: dict[str, CallStats] = {}
        self.announced: dict[str, int] = {}  # turns of each live call already published
        self.published = self.publish_failed = self.publish_dropped = 0
        self.consumed = self.subscribe_errors = 0
        self.latencies_s: deque[float] = deque(maxlen=2000)
        self.max_latency_s = 0.0
        self.outbox: asyncio.Queue[AnyEvent] = asyncio.Queue(10_000)
        self.stopping = asyncio.Event()
        self.consumer: EventConsumer | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._poll(), name="soak-poll"),
            asyncio.create_task(self._publish(), name="soak-publish"),
            asyncio.create_task(self._consume(), name="soak-consume"),
        ]

    async def stop(self) -> None:
        """Called before the runtime closes the bus, so the consumer is not left polling it."""
        self.stopping.set()
        poll, publish, consume = self.tasks
        poll.cancel()
        publish.cancel()
        await asyncio.wait([consume], timeout=10)  # it ends after its current long poll
        consume.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _announce(self, call_id: str, turns: int) -> None:
        for n in range(self.announced.get(call_id, 0) + 1, turns + 1):
            try:
                self.outbox.put_nowait(
                    KnowledgeChangedEvent(
                        idempotency_key=f"soak:{call_id}:{n}",
                        payload=KnowledgeChangedPayload(
                            document_id=f"soak/{call_id}/turn-{n}", change="updated", source="bench-soak"
                        ),
                    )
                )
            except asyncio.QueueFull:
                self.publish_dropped += 1
        self.announced[call_id] = turns

    def _sweep(self) -> None:
        gateway, sessions = self.runtime.calls.gateway, self.runtime.calls.sessions
        for call_id, transport in gateway.calls.items():
            self.out_live.setdefault(call_id, transport.outbound_stats)
        for call_id, session in sessions.items():
            self.calls_live.setdefault(call_id, session.stats)
        for call_id, stats in list(self.calls_live.items()):
            self._announce(call_id, stats.turns)
            if call_id not in sessions:
                del self.calls_live[call_id], self.announced[call_id]
                for key in ("turns", "answered_turns", "barge_ins", "faults", "recoveries"):
                    setattr(self.calls_closed, key, getattr(self.calls_closed, key) + getattr(stats, key))
        for call_id in [c for c in self.out_live if c not in gateway.calls]:
            out = self.out_live.pop(call_id)
            self.out_closed.frames += out.frames
            self.out_closed.late_frames += out.late_frames
            self.out_closed.resyncs += out.resyncs

    async def _poll(self) -> None:
        while True:
            self._sweep()
            await asyncio.sleep(self.POLL_S)

    async def _publish(self) -> None:
        while True:
            event = await self.outbox.get()
            try:
                await self.runtime.events.publish(event, tag=self.tag)
                self.published += 1
            except BusError:  # PublishFailed after retries, or a refusal: count it, keep going
                self.publish_failed += 1

    async def _handle(self, event: AnyEvent) -> None:
        latency = (utcnow() - event.created_at).total_seconds()
        self.consumed += 1
        self.latencies_s.append(latency)
        self.max_latency_s = max(self.max_latency_s, latency)

    async def _consume(self) -> None:
        while not self.stopping.is_set():
            try:
                subscription = await self.runtime.events.subscribe(self.tag, ["knowledge"], self.tag)
            except BusError:
                self.subscribe_errors += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), 2.0)
                continue
            self.consumer = EventConsumer(subscription, self._handle, wait_s=2.0)
            try:
                await self.consumer.run(self.stopping)
            finally:
                with contextlib.suppress(BusError):
                    await subscription.close()

    def totals(self) -> dict[str, Any]:
        self._sweep()
        out = [self.out_closed, *self.out_live.values()]
        calls = [self.calls_closed, *self.calls_live.values()]
        latencies = sorted(self.latencies_s)
        consumer = self.consumer.stats if self.consumer is not None else None
        return {
            "out_frames": sum(s.frames for s in out),
            "late_frames": sum(s.late_frames for s in out),
            "resyncs": sum(s.resyncs for s in out),
            **{
                key: sum(getattr(s, key) for s in calls)
                for key in ("turns", "answered_turns", "barge_ins", "faults", "recoveries")
            },
            "events": {
                "backend": self.runtime.settings.events.backend,
                "published": self.published,
                "publish_failed": self.publish_failed,
                "publish_dropped": self.publish_dropped,
                "outbox": self.outbox.qsize(),
                "consumed": self.consumed,
                "duplicates": consumer.duplicates if consumer else 0,
                "handler_failures": consumer.failures if consumer else 0,
                "receive_errors": consumer.receive_errors if consumer else 0,
                "subscribe_errors": self.subscribe_errors,
                "latency_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1) if latencies else None,
                "latency_max_ms": round(self.max_latency_s * 1000, 1),
            },
        }


def _stats(
    runtime: Runtime, lag: dict[str, float], soak: SoakTracker | None = None, count_gc: bool = False
) -> dict[str, Any]:
    calls: dict[str, Any] = {}
    for call_id, transport in runtime.calls.gateway.calls.items():
        stats = transport.outbound_stats
        session = runtime.calls.sessions.get(call_id)
        turns = session.stats if session else CallStats()
        calls[call_id] = {
            "connected": transport.connected,
            "out_frames": stats.frames,
            "late_frames": stats.late_frames,
            "resyncs": stats.resyncs,
            "max_late_s": round(stats.max_late_s, 4),
            "inbound_dropped": transport.inbound_dropped,
            "turns": turns.turns,
            "answered_turns": turns.answered_turns,
            "v2v_s": list(turns.voice_to_voice_s),  # the call's last 100 turns
        }
    return {
        "time": time.monotonic(),
        "cpu_s": _cpu_s(),
        "loop_lag_max_s": round(lag["max"], 4),
        "gateway_late_frames": runtime.calls.gateway.late_frames,
        "calls_accepted": runtime.calls.gateway.calls_accepted,
        "calls_closed": runtime.calls.gateway.calls_closed,
        "process": _process(count_gc),
        **({"soak": soak.totals()} if soak is not None else {}),
        "calls": calls,
    }


async def _serve(engines: str, port_file: Path, soak_mode: bool = False) -> None:
    import uvicorn

    from voiceagent.server.app import create_app

    settings = load_settings()
    if engines == "fake":
        settings = settings.model_copy(
            update={"engines": settings.engines.model_copy(update={"preload": False})}
        )
    runtime = Runtime(settings)
    await runtime.start()
    if engines == "fake":
        install_fake_engines(runtime.engines)
    app = create_app(runtime)
    lag = {"max": 0.0}
    soak = SoakTracker(runtime) if soak_mode else None
    if soak is not None:
        soak.start()
        runtime_lifespan = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
            async with runtime_lifespan(app_) as state:
                try:
                    yield state
                finally:
                    await soak.stop()

        app.router.lifespan_context = lifespan

    @app.get("/bench/stats", include_in_schema=False)
    async def bench_stats(request: Request) -> dict[str, Any]:
        if request.query_params.get("reset"):
            lag["max"] = 0.0
        if request.query_params.get("collect"):  # tells garbage not yet collected from a real leak
            gc.collect()
        return _stats(runtime, lag, soak, bool(request.query_params.get("gc")))

    async def watch_lag() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            lag["max"] = max(lag["max"], loop.time() - before - 0.01)

    lag_task = asyncio.create_task(watch_lag())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))  # uvicorn handles SIGTERM
    for _ in range(600):  # uvicorn has no "started" event to wait on
        if server.started or serving.done():
            break
        await asyncio.sleep(0.05)
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(f"http://127.0.0.1:{sock.getsockname()[1]}")
    os.replace(tmp, port_file)
    await serving
    lag_task.cancel()
    sock.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--engines", choices=("fake", "real"), default="fake")
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--soak", action="store_true", help="run-long totals and event traffic")
    args = parser.parse_args()
    asyncio.run(_serve(args.engines, args.port_file, args.soak))


if __name__ == "__main__":
    main()
