"""The worker in-process, fast: on the store-polled queue and on the in-process bus (RocketMQ's
semantics without a broker), with the echo kind and a few tiny fakes, on SQLite."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.conftest import open_migrated
from tests.events.test_contract import dead_letter_reader, drain
from tests.serve_process import VoiceagentProcess
from voiceagent.cli import main
from voiceagent.config import Settings
from voiceagent.events import BusError, EventBus, JobQueuedEvent
from voiceagent.events.envelope import decode
from voiceagent.events.eventbus import DLQ_REASON
from voiceagent.events.factory import create_transport
from voiceagent.jobs.feeds import BrokerFeed, Feed, StoreFeed, receive_wait
from voiceagent.jobs.kinds.base import JobContext, JobKind, KindParams
from voiceagent.jobs.queue import BrokerJobQueue, JobQueue, StoreJobQueue
from voiceagent.jobs.schemas import FINISHED, Claim, JobRecord
from voiceagent.jobs.store import JobStore
from voiceagent.jobs.worker import NoKindLoaded, Worker, retry_delay
from voiceagent.store import Database
from voiceagent.testing.jobs import ECHO_EXTRA_KINDS, ECHO_LOG_ENV, EchoKind, EchoLog, JobClient

FEEDS = ["store", "bus"]
only_wake_ups = pytest.mark.parametrize("harness", ["bus"], indirect=True)  # about messages


def job_settings(settings: Settings, **worker: Any) -> Settings:
    fast = {
        "invisible_s": 1.5,  # lease renewed (and message extended) every 0.5 s
        "poll_s": 0.05,
        "progress_every_s": 0.05,
        "backoff_s": 0.2,
        "backoff_max_s": 1.0,
        "max_attempts": 3,
        "sweep_s": 3600.0,
        "concurrency": 1,
        **worker,
    }
    jobs = settings.jobs.model_copy(
        update={"worker": settings.jobs.worker.model_copy(update=fast), "blob_chunk_bytes": 4096}
    )
    return settings.model_copy(update={"jobs": jobs})


@dataclass
class Harness:
    settings: Settings
    database: Database
    store: JobStore
    bus: EventBus
    queue: JobQueue
    feed_kind: str
    echo_log: EchoLog
    workers: list[tuple[Worker, asyncio.Event, asyncio.Task[None]]]

    async def start(self, kinds: Sequence[JobKind] | None = None, **worker: Any) -> Worker:
        settings = job_settings(self.settings, **worker) if worker else self.settings
        kinds = list(kinds) if kinds is not None else [EchoKind(settings, self.database)]
        feed: Feed = StoreFeed(settings.jobs.worker)
        if self.feed_kind == "bus":
            feed = BrokerFeed(self.bus, settings.jobs.worker, wait_s=0.2)
            for kind in kinds:  # the in-process bus delivers only to groups that exist already
                await (await self.bus.subscribe(feed.group(kind.name), ["jobs"], kind.name)).close()
        runner = Worker(settings, self.store, kinds, self.queue, feed, name=f"test-{len(self.workers)}")
        runner.runner.spread = lambda: 1.0
        stop = asyncio.Event()
        self.workers.append((runner, stop, asyncio.create_task(runner.run(stop))))
        return runner

    async def stop(self, worker: Worker, within_s: float = 10.0) -> None:
        for runner, stop, task in self.workers:
            if runner is worker:
                stop.set()
                async with asyncio.timeout(within_s):
                    await task

    async def submit(self, params: dict[str, Any], kind: str = "echo", publish: bool = True) -> str:
        return await self.client.submit(kind, params, publish=publish)

    async def wait(
        self,
        job_id: str,
        until: Callable[[JobRecord], bool] = lambda j: j.status in FINISHED,
        within_s: float = 15,
    ) -> JobRecord:
        return await self.client.wait(job_id, until, within_s)

    @property
    def client(self) -> JobClient:
        return JobClient(self.store, self.queue, poll_s=0.02)

    async def file(self, job: JobRecord, name: str) -> bytes:
        assert job.result_owner is not None
        return b"".join([c async for c in self.store.read_file(job.id, job.result_owner, name)])


@pytest.fixture(params=FEEDS)
async def harness(
    request: pytest.FixtureRequest,
    settings: Settings,
    sqlite_database: Database,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Harness]:
    monkeypatch.setenv(ECHO_LOG_ENV, str(tmp_path / "echo.log"))
    settings = job_settings(settings)
    transport = create_transport(settings.events)
    await transport.start()
    bus = EventBus(transport, settings.events)
    queue: JobQueue = BrokerJobQueue(bus) if request.param == "bus" else StoreJobQueue()
    harness = Harness(
        settings,
        sqlite_database,
        JobStore(sqlite_database),
        bus,
        queue,
        request.param,
        EchoLog(tmp_path / "echo.log"),
        [],
    )
    try:
        yield harness
    finally:
        for _, stop, _ in harness.workers:
            stop.set()
        await asyncio.gather(*(task for _, _, task in harness.workers), return_exceptions=True)
        await transport.close()


# --- kinds for the tests -----------------------------------------------------------------------


class Gauge:
    """How many runs are in hand at once, across kinds."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0


