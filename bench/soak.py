"""Soak: one node holding SOAK_CALLS calls (default 8) for SOAK_MINUTES (default 30), callers coming
and going, to catch what only time shows: memory, fds, asyncio tasks or threads that grow per call
or per turn, and outbound audio that slowly falls behind.

Server: ``bench/call_load_server.py --engines fake --soak`` (the real app with the fakes of
voiceagent/testing/fakes.py; ``--soak`` keeps run-long totals and publishes one typed event per
completed turn on the node's EventBus, consumed by the node itself). The bus is the real RocketMQ
broker when VA_TEST_ROCKETMQ_ENDPOINT is set (``make bench`` starts it), the in-process one
otherwise.

Callers: in-process aiortc peers (bench/calls_load.py ``connect_client``) that speak a 440 Hz tone
the fake VAD/ASR take for a question, then listen until the turn completes; about a quarter of
the turns talk over the reply (barge-in). Each caller hangs up after a random, seeded lifetime and
a new one joins *before* it leaves, so at least SOAK_CALLS calls stay up.

Figures: ``/bench/stats`` sampled every ~30 s, always at exactly SOAK_CALLS live calls so fds and
tasks compare like with like. Growth is measured over the last 20 minutes (the last two thirds
of shorter runs: the start is warm-up, when caches and pools fill). The series goes to
bench/soak_samples.json.

Knobs (env): SOAK_MINUTES, SOAK_CALLS, SOAK_SEED, SOAK_SAMPLE_S, SOAK_CALL_MIN_S, SOAK_CALL_MAX_S,
SOAK_BARGE_IN_SHARE.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx
import numpy as np

from bench.calls_common import BenchServer, start_server
from bench.calls_load import LoadClient, LoopSource, connect_client
from bench.results import BENCH_DIR, Metric, metric

SAMPLES_JSON = BENCH_DIR / "soak_samples.json"
RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
SILENCE = bytes(FRAME_SAMPLES * 2)
TURN_TIMEOUT_S = 20.0


def log(message: str) -> None:
    print(f"bench soak: {message}", flush=True)


def _env(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


@dataclass(frozen=True)
class SoakConfig:
    minutes: float
    calls: int
    seed: int
    sample_s: float
    call_min_s: float
    call_max_s: float
    barge_in_share: float

    @classmethod
    def from_env(cls) -> SoakConfig:
        minutes = _env("SOAK_MINUTES", 30)
        total = minutes * 60
        # Lifetimes of "a few minutes", shrunk so that short runs still see callers come and go.
        call_min = _env("SOAK_CALL_MIN_S", min(120.0, total / 6))
        return cls(
            minutes=minutes,
            calls=int(_env("SOAK_CALLS", 8)),
            seed=int(_env("SOAK_SEED", 1)),
            sample_s=_env("SOAK_SAMPLE_S", min(30.0, total / 12)),
            call_min_s=call_min,
            call_max_s=max(call_min, _env("SOAK_CALL_MAX_S", min(300.0, total / 3))),
            barge_in_share=_env("SOAK_BARGE_IN_SHARE", 0.25),
        )

    @property
    def total_s(self) -> float:
        return self.minutes * 60

    @property
    def window_s(self) -> float:
        """The growth window: the last 20 minutes, or the last two thirds of a shorter run."""
        return 1200.0 if self.minutes >= 30 else self.total_s * 2 / 3

    @property
    def progress_s(self) -> float:
        return min(180.0, max(20.0, self.total_s / 8))


@dataclass
class Tally:
    """What the callers saw; failures are counted here, never raised."""

    calls_started: int = 0
    calls_ended: int = 0
    hangups_polite: int = 0  # DELETE /api/calls/{id}, then close
    hangups_abrupt: int = 0  # close only: the server notices on its own
    connect_failures: int = 0
    caller_failures: int = 0
    calls_dropped: int = 0  # ended by the server mid-call
    turns_sent: int = 0
    turns_answered: int = 0
    turn_timeouts: int = 0
    barge_in_attempts: int = 0
    barge_ins_heard: int = 0  # "interrupted" events received
    faults: int = 0
    recovered: int = 0
    rx_gaps_over_60ms: int = 0
    rx_max_gap_ms: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    def failed(self, what: str, exc: BaseException) -> None:
        self.errors[f"{what}: {type(exc).__name__}: {str(exc)[:120]}"] += 1


class TurnSource(LoopSource):
    """Silence until ``speak``: then a 440 Hz tone (Opus keeps it well above the fake VAD's
    threshold, and AnyVoiceASR hears any voiced audio as one question)."""

    def __init__(self) -> None:
        super().__init__(np.zeros(FRAME_SAMPLES, dtype="<i2"))
        self.talk_frames = 0
        self.n = 0

    def speak(self, seconds: float) -> None:
        self.talk_frames = max(1, round(seconds * 50))

    def read_frame(self) -> bytes:
        if self.talk_frames <= 0:
            return SILENCE
        self.talk_frames -= 1
        t = (self.n + np.arange(FRAME_SAMPLES)) / RATE
        self.n += FRAME_SAMPLES
        return bytes((0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes())


class Stopping(Exception):
    """The soak is over: leave the current turn at once."""


class CallDropped(Exception):
    pass


@dataclass
class Caller:
    client: LoadClient
    source: TurnSource
    lifetime_s: float


class Soak:
    def __init__(self, server: BenchServer, config: SoakConfig, http: httpx.AsyncClient) -> None:
        self.server = server
        self.config = config
        self.http = http
        self.tally = Tally()
        self.stop = asyncio.Event()
        self.serial = 0

    # -- callers -------------------------------------------------------------------------------

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        if self.stop.is_set():
            raise Stopping

    async def connect(self, rng: random.Random) -> Caller | None:
        self.serial += 1
        source = TurnSource()
        client: LoadClient | None = None
        try:
            client = await connect_client(self.http, self.server.base, source, f"soak-{self.serial}")
            async with asyncio.timeout(10):
                while client.frames == 0:  # media flows both ways
                    if client.task is not None and client.task.done():
                        raise CallDropped("inbound audio ended before it began")
                    await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # the events channel opens right after DTLS
        except Exception as exc:
            self.tally.connect_failures += 1
            self.tally.failed("connect", exc)
            if client is not None:
                await asyncio.gather(client.close(), return_exceptions=True)
            with contextlib.suppress(Stopping):
                await self.pause(1.0)
            return None
        self.tally.calls_started += 1
        return Caller(client, source, rng.uniform(self.config.call_min_s, self.config.call_max_s))

    async def hang_up(self, caller: Caller, how: Literal["polite", "abrupt", "broken"]) -> None:
        client = caller.client
        try:
            if how == "polite":
                with contextlib.suppress(httpx.HTTPError):
                    await self.http.delete(f"{self.server.base}/api/calls/{client.call_id}")
            self.tally.hangups_polite += how == "polite"
            self.tally.hangups_abrupt += how == "abrupt"
            await client.close()
        except Exception as exc:
            self.tally.failed("hang up", exc)
        self.tally.calls_ended += 1
        self.tally.rx_gaps_over_60ms += client.gaps_over_60ms
        self.tally.rx_max_gap_ms = max(self.tally.rx_max_gap_ms, round(client.max_gap_s * 1000, 1))

    def drain(self, caller: Caller) -> list[dict[str, Any]]:
        events = caller.client.events[:]
        caller.client.events.clear()
        for event in events:
            kind = event.get("kind")
            self.tally.faults += kind == "fault"
            self.tally.recovered += kind == "recovered"
            self.tally.barge_ins_heard += kind == "interrupted"
        return events

    async def collect(
        self, caller: Caller, done: Callable[[list[dict[str, Any]]], bool], timeout_s: float
    ) -> list[dict[str, Any]] | None:
        """Events until ``done(events)`` holds; None on timeout (counted by the caller)."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            seen += self.drain(caller)
            if done(seen):
                return seen
            if self.stop.is_set():
                raise Stopping
            task = caller.client.task
            if caller.client.pc.connectionState in ("failed", "closed") or (task is not None and task.done()):
                raise CallDropped(f"call {caller.client.call_id} ended by the server")
            if time.monotonic() >= deadline:
                return None
            await asyncio.sleep(0.05)

    async def turn(self, caller: Caller, rng: random.Random) -> None:
        """Ask, then listen until the turn completes; or ask, and talk over the reply."""

        def turns(n: int) -> Callable[[list[dict[str, Any]]], bool]:
            return lambda seen: sum(e.get("kind") == "turn" for e in seen) >= n

        self.drain(caller)
        caller.source.speak(rng.uniform(1.0, 1.6))
        self.tally.turns_sent += 1
        if rng.random() >= self.config.barge_in_share:
            seen = await self.collect(caller, turns(1), TURN_TIMEOUT_S)
        else:
            self.tally.barge_in_attempts += 1
            started = await self.collect(
                caller, lambda seen: any(e.get("kind") == "agent_text" for e in seen), TURN_TIMEOUT_S
            )
            if started is None:
                self.tally.turn_timeouts += 1
                return
            await self.pause(rng.uniform(0.4, 1.0))  # past the echo warm-up, mid-sentence
            caller.source.speak(rng.uniform(1.0, 1.4))
            self.tally.turns_sent += 1
            # The interrupted turn completes, then the interrupting question gets its answer.
            seen = await self.collect(caller, turns(2), TURN_TIMEOUT_S)
            seen = None if seen is None else started + seen
        if seen is None:
            self.tally.turn_timeouts += 1
            return
        self.tally.turns_answered += sum(
            1 for e in seen if e.get("kind") == "turn" and e.get("agent_text") and not e.get("interrupted")
        )

    async def converse(self, caller: Caller, rng: random.Random) -> None:
        ends_at = time.monotonic() + caller.lifetime_s
        await self.pause(rng.uniform(0.2, 2.0))
        while time.monotonic() < ends_at:
            await self.turn(caller, rng)
            await self.pause(rng.uniform(1.0, 3.5))  # the caller thinks before the next question

    async def slot(self, index: int) -> None:
        """One seat: a caller at a time, the next one joining before the last one leaves. Lifetimes
        and hang-up styles draw from their own seeded stream, so timing cannot shift them."""
        lives = random.Random(self.config.seed * 1000 + index)
        rng = random.Random(self.config.seed * 1000 + 500 + index)
        with contextlib.suppress(Stopping):
            await self.pause(index * 0.4)  # stagger the first connects
        caller: Caller | None = None
        while not self.stop.is_set():
            if caller is None:
                caller = await self.connect(lives)
                continue
            try:
                await self.converse(caller, rng)
            except Stopping:
                break
            except Exception as exc:  # a broken caller is counted and replaced
                if isinstance(exc, CallDropped):
                    self.tally.calls_dropped += 1
                else:
                    self.tally.caller_failures += 1
                self.tally.failed("caller", exc)
                await self.hang_up(caller, "broken")
                caller = None
                continue
            successor = await self.connect(lives)
            await self.hang_up(caller, "polite" if lives.random() < 0.7 else "abrupt")
            caller = successor
        if caller is not None:
            await self.hang_up(caller, "polite")

    # -- sampling ------------------------------------------------------------------------------

    async def stats(self, query: str = "") -> dict[str, Any]:
        return await asyncio.to_thread(self.server.get, "/bench/stats" + query)

    async def sample(self, t0: float, count_gc: bool) -> dict[str, Any]:
        """Stats at exactly N live calls when possible (a join/leave overlap lasts seconds)."""
        n = self.config.calls
        stats = await self.stats()
        lag_s = stats["loop_lag_max_s"]  # since the previous sample's reset
        for _ in range(20):
            live = [c for c in stats["calls"].values() if c["connected"]]
            if len(live) == n == len(stats["calls"]):
                break
            await asyncio.sleep(0.5)
            stats = await self.stats()
        if count_gc:
            stats["process"]["gc_objects"] = (await self.stats("?gc=1"))["process"]["gc_objects"]
        await self.stats("?reset=1")  # after the gc count, whose pause is ours, not the node's
        return flatten(stats, time.monotonic() - t0, n, lag_s, self.tally)

    async def run(self) -> dict[str, Any]:
        cfg = self.config
        baseline = await self.stats("?gc=1")
        t0 = time.monotonic()
        slots = [asyncio.create_task(self.slot(i), name=f"soak-slot-{i}") for i in range(cfg.calls)]
        samples: list[dict[str, Any]] = []
        next_progress = cfg.progress_s
        try:
            k = 0
            while (elapsed := time.monotonic() - t0) < cfg.total_s:
                k += 1
                await asyncio.sleep(max(0.0, min(k * cfg.sample_s, cfg.total_s) - elapsed))
                last = time.monotonic() - t0 >= cfg.total_s - 1
                try:
                    samples.append(await self.sample(t0, count_gc=last or k % 10 == 1))
                except OSError as exc:  # a slow answer under load costs one sample; a dead server, the run
                    if self.server.proc.poll() is not None:
                        raise RuntimeError(
                            f"the bench server exited ({self.server.proc.returncode})"
                        ) from exc
                    self.tally.failed("sample", exc)
                    continue
                if samples[-1]["t_s"] >= next_progress or last:
                    log(progress(samples[-1], cfg))
                    next_progress += cfg.progress_s
        finally:
            self.stop.set()
            _, pending = await asyncio.wait(slots, timeout=60)
            for task in pending:
                task.cancel()
            await asyncio.gather(*slots, return_exceptions=True)
        return {"baseline": baseline, "samples": samples}

    async def settle(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """After the last hang-up, once the server let go of every call and consumed every event:
        its stats, then again after a full gc.collect() (what only cyclic garbage held vs a leak)."""
        stats: dict[str, Any] = {}
        for _ in range(60):
            stats = await self.stats()
            events = stats["soak"]["events"]
            settled = events["published"] + events["publish_failed"] + events["publish_dropped"]
            if (
                not stats["calls"]
                and settled >= stats["soak"]["turns"]
                and events["consumed"] >= events["published"]
            ):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)  # let closing tasks finish
        return await self.stats("?gc=1"), await self.stats("?collect=1&gc=1")


