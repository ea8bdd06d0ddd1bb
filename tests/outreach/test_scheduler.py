"""The outreach scheduler and its run ledger: slots computed alike by every process, each slot run
at most once however many schedulers race for it, a restart that runs the newest missed slot once,
and a failing job that fails its run without taking the scheduler down.

Time: slot arithmetic and catch-up use a fake clock; the few tests that let APScheduler fire for
real wait for conditions with generous deadlines and assert nothing about how long things took.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import open_migrated
from voiceagent.config import JobSchedule, OutreachSettings, SchedulerSettings, Settings
from voiceagent.outreach.jobs import CheckinJob
from voiceagent.outreach.process import run_outreach_process
from voiceagent.outreach.runs import ABANDONED, RunLedger, RunRecord, Watermarks
from voiceagent.outreach.scheduler import (
    EPOCH,
    JobFailed,
    OutreachScheduler,
    Slotter,
    crontab_trigger,
)
from voiceagent.store import Database
from voiceagent.store.models import LiveSession
from voiceagent.testing.fakes import FakePublisher

T0 = datetime(2026, 11, 25, 10, 30, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def until(condition: Callable[[], Awaitable[bool]], within_s: float = 60.0) -> None:
    async with asyncio.timeout(within_s):  # generous: the suite runs on a busy 2-core machine
        while not await condition():
            await asyncio.sleep(0.05)


class CountingJob:
    """Counts runs per slot; optionally fails or blocks on demand."""

    def __init__(self) -> None:
        self.slots: Counter[datetime] = Counter()
        self.fail_next = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

    async def __call__(self, slot: datetime) -> Mapping[str, Any]:
        self.slots[slot] += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("broker down")
        return {"slot": slot.isoformat()}


def hourly(**fields: Any) -> SchedulerSettings:
    """Schedules that will not fire on their own during a test: runs come from catch-up or fire()."""
    return SchedulerSettings(
        catch_up=fields.pop("catch_up", True),
        analysis=JobSchedule(interval_s=3600),
        checkin=JobSchedule(cron="0 0 1 1 *"),
        **fields,
    )


# --- the run ledger ---------------------------------------------------------------------------


async def test_a_slot_is_claimed_once_and_closed_by_its_runner(database: Database) -> None:
    ledger = RunLedger(database, "node-a/1")
    other = RunLedger(database, "node-b/2")
    slot = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)

    assert await ledger.claim("analysis", slot)
    assert not await ledger.claim("analysis", slot)
    assert not await other.claim("analysis", slot)
    assert await other.claim("checkin", slot)  # the run key is (job, slot)

    running = await ledger.get("analysis", slot)
    assert running is not None and running.status == "running" and running.runner == "node-a/1"
    assert not await other.finish("analysis", slot, {"x": 1})  # not its row
    assert await ledger.finish("analysis", slot, {"turns": 3})
    done = await ledger.last_run("analysis")
    assert done is not None
    assert (done.status, done.stats, done.slot) == ("succeeded", {"turns": 3}, slot)
    assert done.finished_at is not None and done.finished_at.tzinfo is not None

    later = slot + timedelta(hours=1)
    assert await ledger.claim("analysis", later)
    assert await ledger.fail("analysis", later, "x" * 400, {"publish_failed": 2})
    failed = await ledger.last_run("analysis")
    assert failed is not None and failed.slot == later
    assert failed.status == "failed" and failed.stats == {"publish_failed": 2}
    assert failed.detail is not None and len(failed.detail) == 300
    assert [r.slot for r in await ledger.recent("analysis")] == [later, slot]


async def test_two_ledgers_racing_for_the_same_slots_each_win_exactly_once(store_url: str) -> None:
    # Two engines on one database, as two scheduler processes would have.
    first, second = await open_migrated(store_url), await open_migrated(store_url)
    try:
        ledgers = [
            RunLedger(first, "a"),
            RunLedger(second, "b"),
            RunLedger(first, "c"),
            RunLedger(second, "d"),
        ]
        slots = [T0 + timedelta(minutes=5 * i) for i in range(10)]
        results = await asyncio.gather(*(ledger.claim("analysis", s) for s in slots for ledger in ledgers))
        for i in range(len(slots)):
            assert sum(results[i * len(ledgers) : (i + 1) * len(ledgers)]) == 1
        rows = await RunLedger(first, "x").recent("analysis", limit=100)
        assert sorted(r.slot for r in rows) == slots
    finally:
        await first.close()
        await second.close()


async def test_a_run_left_running_by_a_dead_runner_is_marked_failed_and_never_rerun(
    database: Database,
) -> None:
    clock = Clock()
    dead = RunLedger(database, "node-a/1", clock)
    slot = T0.replace(minute=0)
    assert await dead.claim("analysis", slot)

    alive = RunLedger(database, "node-b/2", clock)
    clock.now = T0 + timedelta(minutes=5)
    assert await alive.sweep_abandoned("analysis", timedelta(minutes=10)) == 0  # may still be running
    clock.now = T0 + timedelta(minutes=11)
    assert await alive.sweep_abandoned("checkin", timedelta(minutes=10)) == 0  # another job's rows
    assert await alive.sweep_abandoned("analysis", timedelta(minutes=10)) == 1
    row = await alive.get("analysis", slot)
    assert row is not None and (row.status, row.detail) == ("failed", ABANDONED)
    assert not await alive.claim("analysis", slot)  # still taken: at most once per slot


async def test_prune_deletes_closed_history_only(database: Database) -> None:
    ledger = RunLedger(database, "a")
    slots = [T0 + timedelta(hours=h) for h in range(4)]
    for slot in slots:
        assert await ledger.claim("analysis", slot)
    for slot in slots[1:]:
        await ledger.finish("analysis", slot, {})
    assert await ledger.claim("checkin", slots[0])
    await ledger.finish("checkin", slots[0], {})

    assert await ledger.prune("analysis", before=slots[3]) == 2  # not slots[0]: still running
    assert [r.slot for r in await ledger.recent("analysis")] == [slots[3], slots[0]]
    assert await ledger.get("checkin", slots[0]) is not None


async def test_watermarks_only_move_forward(database: Database) -> None:
    marks = Watermarks(database)
    assert await marks.get("intent-analysis") == 0
    assert await marks.advance("intent-analysis", 10) == 10
    assert await marks.advance("intent-analysis", 4) == 10
    assert await marks.advance("intent-analysis", 12) == 12
    assert await marks.get("intent-analysis") == 12
    assert await marks.get("other") == 0


# --- slots ------------------------------------------------------------------------------------


def test_interval_slots_are_the_epoch_grid_at_or_before_now() -> None:
    five_min = Slotter(JobSchedule(interval_s=300))
    assert five_min.slot_at(datetime(2026, 11, 25, 10, 7, 31, tzinfo=UTC)) == datetime(
        2026, 11, 25, 10, 5, tzinfo=UTC
    )
    assert five_min.slot_at(datetime(2026, 11, 25, 10, 5, tzinfo=UTC)) == datetime(
        2026, 11, 25, 10, 5, tzinfo=UTC
    )
    # Not anchored at start-up time: 7 s grid points are multiples of 7 s since the epoch.
    seven = Slotter(JobSchedule(interval_s=7))
    for second in range(0, 100, 3):
        slot = seven.slot_at(T0 + timedelta(seconds=second, microseconds=123))
        assert (slot - EPOCH).total_seconds() % 7 == 0
        assert timedelta(0) <= T0 + timedelta(seconds=second) - slot < timedelta(seconds=7)
    # A naive clock reading is UTC.
    assert five_min.slot_at(datetime(2026, 11, 25, 10, 7)) == datetime(2026, 11, 25, 10, 5, tzinfo=UTC)


@pytest.mark.parametrize("interval_s", [0.1, 0.25, 1, 7, 300, 86400])
def test_each_fire_time_of_the_interval_trigger_is_its_own_slot(interval_s: float) -> None:
    # APScheduler adds float seconds: its fire times may miss the exact grid by microseconds.
    slotter = Slotter(JobSchedule(interval_s=interval_s))
    fire = slotter.trigger.get_next_fire_time(None, T0 + timedelta(microseconds=1))
    slots = []
    for _ in range(50):
        slot = slotter.slot_at(fire)
        assert abs(slot - fire) < timedelta(milliseconds=1)
        slots.append(slot)
        fire = slotter.trigger.get_next_fire_time(fire, fire)
    assert {b - a for a, b in itertools.pairwise(slots)} == {timedelta(seconds=interval_s)}


@pytest.mark.parametrize(
    ("cron", "now", "slot"),
    [
        ("*/5 * * * *", datetime(2026, 11, 25, 10, 7, 31), datetime(2026, 11, 25, 10, 5)),
        ("*/5 * * * *", datetime(2026, 11, 25, 10, 10), datetime(2026, 11, 25, 10, 10)),
        ("0 9 * * *", datetime(2026, 11, 25, 8, 59), datetime(2026, 11, 24, 9, 0)),
        ("* 8 * * *", datetime(2026, 11, 25, 20, 0), datetime(2026, 11, 25, 8, 59)),
        # crontab weekdays: 1 = Monday, 0 and 7 = Sunday (2026-11-25 is a Wednesday)
        ("0 9 * * 1", datetime(2026, 11, 25, 12, 0), datetime(2026, 11, 23, 9, 0)),
        ("0 9 * * 0", datetime(2026, 11, 25, 12, 0), datetime(2026, 11, 22, 9, 0)),
        ("0 9 * * 7", datetime(2026, 11, 25, 12, 0), datetime(2026, 11, 22, 9, 0)),
        ("0 9 * * 1-5", datetime(2026, 11, 29, 12, 0), datetime(2026, 11, 27, 9, 0)),
        ("0 0 29 2 *", datetime(2026, 11, 25, 12, 0), datetime(2024, 2, 29, 0, 0)),
    ],
)
def test_cron_slot_is_the_most_recent_fire_time(cron: str, now: datetime, slot: datetime) -> None:
    slotter = Slotter(JobSchedule(cron=cron))
    assert slotter.slot_at(now.replace(tzinfo=UTC)) == slot.replace(tzinfo=UTC)


def test_cron_fire_times_are_their_own_slots_and_agree_with_the_trigger() -> None:
    slotter = Slotter(JobSchedule(cron="*/15 8-17 * * 1-5"))
    fire = slotter.trigger.get_next_fire_time(None, T0)
    for _ in range(100):
        following = slotter.trigger.get_next_fire_time(fire, fire + timedelta(microseconds=1))
        assert slotter.slot_at(fire) == fire
        assert slotter.slot_at(following - timedelta(seconds=1)) == fire
        fire = following


@pytest.mark.parametrize("cron", ["0 9 * * 8", "61 * * * *", "* * *", "0 9 * * 5-2"])
def test_a_bad_cron_expression_is_refused_naming_the_job(cron: str, sqlite_database: Database) -> None:
    with pytest.raises(ValueError, match="cron"):
        crontab_trigger(cron)
    settings = SchedulerSettings(checkin=JobSchedule(cron=cron))
    with pytest.raises(ValueError, match=r"outreach\.scheduler\.checkin"):
        OutreachScheduler(settings, RunLedger(sqlite_database, "a"), {"checkin": CountingJob()})


# --- the scheduler ----------------------------------------------------------------------------


async def test_catch_up_after_a_restart_runs_the_newest_missed_slot_exactly_once(
    sqlite_database: Database,
) -> None:
    job = CountingJob()
    clock = Clock(datetime(2026, 11, 25, 10, 30, tzinfo=UTC))

    async def run_once() -> None:
        scheduler = OutreachScheduler(
            hourly(),
            RunLedger(sqlite_database, "node/1", clock),
            {"analysis": job},
            clock=clock,
            stop_grace_s=60,
        )
        await scheduler.start()
        await scheduler.stop()  # waits for the catch-up run

    await run_once()  # first start: the 10:00 slot is due and has not run
    assert job.slots == {datetime(2026, 11, 25, 10, tzinfo=UTC): 1}

    clock.now = datetime(2026, 11, 25, 10, 55, tzinfo=UTC)
    await run_once()  # restarted within a slot that ran: nothing to do
    assert sum(job.slots.values()) == 1

    clock.now = datetime(2026, 11, 25, 13, 20, tzinfo=UTC)
    await run_once()  # down across 11:00, 12:00 and 13:00: only the newest runs, once
    await run_once()
    assert job.slots == {
        datetime(2026, 11, 25, 10, tzinfo=UTC): 1,
        datetime(2026, 11, 25, 13, tzinfo=UTC): 1,
    }
    rows = await RunLedger(sqlite_database, "x").recent("analysis")
    assert [(r.slot.hour, r.status) for r in rows] == [(13, "succeeded"), (10, "succeeded")]


async def test_without_catch_up_a_start_runs_nothing(sqlite_database: Database) -> None:
    job = CountingJob()
    scheduler = OutreachScheduler(
        hourly(catch_up=False), RunLedger(sqlite_database, "a"), {"analysis": job}, clock=Clock()
    )
    async with scheduler:
        assert scheduler.running
    assert not job.slots


async def test_two_schedulers_started_together_run_the_due_slot_once(sqlite_url: str) -> None:
    job = CountingJob()
    clock = Clock()
    databases = [await open_migrated(sqlite_url), await open_migrated(sqlite_url)]
    try:
        schedulers = [
            OutreachScheduler(hourly(), RunLedger(db, f"node-{i}/1"), {"analysis": job}, clock=clock)
            for i, db in enumerate(databases)
        ]
        await asyncio.gather(*(s.start() for s in schedulers))
        await asyncio.gather(*(s.stop() for s in schedulers))
        assert job.slots == {T0.replace(minute=0): 1}
    finally:
        for db in databases:
            await db.close()


async def test_two_live_schedulers_never_run_a_slot_twice(sqlite_url: str) -> None:
    """Real triggers, real clock: each slot in the ledger was run by exactly one of the two."""
    job = CountingJob()
    settings = SchedulerSettings(analysis=JobSchedule(interval_s=0.5), checkin=JobSchedule(interval_s=60))
    databases = [await open_migrated(sqlite_url), await open_migrated(sqlite_url)]
    ledgers = [RunLedger(db, f"node-{i}/1") for i, db in enumerate(databases)]
    schedulers = [OutreachScheduler(settings, ledger, {"analysis": job}) for ledger in ledgers]
    try:
        for scheduler in schedulers:
            await scheduler.start()

        async def enough_runs() -> bool:
            rows = await ledgers[0].recent("analysis", limit=100)
            return sum(r.status == "succeeded" for r in rows) >= 5

        await until(enough_runs)
        for scheduler in schedulers:
            await scheduler.stop()
        rows = await ledgers[0].recent("analysis", limit=1000)
        assert max(job.slots.values()) == 1
        assert set(job.slots) == {r.slot for r in rows}
        assert all(r.status == "succeeded" for r in rows)
    finally:
        for scheduler in schedulers:
            await scheduler.stop()
        for db in databases:
            await db.close()


async def test_a_failing_job_fails_its_run_and_the_scheduler_keeps_going(sqlite_database: Database) -> None:
    job = CountingJob()
    job.fail_next = 2
    ledger = RunLedger(sqlite_database, "a")
    settings = SchedulerSettings(analysis=JobSchedule(interval_s=0.5), checkin=JobSchedule(interval_s=60))
    async with OutreachScheduler(settings, ledger, {"analysis": job}) as scheduler:

        async def succeeded_after_failures() -> bool:
            rows = await ledger.recent("analysis", limit=100)
            return sum(r.status == "failed" for r in rows) >= 2 and rows[0].status == "succeeded"

        await until(succeeded_after_failures)
        assert scheduler.running
    failed = [r for r in await ledger.recent("analysis", limit=100) if r.status == "failed"]
    assert {r.detail for r in failed} == {"RuntimeError: broker down"}


async def test_a_run_is_failed_with_its_stats_kept_or_when_it_times_out(sqlite_database: Database) -> None:
    clock = Clock()
    ledger = RunLedger(sqlite_database, "a", clock)

    async def partial(slot: datetime) -> Mapping[str, Any]:
        raise JobFailed("checkin: 1 publish(es) failed", {"checkins": 3, "publish_failed": 1})

    async def stuck(slot: datetime) -> Mapping[str, Any]:
        await asyncio.Event().wait()
        return {}

    scheduler = OutreachScheduler(
        hourly(catch_up=False),
        ledger,
        {"checkin": partial, "analysis": stuck},
        clock=clock,
        run_timeout_s=0.2,
    )
    outcome = await scheduler.fire("checkin")
    assert (outcome.status, outcome.detail) == ("failed", "checkin: 1 publish(es) failed")
    row = await ledger.last_run("checkin")
    assert row is not None and row.status == "failed" and row.stats == {"checkins": 3, "publish_failed": 1}

    outcome = await scheduler.fire("analysis")
    assert (outcome.status, outcome.detail) == ("failed", "timed out after 0.2 s")
    again = await scheduler.fire("analysis")  # same slot: taken, not retried
    assert again.status == "taken"


async def test_stop_cancels_a_run_past_the_grace_period_and_marks_it_failed(
    sqlite_database: Database,
) -> None:
    job = CountingJob()
    job.gate = asyncio.Event()  # never set
    ledger = RunLedger(sqlite_database, "a")
    scheduler = OutreachScheduler(hourly(), ledger, {"analysis": job}, clock=Clock(), stop_grace_s=0.1)
    await scheduler.start()
    async with asyncio.timeout(60):
        await job.started.wait()
    await scheduler.stop()
    row = await ledger.last_run("analysis")
    assert row is not None and row.status == "failed" and row.detail is not None
    assert row.detail.startswith("cancelled")


async def test_housekeeping_marks_a_dead_runners_run_and_keeps_the_newest_slot(
    sqlite_database: Database,
) -> None:
    clock = Clock()  # 10:30
    hour = T0.replace(minute=0)
    dead = RunLedger(sqlite_database, "node-a/1", clock)
    assert await dead.claim("analysis", hour)  # 10:00, never finished
    for h in (1, 2):
        assert await dead.claim("analysis", hour + timedelta(hours=h))
        await dead.finish("analysis", hour + timedelta(hours=h), {})

    def summary(rows: list[RunRecord]) -> list[tuple[int, str, str | None]]:
        return [(r.slot.hour, r.status, r.detail) for r in rows]

    ledger = RunLedger(sqlite_database, "node-b/1", clock)
    scheduler = OutreachScheduler(
        hourly(catch_up=False),
        ledger,
        {"analysis": CountingJob()},
        clock=clock,
        keep_runs_for=timedelta(days=1),
    )
    clock.now = hour + timedelta(hours=2, minutes=30)
    assert (await scheduler.fire("analysis")).status == "taken"  # 12:00 ran; the loser does no chores
    assert summary(await ledger.recent("analysis")) == [
        (12, "succeeded", None),
        (11, "succeeded", None),
        (10, "running", None),
    ]

    clock.now = hour + timedelta(hours=3, minutes=10)  # the dead run is older than 3600 s + 60 s
    assert (await scheduler.fire("analysis")).status == "succeeded"
    assert summary(await ledger.recent("analysis")) == [
        (13, "succeeded", None),
        (12, "succeeded", None),
        (11, "succeeded", None),
        (10, "failed", ABANDONED),  # still taken: never run again
    ]

    scheduler.keep_runs_for = timedelta(0)
    clock.now = hour + timedelta(hours=5, minutes=40)  # past the 5-minute housekeeping pause
    assert (await scheduler.fire("analysis")).status == "succeeded"
    assert summary(await ledger.recent("analysis")) == [(15, "succeeded", None)]  # the newest stays


async def test_a_firing_during_a_run_waits_for_it_then_takes_the_newest_slot(
    sqlite_database: Database,
) -> None:
    job = CountingJob()
    job.gate = asyncio.Event()
    clock = Clock()
    scheduler = OutreachScheduler(
        hourly(catch_up=False), RunLedger(sqlite_database, "a"), {"analysis": job}, clock=clock
    )
    await scheduler.start()
    try:
        first = scheduler.trigger("analysis")
        async with asyncio.timeout(60):
            await job.started.wait()
        clock.now = T0 + timedelta(hours=1)
        second = scheduler.trigger("analysis")
        assert second is not None
        assert scheduler.trigger("analysis") is None  # one firing already waits: coalesced
        clock.now = T0 + timedelta(hours=2)
        job.gate.set()
        assert first is not None
        outcomes = await asyncio.wait_for(asyncio.gather(first, second), 60)
        assert [(o.status, o.slot.hour) for o in outcomes] == [("succeeded", 10), ("succeeded", 12)]
    finally:
        await scheduler.stop()


async def test_a_disabled_job_is_not_scheduled(sqlite_database: Database) -> None:
    settings = SchedulerSettings(
        analysis=JobSchedule(interval_s=3600, enabled=False), checkin=JobSchedule(interval_s=3600)
    )
    scheduler = OutreachScheduler(
        settings, RunLedger(sqlite_database, "a"), {"analysis": CountingJob(), "checkin": CountingJob()}
    )
    assert scheduler.job_names == ["checkin"]
    with pytest.raises(ValueError, match="no schedule"):
        OutreachScheduler(settings, RunLedger(sqlite_database, "a"), {"cleanup": CountingJob()})


# --- a real job through the scheduler: a publish failure --------------------------------------


async def test_a_publish_failure_fails_the_run_and_the_next_slot_sends_it(sqlite_database: Database) -> None:
    now = datetime.now(UTC)
    async with sqlite_database.sessions.begin() as session:
        session.add(
            LiveSession(
                call_id="call-1",
                user_id="ann",
                node_id="rtc-1",
                started_at=now - timedelta(minutes=5),
                heartbeat_at=now + timedelta(hours=1),  # fresh for as long as the test may take
                last_activity_at=now - timedelta(minutes=1),
            )
        )
    publisher = FakePublisher(failures=1)
    outreach = OutreachSettings(stale_after_s=20)
    settings = SchedulerSettings(analysis=JobSchedule(interval_s=3600), checkin=JobSchedule(interval_s=0.5))
    ledger = RunLedger(sqlite_database, "a")
    job = CheckinJob(sqlite_database, outreach, publisher=publisher)
    async with OutreachScheduler(settings, ledger, {"checkin": job}) as scheduler:

        async def sent() -> bool:
            rows = await ledger.recent("checkin", limit=100)
            return any(r.status == "succeeded" and r.stats["checkins"] == 1 for r in rows)

        await until(sent)
        assert scheduler.running
    rows: list[RunRecord] = await ledger.recent("checkin", limit=1000)
    failed = [r for r in rows if r.status == "failed"]
    assert len(failed) == 1 and failed[0].stats["publish_failed"] == 1
    assert failed[0].detail is not None and "ConnectionError: broker unreachable" in failed[0].detail
    assert list(publisher.ids) == ["checkin:call-1"]  # once per call, however many runs
    assert sum(r.stats.get("checkins", 0) for r in rows) == 1


# --- the entry point --------------------------------------------------------------------------


class NoAnalyzer:
    last_failures: tuple[Any, ...] = ()

    async def analyze(self, utterances: list[Any], min_confidence: float = 0.0) -> list[Any]:
        return []


class NoIntents:
    async def record(self, findings: list[Any]) -> None:
        pass

    async def open_intents(self, user_ids: Any = None, limit: int = 100, offset: int = 0) -> list[Any]:
        return []


async def no_turns(database: Database, after_turn_id: int, limit: int) -> list[Any]:
    return []


async def test_run_outreach_process_runs_until_stopped(settings: Settings, sqlite_database: Database) -> None:
    settings = settings.model_copy(
        update={
            "outreach": OutreachSettings(scheduler=hourly(enabled=True)),
            "store": sqlite_database.settings,
        }
    )
    stop = asyncio.Event()
    process = asyncio.create_task(
        run_outreach_process(
            settings,
            stop,
            database=sqlite_database,
            publisher=FakePublisher(failures=0),
            analyzers=[NoAnalyzer()],
            intent_store=NoIntents(),
            read_turns=no_turns,
        )
    )
    ledger = RunLedger(sqlite_database, "observer")

    async def both_caught_up() -> bool:
        runs = await ledger.recent(limit=10)
        return {(r.job, r.status) for r in runs} == {("analysis", "succeeded"), ("checkin", "succeeded")}

    await until(both_caught_up)
    assert not process.done()
    stop.set()
    await asyncio.wait_for(process, 60)
    (run,) = await ledger.recent("analysis")
    assert run.runner.startswith("test-node/")
