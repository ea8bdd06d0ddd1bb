"""Asynchronous jobs: what one worker process does per kind, how long a burst waits in the queue,
and whether two workers running flat out slow a live call.

Workers are real ``voiceagent worker`` processes (nice 19 and SCHED_IDLE, one math thread, the
shipped defaults) on a SQLite store in a temporary folder; jobs are submitted the way the API
does (JobStore + the job queue), and timed from the store's own stamps: queue wait = started_at -
created_at, run time = finished_at - started_at.

1. Throughput per worker per kind (store-polled queue, one worker, after one warm-up job):
   synthesize ~4,000 characters of varied English prose (characters/s of text, and audio seconds
   made per second); transcribe 2 minutes of Piper speech at beam 5 (audio seconds per second);
   summarize_call on recorded calls of 8 turns (calls per minute).
2. Queue wait under a burst: 60 one-sentence synthesize jobs submitted at once to two workers,
   through the real RocketMQ ``jobs`` topic when ``VA_TEST_ROCKETMQ_ENDPOINT`` names a broker
   (``make bench`` starts one), else the store queue; p50 / p95 of started_at - created_at.
3. Dispatch to an idle worker that runs three kinds on one slot (the default concurrency): echo
   jobs submitted one at a time at random moments (the kinds' turns at the slot are then at a
   random phase); p50 / p95 / max of started_at - created_at, through the RocketMQ topic.
4. A live call beside two busy workers: the real-model bench server (bench/call_load_server.py,
   as ``voiceagent serve`` loads it) with one aiortc caller asking four synthesized questions 7 s
   apart; its server-side voice-to-voice latency over 45 s windows in four rounds after a discarded
   warm-up: no workers, two workers busy with a backlog of long synthesize and transcribe jobs,
   the same again, none, all twice (ABBA ABBA, so drift in the machine's other load cancels out);
   p50 of the turns pooled per condition, and the same turn of the call compared. Goal: within 10 %.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from bench.calls_common import REPO, speech, start_server
from bench.calls_load import LoopSource, run_level
from bench.results import Metric, metric, percentile
from tests.serve_process import stop_process
from voiceagent.config import load_settings
from voiceagent.events import EventBus
from voiceagent.events.factory import create_transport
from voiceagent.jobs.queue import JobQueue, job_queue
from voiceagent.jobs.registry import KindRegistry
from voiceagent.jobs.schemas import FINISHED, JobRecord
from voiceagent.jobs.service import IncomingFile, JobService
from voiceagent.jobs.store import JobStore
from voiceagent.store import Database, NewTurn, Store
from voiceagent.testing.jobs import ECHO_EXTRA_KINDS

PROSE = [
    "The museum opens at nine on weekdays and at ten on Sundays.",
    "Tickets bought online are valid for a whole year, including special exhibitions.",
    "Our guided tours leave from the main hall every hour, and they last about forty minutes.",
    "If you need a wheelchair, ask at the information desk; we have six to lend, free of charge.",
    "The café on the second floor serves soup, sandwiches and cakes until half past four.",
    "Children under twelve enter for free when they come with an adult.",
    "Photography is allowed in most rooms, but please do not use a flash near the paintings.",
    "Lockers for coats and bags are next to the cloakroom, and they take one-euro coins.",
]
CALL_TURNS = [
    ("Hi, I booked a table for Friday but I need to change it.", "Of course. What would you like to change?"),
    ("Can we move it to Saturday evening instead?", "Saturday at seven is free. Shall I book it?"),
    ("Yes please, and it will be six people now, not four.", "Done: Saturday at seven for six people."),
    ("Do you have anything without gluten on the menu?", "Yes, most mains can be made without gluten."),
    ("Great. Also, is there parking nearby?", "There is a car park behind the restaurant."),
    ("How much does it cost in the evening?", "It is free after six o'clock."),
    ("Perfect. Can you send me a confirmation by email?", "I will send it right away."),
    ("Thanks, that's all for today.", "You're welcome. See you on Saturday!"),
]
QUESTIONS = (
    "What is the capital of France?",
    "What do bees make?",
    "How many legs does a spider have?",
    "What colour is the sky on a clear day?",
)
QUESTION_GAP_S = 7.0
BURST = 60
BURST_WORKERS = 2
WINDOW_S = 45.0
DISPATCH_SAMPLES = 40


def log(message: str) -> None:
    print(f"bench jobs: {message}", flush=True)


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


async def _run() -> dict[str, Metric]:
    results: dict[str, Metric] = {}
    results |= await measure_throughput()
    results |= await measure_burst()
    results |= await measure_dispatch()
    results |= await measure_call_beside_workers()
    return results


# -- the pieces -----------------------------------------------------------------------------------


class JobsBench:
    """A store of its own (SQLite in a temporary folder) with a queue and worker processes on it."""

    def __init__(self, name: str, broker: str | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-jobs-{name}-"))
        self.url = f"sqlite+aiosqlite:///{self.dir}/va.db"
        self.env = {
            "VOICEAGENT_STORE__URL": self.url,
            "VOICEAGENT_SERVER__LOG_LEVEL": "warning",
            "VOICEAGENT_EVENTS__BACKEND": "rocketmq" if broker else "inprocess",
            **({"VOICEAGENT_EVENTS__ROCKETMQ__ENDPOINTS": broker} if broker else {}),
        }
        self.settings = load_settings(environ=self.env)
        self.database = Database(self.settings.store)
        self.jobs = JobStore(self.database)
        self.bus = EventBus(create_transport(self.settings.events), self.settings.events)
        self.queue: JobQueue = job_queue(self.settings.jobs, self.bus)
        self.service = JobService(self.jobs, self.queue, KindRegistry(), self.settings)
        self.workers: list[subprocess.Popen[bytes]] = []

    async def __aenter__(self) -> JobsBench:
        await self.database.migrate()
        await self.bus.transport.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        for proc in self.workers:
            stop_process(proc)
        await self.bus.transport.close()
        await self.database.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def start_workers(
        self, kinds: Sequence[str], count: int = 1, env: Mapping[str, str] | None = None
    ) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
        for n in range(count):
            log_file = (self.dir / f"worker-{len(self.workers)}.log").open("w")
            self.workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "voiceagent", "worker", "--kinds", ",".join(kinds)],
                    cwd=REPO,
                    env={**base, **self.env, **(env or {})},
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            )
            log_file.close()
            log(f"worker {n + 1}/{count} for {','.join(kinds)} started (pid {self.workers[-1].pid})")

    def worker_logs(self) -> str:
        return "\n".join(p.read_text()[-2000:] for p in sorted(self.dir.glob("worker-*.log")))

    async def submit(self, kind: str, params: dict[str, Any], upload: bytes | None = None) -> str:
        """As ``POST /api/jobs`` does it (the same service), an upload in one piece."""
        file = None
        if upload is not None:

            async def one_piece() -> AsyncIterator[bytes]:
                yield upload

            file = IncomingFile("bench.wav", "audio/wav", one_piece())
        return (await self.service.submit(kind, params, file=file, submitted_by="bench")).id

    async def finished(self, job_ids: Sequence[str], timeout_s: float) -> list[JobRecord]:
        deadline = time.monotonic() + timeout_s
        while True:
            jobs = [await self.jobs.get(i) for i in job_ids]
            done = [j for j in jobs if j is not None and j.status in FINISHED]
            if len(done) == len(job_ids):
                failed = [f"{j.id}: {j.reason} {j.detail}" for j in done if j.status != "succeeded"]
                if failed:
                    raise RuntimeError(f"jobs failed: {failed[:3]}\n{self.worker_logs()}")
                return done
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.workers):
                raise RuntimeError(f"{len(done)}/{len(job_ids)} jobs finished in time\n{self.worker_logs()}")
            await asyncio.sleep(0.2)


def run_s(job: JobRecord) -> float:
    assert job.started_at is not None and job.finished_at is not None
    return (job.finished_at - job.started_at).total_seconds()


def wait_s(job: JobRecord) -> float:
    assert job.started_at is not None
    return (job.started_at - job.created_at).total_seconds()


def prose(chars: int) -> str:
    sentences: list[str] = []
    while sum(len(s) + 1 for s in sentences) < chars:
        sentences.append(PROSE[len(sentences) % len(PROSE)])
    return " ".join(sentences)


def speech_wav(seconds: float) -> bytes:
    """Piper speech (16 kHz) of the prose with short pauses, ``seconds`` long, as a WAV file."""
    pieces: list[np.ndarray] = []
    total = 0
    n = 0
    while total < seconds * 16_000:
        clip = speech(PROSE[n % len(PROSE)])
        pieces += [clip, np.zeros(8_000, dtype="<i2")]
        total += len(clip) + 8_000
        n += 1
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(np.concatenate(pieces)[: int(seconds * 16_000)].tobytes())
    return buffer.getvalue()


async def recorded_call(store: Store, user: str) -> str:
    await store.touch_user(user)
    call = await store.start_call(user, node_id="bench")
    start = datetime.now(UTC) - timedelta(minutes=5)
    for i, (said, answered) in enumerate(CALL_TURNS):
        at = start + timedelta(seconds=20 * i)
        await store.add_turn(
            call.id,
            NewTurn(started_at=at, ended_at=at + timedelta(seconds=6), user_text=said, agent_text=answered),
        )
    await store.end_call(call.id, "hangup")
    return call.id


# -- 1. throughput --------------------------------------------------------------------------------


async def measure_throughput() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    async with JobsBench("synthesize") as bench:
        bench.start_workers(["synthesize"])
        await bench.finished([await bench.submit("synthesize", {"text": PROSE[0]})], 600)  # loads Piper
        text = prose(4000)
        (job,) = await bench.finished([await bench.submit("synthesize", {"text": text})], 900)
        seconds = run_s(job)
        audio_s = float((job.result or {}).get("duration_s", 0.0))
        log(f"synthesize: {len(text)} characters -> {audio_s:.1f} s of audio in {seconds:.1f} s")
        out["jobs_synthesize_chars_per_s"] = metric(
            len(text) / seconds, "characters/s", "-",
            f"one worker (1 thread, nice 19, SCHED_IDLE), Piper joe-medium, {len(text)} characters -> "
            f"{audio_s:.0f} s of audio (WAV + Opus) in {seconds:.1f} s",
        )  # fmt: skip
        out["jobs_synthesize_audio_s_per_s"] = metric(
            audio_s / seconds, "audio s/s", "> 1 (faster than spoken)"
        )
    async with JobsBench("transcribe") as bench:
        bench.start_workers(["transcribe"])
        await bench.finished([await bench.submit("transcribe", {}, speech_wav(5))], 600)  # loads Whisper
        audio = speech_wav(120)
        (job,) = await bench.finished([await bench.submit("transcribe", {}, audio)], 1200)
        seconds = run_s(job)
        log(f"transcribe: 120 s of speech in {seconds:.1f} s")
        out["jobs_transcribe_audio_s_per_s"] = metric(
            120 / seconds, "audio s/s", "> 1 (faster than real time)",
            f"one worker (1 thread, nice 19, SCHED_IDLE), Whisper base int8 at beam 5, 120 s of Piper "
            f"speech (WAV) in {seconds:.1f} s, decode included",
        )  # fmt: skip
    async with JobsBench("summarize") as bench:
        store = Store(bench.database)
        calls = [await recorded_call(store, f"bench-{i}") for i in range(6)]
        bench.start_workers(["summarize_call"])
        await bench.finished([await bench.submit("summarize_call", {"call_id": calls[0]})], 600)
        jobs = await bench.finished(
            [await bench.submit("summarize_call", {"call_id": c}) for c in calls[1:]], 900
        )
        per_call = [run_s(j) for j in jobs]
        log(f"summarize_call: {[round(s, 2) for s in per_call]} s per call")
        out["jobs_summarize_calls_per_min"] = metric(
            60 / (sum(per_call) / len(per_call)), "calls/min", "-",
            f"one worker, SmolLM2-135M (local llama.cpp, 1 thread) for the summary + e5 intents, "
            f"{len(CALL_TURNS)}-turn calls; p50 {percentile(per_call, 50):.2f} s a call",
        )  # fmt: skip
    return out


# -- 2. queue wait under a burst ------------------------------------------------------------------


async def measure_burst() -> dict[str, Metric]:
    broker = os.environ.get("VA_TEST_ROCKETMQ_ENDPOINT")
    async with JobsBench("burst", broker) as bench:
        bench.start_workers(["synthesize"], BURST_WORKERS)
        # Warm-up: one job per worker, so model loading is not counted as queue wait.
        await bench.finished([await bench.submit("synthesize", {"text": "Hello."}) for _ in range(4)], 600)
        ids = await asyncio.gather(
            *(bench.submit("synthesize", {"text": PROSE[i % len(PROSE)]}) for i in range(BURST))
        )
        jobs = await bench.finished(ids, 1200)
    waits = [wait_s(j) for j in jobs]
    runs = [run_s(j) for j in jobs]
    via = "RocketMQ jobs topic" if broker else "store-polled queue"
    note = (
        f"{BURST} one-sentence synthesize jobs submitted at once to {BURST_WORKERS} workers via the {via}; "
        f"wait = started_at - created_at; each ran p50 {percentile(runs, 50):.2f} s, so the tail is the "
        f"backlog draining ({BURST} x {percentile(runs, 50):.2f} s / {BURST_WORKERS} workers)"
    )
    log(f"burst: wait p50 {percentile(waits, 50):.2f} s, p95 {percentile(waits, 95):.2f} s")
    return {
        "jobs_queue_wait_p50_s": metric(percentile(waits, 50), "s", "-", note),
        "jobs_queue_wait_p95_s": metric(percentile(waits, 95), "s", "-", note),
        "jobs_queue_dispatch_min_s": metric(
            min(waits), "s", "< 1 s", "the first job's wait: submit -> a worker started it"
        ),
    }


async def measure_dispatch(samples: int = DISPATCH_SAMPLES) -> dict[str, Metric]:
    broker = os.environ.get("VA_TEST_ROCKETMQ_ENDPOINT")
    if not broker:
        log("dispatch: VA_TEST_ROCKETMQ_ENDPOINT unset: skipped (it measures the broker feed)")
        return {}
    rng = random.Random(7)
    async with JobsBench("dispatch", broker) as bench:
        bench.env["VOICEAGENT_JOBS__EXTRA_KINDS"] = json.dumps(ECHO_EXTRA_KINDS)
        bench.service = JobService(bench.jobs, bench.queue, KindRegistry(ECHO_EXTRA_KINDS), bench.settings)
        kinds = ["synthesize", "transcribe", "echo"]
        bench.start_workers(kinds)  # concurrency 1: the three kinds take the one slot in turn
        await bench.finished([await bench.submit("echo", {"text": "warm"})], 600)
        waits = []
        for _ in range(samples):
            await asyncio.sleep(rng.uniform(0.3, 2.5))
            [job] = await bench.finished([await bench.submit("echo", {"text": "ping"})], 60)
            waits.append(wait_s(job))
    note = (
        f"one idle `voiceagent worker --kinds {','.join(kinds)}` (concurrency 1), {samples} echo jobs "
        "one at a time at random moments via the RocketMQ jobs topic; wait = started_at - created_at "
        f"(min {min(waits):.2f} s, mean {sum(waits) / len(waits):.2f} s)"
    )
    p50, p95 = percentile(waits, 50), percentile(waits, 95)
    log(f"dispatch: p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(waits):.2f} s")
    return {
        "jobs_dispatch_one_slot_three_kinds_p50_s": metric(p50, "s", "< 1 s", note),
        "jobs_dispatch_one_slot_three_kinds_p95_s": metric(p95, "s", "< 2 s", note),
        "jobs_dispatch_one_slot_three_kinds_max_s": metric(max(waits), "s", "-", note),
    }


# -- 4. a live call beside two busy workers --------------------------------------------------------


async def measure_call_beside_workers() -> dict[str, Metric]:
    async with JobsBench("beside") as bench:
        server = start_server("real", extra_env={"VOICEAGENT_STORE__URL": bench.url})
        try:
            rate = 16_000
            gap = np.zeros(int(QUESTION_GAP_S * rate), dtype="<i2")
            pattern = np.concatenate([np.concatenate([speech(q), gap]) for q in QUESTIONS])

            async def window(seconds: float = WINDOW_S) -> dict[str, Any]:
                source = lambda _: LoopSource(pattern, 0)  # noqa: E731 - the same caller every window
                return await run_level(server, 1, source, settle_s=1, window_s=seconds)

            busy_ids: list[str] = []

            async def keep_busy() -> None:
                """A backlog that outlasts the windows: long texts and a long recording."""
                busy_ids.extend([await bench.submit("synthesize", {"text": prose(20_000)}) for _ in range(2)])
                busy_ids.append(await bench.submit("transcribe", {}, speech_wav(300)))

            await window(15)  # warm-up, not counted: the first turns of a fresh server are slower
            rounds: list[tuple[str, dict[str, Any]]] = []
            running = 0
            for _ in range(2):  # ABBA twice
                rounds.append(("without", await window()))
                await keep_busy()
                bench.start_workers(["synthesize", "transcribe"], 2)
                await _until_running(bench, busy_ids, 2)
                rounds.append(("with", await window()))
                rounds.append(("with", await window()))
                running = min(running or 2, await _running(bench, busy_ids))
                for proc in bench.workers:
                    proc.send_signal(signal.SIGTERM)
                for proc in bench.workers:
                    proc.wait(60)
                bench.workers.clear()
                rounds.append(("without", await window()))
        finally:
            server.stop()
    for name, level in rounds:
        cpu = level["server_cpu_pct_of_core"]
        log(f"  {name} workers: v2v {level['v2v_s']}, late {level['late_pct']} %, server cpu {cpu} %")
    turns = {c: [x for n, lv in rounds if n == c for x in lv["v2v_s"]] for c in ("without", "with")}
    base, busy = percentile(turns["without"], 50), percentile(turns["with"], 50)
    # Each window is a new call asking the same questions in the same order, and a turn's latency
    # grows with the call's history: the same turn of the call with and without workers is the
    # fairer pair (the pooled p50 of two spread-out sets moves with which turns fall mid-way).
    by_turn = {
        c: np.array([lv["v2v_s"][:4] for n, lv in rounds if n == c and len(lv["v2v_s"]) >= 4]).mean(axis=0)
        for c in ("without", "with")
    }
    paired = float(np.mean(by_turn["with"] / by_turn["without"]) - 1) * 100
    late = {c: float(np.mean([lv["late_pct"] for n, lv in rounds if n == c])) for c in ("without", "with")}
    duty = load_settings(environ={}).jobs.worker.duty_beside_calls
    note = (
        f"one aiortc caller asking {len(QUESTIONS)} synthesized questions {QUESTION_GAP_S:.0f} s apart, real "
        f"models (bench server as `voiceagent serve`), {WINDOW_S:.0f} s windows ABBA twice without / with "
        f"two `voiceagent worker` processes (nice 19, SCHED_IDLE, working {duty:.0%} of the time while "
        "the node holds a call) on a backlog of long synthesize/transcribe jobs "
        f"({running} running at each busy pair's end), after a discarded warm-up; p50 of "
        f"{len(turns['without'])} / {len(turns['with'])} turns; the same turn of the call compared: "
        f"{paired:+.1f} % (turns 1-4 without {np.round(by_turn['without'], 2).tolist()}, with "
        f"{np.round(by_turn['with'], 2).tolist()} s); late outbound frames {late['without']:.2f} % vs "
        f"{late['with']:.2f} %"
    )
    return {
        "jobs_call_v2v_p50_without_workers_s": metric(base, "s", "-", note),
        "jobs_call_v2v_p50_with_two_workers_s": metric(busy, "s", "<= 1.10 x without", note),
        "jobs_call_v2v_slowdown_pct": metric((busy / base - 1) * 100, "%", "<= 10 %", note),
        "jobs_call_v2v_same_turn_slowdown_pct": metric(paired, "%", "<= 10 %", note),
        "jobs_call_late_frames_with_two_workers_pct": metric(late["with"], "%", "< 1 %", note),
    }


async def _running(bench: JobsBench, job_ids: Sequence[str]) -> int:
    jobs = [await bench.jobs.get(i) for i in job_ids]
    return sum(1 for j in jobs if j is not None and j.status == "running")


async def _until_running(
    bench: JobsBench, job_ids: Sequence[str], count: int, timeout_s: float = 300
) -> None:
    deadline = time.monotonic() + timeout_s
    while await _running(bench, job_ids) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers did not start the backlog\n{bench.worker_logs()}")
        await asyncio.sleep(0.5)