def flatten(stats: dict[str, Any], t_s: float, n: int, lag_s: float, tally: Tally) -> dict[str, Any]:
    soak, proc, events = stats["soak"], stats["process"], stats["soak"]["events"]
    connected = sum(1 for c in stats["calls"].values() if c["connected"])
    return {
        "t_s": round(t_s, 1),
        "steady": connected == n == len(stats["calls"]),
        "calls": len(stats["calls"]),
        "connected": connected,
        **{k: proc[k] for k in ("rss_mb", "fds", "tasks", "threads", "py_threads", "allocated_blocks")},
        "gc_objects": proc.get("gc_objects"),
        "fd_kinds": proc.get("fd_kinds"),
        "cpu_s": round(stats["cpu_s"], 2),
        "loop_lag_max_ms": round(lag_s * 1000, 1),
        "calls_accepted": stats["calls_accepted"],
        "calls_closed": stats["calls_closed"],
        "out_frames": soak["out_frames"],
        "late_frames": soak["late_frames"],
        "resyncs": soak["resyncs"],
        "turns": soak["turns"],
        "barge_ins": soak["barge_ins"],
        "events_published": events["published"],
        "events_consumed": events["consumed"],
        "event_errors": events["publish_failed"] + events["receive_errors"] + events["subscribe_errors"],
        "caller_failures": tally.connect_failures + tally.caller_failures + tally.calls_dropped,
        "loadavg_1m": round(os.getloadavg()[0], 2),  # the machine is shared: read late frames with it
    }


