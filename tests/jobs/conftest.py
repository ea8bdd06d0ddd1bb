"""Shared fixtures for the jobs tests: a job store on a clock the test moves."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from tests.events.conftest import unique as unique  # the dead-letter readers' names
from voiceagent.events.envelope import utcnow
from voiceagent.jobs.store import JobStore
from voiceagent.store import Database


class Clock:
    """Wall time that only moves when told: leases lapse and retries come due on demand."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def job_store(database: Database, clock: Clock) -> JobStore:
    """On SQLite and on PostgreSQL (``database`` is parametrized by ``store_url``)."""
    return JobStore(database, clock=clock)