class GaugeKind(JobKind):
    Params = KindParams
    gauge: ClassVar[Gauge] = Gauge()

    async def run(self, job: JobContext) -> dict[str, Any]:
        self.gauge.now += 1
        self.gauge.most = max(self.gauge.most, self.gauge.now)
        try:
            await asyncio.sleep(0.15)
        finally:
            self.gauge.now -= 1
        return {}


class GaugeA(GaugeKind):
    name = "gauge_a"


class GaugeB(GaugeKind):
    name = "gauge_b"


class SilentKind(JobKind):
    """Works without ever reporting progress."""

    name = "silent"
    Params = KindParams

    async def run(self, job: JobContext) -> dict[str, Any]:
        await asyncio.sleep(1.5)
        path = job.workdir / "out.txt"
        path.write_text("done")
        job.add_file("out.txt", "text/plain", path)
        return {}


class BrokenKind(JobKind):
    name = "broken"
    Params = KindParams

    async def load(self) -> None:
        raise OSError("model file missing")

    async def run(self, job: JobContext) -> dict[str, Any]:
        raise AssertionError("never loaded, never run")


# --- the tests -------------------------------------------------------------------------------


async def test_a_job_runs_once_and_its_files_are_stored_in_chunks(harness: Harness) -> None:
    await harness.start()
    text = "Bonjour, 世界! " * 600  # 7,800 characters, 10,200 bytes: three 4 KiB chunks
    job_id = await harness.submit({"text": text})
    job = await harness.wait(job_id)
    assert (job.status, job.attempts, job.progress, job.reason) == ("succeeded", 1, 1.0, None)
    assert job.result == {"chars": len(text), "attempt": 1}
    [described] = job.files
    assert (described.name, described.bytes) == ("echo.txt", len(text.encode()))
    assert (await harness.file(job, "echo.txt")).decode() == text
    chunks = [c async for c in harness.store.read_file(job.id, job.result_owner or "", "echo.txt")]
    assert [len(c) for c in chunks] == [4096, 4096, 10_200 - 2 * 4096]
    assert harness.echo_log.count("done") == {job_id: 1}


async def test_progress_is_written_while_the_job_runs(harness: Harness) -> None:
    await harness.start()
    job_id = await harness.submit({"text": "x", "steps": 20, "sleep_s": 2.0})
    midway = await harness.wait(job_id, lambda j: j.status == "running" and 0 < j.progress < 1)
    assert midway.progress_note is not None and midway.progress_note.startswith("step ")
    notes = {midway.progress_note}
    while (job := await harness.store.get(job_id)) is not None and job.status == "running":
        notes.add(job.progress_note or "")
        await asyncio.sleep(0.05)
    assert len(notes) >= 5  # written as it goes, not once at the end
    assert (await harness.wait(job_id)).status == "succeeded"


