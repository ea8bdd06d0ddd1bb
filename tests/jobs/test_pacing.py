"""Calls first: a worker rests between units of work while its node holds a live call."""

from __future__ import annotations

from datetime import timedelta

import pytest

from voiceagent.events.envelope import utcnow
from voiceagent.jobs.lease import RunLease
from voiceagent.jobs.pacing import MAX_REST_S, CallsFirst
from voiceagent.jobs.schemas import Claim
from voiceagent.jobs.store import JobStore
from voiceagent.store import Database
from voiceagent.store.models import LiveSession


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def _live(database: Database, call_id: str, node_id: str, age_s: float = 0.0) -> None:
    async with database.sessions.begin() as session:
        at = utcnow() - timedelta(seconds=age_s)
        session.add(LiveSession(call_id=call_id, user_id="ann", node_id=node_id, heartbeat_at=at))


def _pacing(database: Database, clock: Clock, duty: float = 0.25) -> CallsFirst:
    return CallsFirst(database, "rtc-1", duty, stale_after_s=20, clock=clock, sleep=clock.sleep)


async def test_no_live_call_no_rest_and_a_live_call_three_times_the_work(sqlite_database: Database) -> None:
    clock = Clock()
    pacing = _pacing(sqlite_database, clock)
    assert await pacing.rest_after(0.8) == 0.0 and clock.slept == []
    await _live(sqlite_database, "c-other", "rtc-2")  # another node's call
    await _live(sqlite_database, "c-dead", "rtc-1", age_s=60)  # a dead node's stale entry
    clock.now += 1.0
    assert await pacing.rest_after(0.8) == 0.0
    await _live(sqlite_database, "c-1", "rtc-1")
    clock.now += 1.0
    assert await pacing.rest_after(0.8) == pytest.approx(2.4)  # duty 0.25: rest 3x the work
    assert await pacing.rest_after(10.0) == MAX_REST_S  # one long unit never parks the job for long
    assert clock.slept == [pytest.approx(2.4), MAX_REST_S]


async def test_the_registry_is_read_at_most_once_a_second(sqlite_database: Database) -> None:
    clock = Clock()
    pacing = _pacing(sqlite_database, clock)
    assert await pacing.live_calls() == 0
    await _live(sqlite_database, "c-1", "rtc-1")
    assert await pacing.live_calls() == 0  # the cached answer, read 0 s ago
    clock.now += 1.0
    assert await pacing.live_calls() == 1


async def test_duty_one_never_rests(sqlite_database: Database) -> None:
    clock = Clock()
    await _live(sqlite_database, "c-1", "rtc-1")
    assert await _pacing(sqlite_database, clock, duty=1.0).rest_after(3.0) == 0.0
    with pytest.raises(ValueError, match="duty"):
        _pacing(sqlite_database, clock, duty=0.0)


async def test_a_run_rests_between_its_progress_reports_by_the_work_in_between(
    sqlite_database: Database,
) -> None:
    store = JobStore(sqlite_database)
    job = await store.create("echo", {"text": "hi"})
    claim = await store.claim(job.id, "w", 30.0)
    assert isinstance(claim, Claim)
    await _live(sqlite_database, "c-1", "rtc-1")
    clock = Clock()
    pacing = _pacing(sqlite_database, clock)
    async with RunLease(store, claim, 30.0, 1.0, clock=clock, pacing=pacing) as lease:
        clock.now += 0.5  # a sentence synthesized
        await lease.report(0.5)
        clock.now += 0.2  # the next one
        await lease.report(1.0)
    assert clock.slept == [pytest.approx(1.5), pytest.approx(0.6)]  # the rests are not counted as work