def progress(s: dict[str, Any], cfg: SoakConfig) -> str:
    late = s["late_frames"] / max(s["out_frames"], 1) * 100
    return (
        f"{s['t_s'] / 60:5.1f}/{cfg.minutes:g} min: {s['connected']} calls up "
        f"({s['calls_accepted']} so far), "
        f"{s['turns']} turns, {s['barge_ins']} barge-ins, late {late:.2f} %, resyncs {s['resyncs']}, "
        f"rss {s['rss_mb']:.1f} MB, fds {s['fds']}, tasks {s['tasks']}, threads {s['threads']}, "
        f"events {s['events_published']}/{s['events_consumed']} pub/consumed, "
        f"caller failures {s['caller_failures']}, loop lag max {s['loop_lag_max_ms']} ms, "
        f"load {s['loadavg_1m']}"
    )


def _slope_per_min(points: list[dict[str, Any]], key: str) -> float:
    if len(points) < 2:
        return 0.0
    xs = [p["t_s"] / 60 for p in points]
    ys = [float(p[key]) for p in points]
    return statistics.linear_regression(xs, ys).slope if len(set(xs)) > 1 else 0.0


def growth(samples: list[dict[str, Any]], cfg: SoakConfig) -> dict[str, Any]:
    """Growth over the window, from samples at exactly N calls. RSS: median of the last three
    samples minus the first three (allocator noise). fds, tasks, threads: the floor of the last
    quarter minus the floor of the first (a turn in flight adds a few; a leak raises the floor)."""
    start = cfg.total_s - cfg.window_s
    window = [s for s in samples if s["steady"] and s["t_s"] >= start - 1]
    if len(window) < 2:
        window = [s for s in samples if s["steady"]] or samples
    k = max(1, min(3, len(window) // 2))
    q = max(1, len(window) // 4)
    head, tail = window[:q], window[-q:]
    out: dict[str, Any] = {
        "window_s": round(window[-1]["t_s"] - window[0]["t_s"], 1) if window else 0.0,
        "samples": len(window),
        "rss_mb": statistics.median(s["rss_mb"] for s in window[-k:])
        - statistics.median(s["rss_mb"] for s in window[:k]),
        "rss_mb_per_min": _slope_per_min(window, "rss_mb"),
        "rss_start_mb": statistics.median(s["rss_mb"] for s in window[:k]),
    }
    for key in ("fds", "tasks", "threads", "py_threads", "allocated_blocks"):
        out[key] = min(s[key] for s in tail) - min(s[key] for s in head)
        out[f"{key}_range"] = (min(s[key] for s in window), max(s[key] for s in window))
    gcs = [s for s in window if s["gc_objects"] is not None]
    out["gc_objects"] = gcs[-1]["gc_objects"] - gcs[0]["gc_objects"] if len(gcs) >= 2 else None
    return out


def _at_zero(stats: dict[str, Any]) -> str:
    p = stats["process"]
    return f"{p['rss_mb']:.1f} MB / {p['fds']} fds / {p['tasks']} tasks / {p['threads']} threads"


def figures(cfg: SoakConfig, run: dict[str, Any], tally: Tally) -> dict[str, Metric]:
    baseline, samples, final = run["baseline"], run["samples"], run["final"]
    if not samples:
        raise RuntimeError("the soak took no stats sample: nothing to report")
    g = growth(samples, cfg)
    soak, events = final["soak"], final["soak"]["events"]
    frames = soak["out_frames"] - baseline["soak"]["out_frames"]
    late = soak["late_frames"] - baseline["soak"]["late_frames"]
    late_pct = late / max(frames, 1) * 100
    setup = (
        f"{cfg.minutes:g} min, {cfg.calls} aiortc callers (lifetimes "
        f"{cfg.call_min_s:.0f}-{cfg.call_max_s:.0f} s, seed {cfg.seed}) against the real app with fake "
        "engines (bench/call_load_server.py --soak), "
        f"{events['backend']} event bus"
    )
    window = (
        f"growth over the last {g['window_s'] / 60:.1f} min ({g['samples']} samples at exactly "
        f"{cfg.calls} calls, every {cfg.sample_s:g} s)"
    )
    zero_calls = (
        f"at 0 calls: {_at_zero(baseline)} before the first call, {_at_zero(final)} after the last "
        f"hang-up, {_at_zero(run['collected'])} after a full gc.collect()"
    )
    failures = tally.connect_failures + tally.caller_failures + tally.calls_dropped
    return {
        "soak_rss_growth_mb": metric(
            g["rss_mb"],
            "MB",
            "<= 20",
            f"{window}: {g['rss_start_mb']:.1f} MB at its start, slope {g['rss_mb_per_min']:+.3f} MB/min, "
            f"pymalloc blocks {g['allocated_blocks']:+d}, gc objects {g['gc_objects']}; {zero_calls}. "
            f"{setup}",
        ),
        "soak_fd_growth": metric(
            g["fds"],
            "fds",
            "0",
            f"{window}: floor of the last quarter minus floor of the first, range {g['fds_range']}; "
            f"{zero_calls}",
        ),
        "soak_tasks_growth": metric(
            g["tasks"],
            "tasks",
            "0",
            f"{window}: asyncio tasks, floor of the last quarter minus the first, range {g['tasks_range']}",
        ),
        "soak_threads_growth": metric(
            g["threads"],
            "threads",
            "0",
            f"{window}: OS threads (Python's own: {g['py_threads']:+d}), floor of the last quarter minus "
            f"the first, range {g['threads_range']}; {zero_calls}",
        ),
        "soak_late_frames_pct": metric(
            late_pct,
            "%",
            "< 1 %",
            f"{late} of {frames} outbound frames handed to aiortc > 20 ms late over the whole soak, "
            f"calls ended included; resyncs {soak['resyncs']}; callers saw {tally.rx_gaps_over_60ms} "
            f"receive gaps > 60 ms (max {tally.rx_max_gap_ms} ms); machine load average "
            f"{statistics.fmean(s['loadavg_1m'] for s in samples) if samples else 0:.1f} on "
            f"{os.cpu_count()} cores (loadgen and server share them)",
        ),
        "soak_turns": metric(
            soak["turns"],
            "turns",
            "",
            f"turns completed on the server ({soak['answered_turns']} with agent speech; {soak['faults']} "
            f"faults, {soak['recoveries']} recoveries); callers asked {tally.turns_sent} times, heard "
            f"{tally.turns_answered} full answers, {tally.turn_timeouts} turns timed out, "
            f"{tally.faults} fault events",
        ),
        "soak_barge_ins": metric(
            soak["barge_ins"],
            "turns",
            "",
            f"interrupted turns on the server; callers tried {tally.barge_in_attempts}, "
            f"got {tally.barge_ins_heard} 'interrupted' events",
        ),
        "soak_calls_started": metric(
            tally.calls_started,
            "calls",
            "",
            f"calls connected by the callers (server accepted {final['calls_accepted']}, closed "
            f"{final['calls_closed']}); hang-ups {tally.hangups_polite} via DELETE, {tally.hangups_abrupt} "
            "by closing the peer only",
        ),
        "soak_caller_failures": metric(
            failures,
            "calls",
            "0",
            f"connect failures {tally.connect_failures}, callers broken {tally.caller_failures}, calls "
            f"dropped by the server {tally.calls_dropped}"
            + (f"; most frequent errors: {dict(tally.errors.most_common(5))}" if tally.errors else ""),
        ),
        "soak_events_consumed": metric(
            events["consumed"],
            "events",
            "= published",
            "knowledge.changed events, one per completed turn, on the node's EventBus "
            f"({events['backend']}): published {events['published']}, failed {events['publish_failed']}, "
            f"dropped {events['publish_dropped']}, duplicates {events['duplicates']}, receive errors "
            f"{events['receive_errors']}; delivery p50 {events['latency_p50_ms']} ms, max "
            f"{events['latency_max_ms']} ms",
        ),
    }


async def _run(cfg: SoakConfig) -> dict[str, Metric]:
    extra_env: dict[str, str] = {}
    endpoint = os.environ.get("VA_TEST_ROCKETMQ_ENDPOINT")
    if endpoint:
        extra_env = {
            "VOICEAGENT_EVENTS__BACKEND": "rocketmq",
            "VOICEAGENT_EVENTS__ROCKETMQ__ENDPOINTS": endpoint,
        }
    log(
        f"{cfg.minutes:g} min, {cfg.calls} calls, lifetimes {cfg.call_min_s:.0f}-{cfg.call_max_s:.0f} s, "
        f"samples every {cfg.sample_s:g} s, event bus "
        f"{'rocketmq at ' + endpoint if endpoint else 'in-process'}"
    )
    server = await asyncio.to_thread(start_server, "fake", 60, ["--soak"], extra_env)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            soak = Soak(server, cfg, http)
            outcome = await soak.run()
        # Measured with the callers' HTTP client closed: its keep-alive sockets are not the node's.
        outcome["final"], outcome["collected"] = await soak.settle()
        tally = soak.tally
        log_tail = (server.workdir / "server.log").read_text(errors="replace")
    finally:
        await asyncio.to_thread(server.stop)
    results = figures(cfg, outcome, tally)
    tracebacks = log_tail.count("Traceback")
    SAMPLES_JSON.write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                **outcome,
                "tally": asdict(tally),
                "growth": growth(outcome["samples"], cfg),
                "server_log_tracebacks": tracebacks,
                "results": {k: m.model_dump() for k, m in results.items()},
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    for name, m in results.items():
        log(f"{name} = {m.value:g} {m.unit} (goal {m.goal or '-'})")
    if tracebacks:
        log(f"server log has {tracebacks} traceback(s); last lines:\n{log_tail[-2000:]}")
    log(f"samples written to {SAMPLES_JSON.relative_to(BENCH_DIR.parent)}")
    return results


def run() -> dict[str, Metric]:
    cfg = SoakConfig.from_env()
    started = time.monotonic()
    results = asyncio.run(_run(cfg))
    log(f"done in {(time.monotonic() - started) / 60:.1f} min")
    return results


if __name__ == "__main__":
    run()  # figures are printed, not saved: `python -m bench soak` records them