async def test_transient_failures_are_retried_with_backoff_then_succeed(harness: Harness) -> None:
    await harness.start()
    started = time.monotonic()
    job_id = await harness.submit({"text": "third time lucky", "fail_times": 2})
    job = await harness.wait(job_id)
    assert (job.status, job.attempts, job.reason, job.detail) == ("succeeded", 3, None, None)
    assert job.result == {"chars": 16, "attempt": 3}
    assert time.monotonic() - started >= 0.2 + 0.4  # the backoff: 0.2 s, then 0.4 s
    assert [attempt for _, attempt in harness.echo_log.runs(job_id)] == [1, 2, 3]
    assert harness.echo_log.count("done") == {job_id: 1}


def test_kinds_sharing_fewer_slots_poll_shorter_so_each_gets_its_turn_soon() -> None:
    assert receive_wait(kinds=3, slots=3) == receive_wait(kinds=1, slots=4) == 2.0  # a slot each
    assert receive_wait(kinds=3, slots=1) == pytest.approx(2.0 / 3)  # a round of turns: 2 s
    assert receive_wait(kinds=12, slots=1) == 0.5  # never a busy loop of round trips
    assert receive_wait(kinds=3, slots=1, longest_s=0.2) == 0.2  # a shorter poll is kept


def test_the_backoff_doubles_up_to_its_cap() -> None:
    assert [retry_delay(n, 5.0, 30.0) for n in (1, 2, 3, 4, 5)] == [5.0, 10.0, 20.0, 30.0, 30.0]
    assert retry_delay(2, 5.0, 30.0, spread=0.75) == 7.5


async def test_after_max_attempts_the_job_gives_up_and_is_dead_lettered(
    harness: Harness, unique: Callable[[str], str]
) -> None:
    letters = await dead_letter_reader(harness.bus, unique)
    await harness.start()
    job_id = await harness.submit({"text": "never", "fail_times": 10})
    job = await harness.wait(job_id)
    assert (job.status, job.reason, job.attempts) == ("failed", "gave_up", 3)
    assert job.detail == "RuntimeError: echo fails run 3 of the first 10 (after 3 attempts)"
    assert len(harness.echo_log.runs(job_id)) == 3
    group = "voiceagent-jobs-echo"
    if harness.feed_kind == "bus":
        [letter] = await drain(letters, group, 1, within_s=5)
        assert letter.properties[DLQ_REASON] == "gave_up"
        event = decode(letter.body)
        assert isinstance(event, JobQueuedEvent) and event.payload.job_id == job_id
    else:  # no message to dead-letter: the stored reason is the record
        assert await drain(letters, group, 1, within_s=0.5) == []


async def test_an_input_error_fails_the_job_at_once_without_retrying(harness: Harness) -> None:
    await harness.start()
    refused_by_run = await harness.submit({"text": "x", "fail_input": True})
    refused_by_params = await harness.submit({"text": "x", "steps": 0})
    job = await harness.wait(refused_by_run)
    assert (job.status, job.reason, job.detail, job.attempts) == (
        "failed",
        "invalid_params",
        "fail_input is set",
        1,
    )
    job = await harness.wait(refused_by_params)
    assert (job.status, job.reason, job.attempts) == ("failed", "invalid_params", 1)
    assert job.detail is not None and job.detail.startswith("steps:")
    await asyncio.sleep(0.5)  # a retry would have come by now
    assert len(harness.echo_log.runs(refused_by_run)) == 1 and harness.echo_log.runs(refused_by_params) == []


async def test_cancel_while_running_ends_cancelled_and_keeps_no_files(harness: Harness) -> None:
    await harness.start()
    job_id = await harness.submit({"text": "long", "steps": 200, "sleep_s": 20.0})
    await harness.wait(job_id, lambda j: j.status == "running" and j.progress > 0)
    asked = time.monotonic()
    await harness.store.cancel(job_id, ttl_s=3600)
    job = await harness.wait(job_id)
    assert time.monotonic() - asked < 5  # at a progress report, not when the run would have ended
    assert (job.status, job.files, job.result_owner, job.detail) == (
        "cancelled",
        [],
        None,
        "cancelled while running",
    )
    assert harness.echo_log.count("done") == {}


async def test_a_kind_that_never_reports_still_cannot_store_a_cancelled_result(harness: Harness) -> None:
    await harness.start([SilentKind(harness.settings, harness.database)])
    job_id = await harness.submit({}, kind="silent")
    await harness.wait(job_id, lambda j: j.status == "running")
    await harness.store.cancel(job_id, ttl_s=3600)
    job = await harness.wait(job_id)
    assert (job.status, job.files) == ("cancelled", [])


async def test_a_run_that_lost_its_lease_writes_nothing(harness: Harness) -> None:
    worker = await harness.start()
    job_id = await harness.submit({"text": "slow", "steps": 30, "sleep_s": 3.0})
    await harness.wait(job_id, lambda j: j.status == "running")
    # Another worker whose clock says the lease lapsed takes the job over (as after a long stall).
    future = JobStore(harness.database, clock=lambda: harness.store.clock() + timedelta(seconds=60))
    thief = await future.claim(job_id, "thief", 600)
    assert isinstance(thief, Claim)
    async with asyncio.timeout(5):
        while worker.runner.outcomes["lost"] == 0:
            await asyncio.sleep(0.02)
    job = await harness.store.get(job_id)
    assert job is not None and (job.status, job.claim, job.files) == ("running", thief.token, [])
    assert harness.echo_log.count("done") == {}


async def test_a_job_whose_runs_keep_being_lost_gives_up(harness: Harness) -> None:
    """Workers that die on a job (out of memory, say) never report a failure: the claims count."""
    job_id = await harness.submit({"text": "poison"}, publish=False)
    for _ in range(3):
        assert isinstance(await harness.store.claim(job_id, "doomed", 0.001), Claim)
        await asyncio.sleep(0.01)  # its lease lapses: the worker died
    await harness.start()
    await harness.queue.publish(job_id, "echo")
    job = await harness.wait(job_id)
    assert (job.status, job.reason, job.attempts) == ("failed", "gave_up", 4)
    assert job.detail == "3 runs ended without a result (workers lost)"
    assert harness.echo_log.runs(job_id) == []


@only_wake_ups
async def test_a_duplicate_wake_up_for_a_finished_job_is_acked_and_does_not_rerun(
    harness: Harness,
) -> None:
    worker = await harness.start()
    job_id = await harness.submit({"text": "once"})
    await harness.wait(job_id)
    for _ in range(2):
        await harness.queue.publish(job_id, "echo")
    async with asyncio.timeout(5):
        while worker.runner.outcomes["finished"] < 2:
            await asyncio.sleep(0.02)
    await harness.stop(worker)
    # Acked: nothing comes back to the group, even after the invisible time.
    group = await harness.bus.subscribe("voiceagent-jobs-echo", ["jobs"], "echo")
    assert await group.receive(wait_s=harness.settings.jobs.worker.invisible_s + 0.5) == []
    assert harness.echo_log.count("start") == {job_id: 1}


@only_wake_ups
async def test_an_early_delayed_wake_up_waits_for_its_job_and_an_old_one_is_spent(
    harness: Harness,
) -> None:
    soon, later = (
        await harness.submit({"text": "soon"}, publish=False),
        await harness.submit({"text": "later"}, publish=False),
    )
    for job_id, delay_s in ((soon, 0.5), (later, 60.0)):  # as a retry leaves them
        claim = await harness.store.claim(job_id, "someone", 10)
        assert isinstance(claim, Claim)
        await harness.store.retry(claim, "worker_error", "boom", delay_s)
    worker = await harness.start()
    await harness.queue.publish(soon, "echo")  # arrives before the job's time
    await harness.queue.publish(later, "echo")  # a stale copy: the retry has its own delayed one
    assert (await harness.wait(soon)).status == "succeeded"
    async with asyncio.timeout(5):
        while worker.runner.outcomes["not_yet"] < 1:
            await asyncio.sleep(0.02)
    job = await harness.store.get(later)
    assert job is not None and job.status == "queued"


async def test_a_graceful_stop_hands_the_running_job_back_at_once(harness: Harness) -> None:
    first = await harness.start(invisible_s=6.0)  # its message stays hidden 6 s once received
    job_id = await harness.submit({"text": "handed over", "steps": 20, "sleep_s": 2.0})
    await harness.wait(job_id, lambda j: j.status == "running" and j.progress > 0)
    await harness.stop(first, within_s=3)
    job = await harness.store.get(job_id)
    assert job is not None and (job.status, job.attempts, job.claim) == ("queued", 0, None)
    assert first.runner.outcomes["released"] == 1
    stopped = time.monotonic()
    await harness.start()
    await harness.wait(job_id, lambda j: j.status == "running")
    assert time.monotonic() - stopped < 3.0  # at once, not when the first message comes back
    job = await harness.wait(job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)  # the stopped run did not count
    assert harness.echo_log.count("done") == {job_id: 1}


async def test_concurrency_is_bounded_across_kinds(harness: Harness) -> None:
    GaugeKind.gauge = Gauge()
    kinds = [GaugeA(harness.settings, harness.database), GaugeB(harness.settings, harness.database)]
    await harness.start(kinds, concurrency=2)
    jobs = [await harness.submit({}, kind=kind) for kind in ["gauge_a", "gauge_b"] * 5]
    for job_id in jobs:
        assert (await harness.wait(job_id)).status == "succeeded"
    assert GaugeKind.gauge.most == 2


async def test_a_kind_that_fails_to_load_leaves_its_jobs_to_other_workers(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    echo = EchoKind(harness.settings, harness.database)
    with caplog.at_level(logging.ERROR):
        worker = await harness.start([echo, BrokenKind(harness.settings, harness.database)])
        broken = await harness.submit({}, kind="broken")
        fine = await harness.submit({"text": "fine"})
        assert (await harness.wait(fine)).status == "succeeded"
    assert sorted(worker.runner.kinds) == ["echo"]
    assert "job kind broken failed to load" in caplog.text
    job = await harness.store.get(broken)
    assert job is not None and (job.status, job.attempts) == ("queued", 0)

    lone = Worker(
        harness.settings,
        harness.store,
        [BrokenKind(harness.settings, harness.database)],
        harness.queue,
        StoreFeed(harness.settings.jobs.worker),
    )
    with pytest.raises(NoKindLoaded):
        await lone.run(asyncio.Event())


async def test_the_sweep_republishes_a_wake_up_that_was_never_sent(harness: Harness) -> None:
    job_id = await harness.submit({"text": "lost"}, publish=False)  # the API's publish failed
    await harness.start(requeue_after_s=0.3, sweep_s=0.2)
    assert (await harness.wait(job_id, within_s=10)).status == "succeeded"


async def test_the_retention_removes_expired_results(harness: Harness) -> None:
    worker = await harness.start()
    job_id = await harness.submit({"text": "short-lived"})
    job = await harness.wait(job_id)
    expired = JobStore(harness.database, clock=lambda: harness.store.clock() + timedelta(days=2))
    assert await expired.remove_expired() == 1
    assert await worker.clean() == 0 and await harness.store.get(job.id) is None


@pytest.mark.integration
async def test_the_worker_command_runs_jobs_beside_an_embedded_node(tmp_path: Path) -> None:
    """events.backend inprocess: `voiceagent worker` polls the SQLite file the node writes."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    database = await open_migrated(url)
    store = JobStore(database)
    try:
        job = await store.create("echo", {"text": "from the node"})
        worker = VoiceagentProcess(
            tmp_path,
            ["worker", "--kinds", "echo", "--concurrency", "2"],
            "worker.log",
            VOICEAGENT_STORE__URL=url,
            VOICEAGENT_JOBS__EXTRA_KINDS=json.dumps(ECHO_EXTRA_KINDS),
        )
        try:
            deadline = time.monotonic() + 60
            while (done := await store.get(job.id)) is None or done.status not in FINISHED:
                assert time.monotonic() < deadline and worker.proc.poll() is None, worker.log
                await asyncio.sleep(0.1)
        finally:
            assert worker.stop() == 0, worker.log
        assert done.status == "succeeded", worker.log
        assert "running kinds echo from the store queue, 2 at once" in worker.log
        assert f"job {job.id} echo: succeeded, attempt 1" in worker.log
    finally:
        await database.close()


def test_the_cli_refuses_an_unknown_kind_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--kinds", "synthesize,nonsense"]) == 1
    error = capsys.readouterr().err
    assert "unknown job kind(s) nonsense" in error and "synthesize, transcribe" in error


def test_the_worker_process_yields_the_cpu_and_bounds_math_threads() -> None:
    """In a child: a priority once lowered cannot be raised back in this test process."""
    probe = (
        "import os, sys\n"
        "from voiceagent.jobs.priority import apply_priority\n"
        "from voiceagent.jobs.settings import WorkerSettings\n"
        "said = apply_priority(WorkerSettings(threads=2, nice=10))\n"
        "print(said); print(os.getpriority(os.PRIO_PROCESS, 0)); print(os.environ['OMP_NUM_THREADS'])\n"
        "print(os.sched_getscheduler(0) == getattr(os, 'SCHED_IDLE', -1))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=os.environ
    )
    said, nice, threads, idle = out.stdout.split("\n")[:4]
    assert int(nice) >= 10 and threads == "2"
    assert ("no SCHED_IDLE" not in said) == (idle == "True")
    assert "2 math thread(s)" in said


@only_wake_ups
async def test_a_broker_outage_under_a_running_worker_is_waited_out(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker goes away under a running worker: every receive fails, the worker backs off
    and keeps its loop; the job waits queued in the store; the broker returns and the job runs."""
    monkeypatch.setattr("voiceagent.jobs.feeds.ERROR_BACKOFF_S", 0.05)
    outage = asyncio.Event()
    outage.set()
    failed_receives = 0
    subscribe = harness.bus.subscribe_until_stopped

    async def subscribe_to_a_flaky_broker(*args: Any, **kwargs: Any) -> Any:
        subscription = await subscribe(*args, **kwargs)
        receive = subscription.receive

        async def receive_unless_down(*a: Any, **k: Any) -> Any:
            nonlocal failed_receives
            if outage.is_set():
                failed_receives += 1
                raise BusError("broker unreachable (test)")
            return await receive(*a, **k)

        monkeypatch.setattr(subscription, "receive", receive_unless_down)
        return subscription

    monkeypatch.setattr(harness.bus, "subscribe_until_stopped", subscribe_to_a_flaky_broker)
    with caplog.at_level(logging.WARNING, logger="voiceagent.jobs"):
        await harness.start()
        job_id = await harness.submit({"text": "through an outage"})
        async with asyncio.timeout(15):
            while failed_receives < 4:  # several backoffs: 0.05, 0.1, 0.2 s…
                await asyncio.sleep(0.02)
        waiting = await harness.store.get(job_id)
        assert waiting is not None and waiting.status == "queued"
        assert all(not task.done() for _, _, task in harness.workers)
        outage.clear()
        job = await harness.wait(job_id)
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert "receive failed on voiceagent-jobs-echo" in caplog.text
    assert harness.echo_log.count("done") == {job_id: 1}
