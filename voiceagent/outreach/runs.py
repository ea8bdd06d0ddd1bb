"""The scheduler's bookkeeping in the shared store: which (job, slot) ran, and how far jobs read.

A run is claimed by inserting its ``(job, slot)`` row, whose primary key is the run key: of two
schedulers (or two processes) firing the same slot, exactly one insert succeeds, and a restarted
scheduler sees which slots already ran.

A slot is run at most once. A row is inserted ``running`` and closed ``succeeded`` / ``failed``
by its runner; one left ``running`` means its runner died mid-run. That slot still counts as
taken, never run again (the run may have half happened, and the next slot redoes its work anyway:
analysis resumes from its watermark, check-ins look at the calls as they are then). It is marked
``failed`` ("abandoned") by the scheduler's housekeeping once it is older than the job's run
timeout plus a grace period, a time by which a live runner has always closed its row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from voiceagent.events.envelope import utcnow
from voiceagent.store.database import Database
from voiceagent.store.models import SchedulerRun, Watermark
from voiceagent.store.records import UtcDatetime

RunStatus = Literal["running", "succeeded", "failed"]
ABANDONED = "abandoned: its runner stopped before finishing"
_DETAIL_MAX = 300


def as_utc(moment: datetime) -> datetime:
    """Slots are compared as UTC everywhere (SQLite stores them naive)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class RunRecord(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    job: str
    slot: UtcDatetime
    runner: str
    status: RunStatus
    started_at: UtcDatetime
    finished_at: UtcDatetime | None
    detail: str | None
    stats: dict[str, Any]


class RunLedger:
    """One short transaction per operation; works the same on SQLite and PostgreSQL."""

    def __init__(self, database: Database, runner_id: str, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.runner_id = runner_id[:128]
        self.clock = clock

    async def claim(self, job: str, slot: datetime) -> bool:
        """Take the slot; False when another scheduler has it or it already ran."""
        row = SchedulerRun(
            job=job,
            slot=as_utc(slot),
            runner=self.runner_id,
            status="running",
            started_at=self.clock(),
            stats={},
        )
        try:
            async with self.database.sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            return False
        return True

    async def finish(self, job: str, slot: datetime, stats: Mapping[str, Any]) -> bool:
        return await self._close(job, slot, "succeeded", None, stats)

    async def fail(
        self, job: str, slot: datetime, detail: str, stats: Mapping[str, Any] | None = None
    ) -> bool:
        return await self._close(job, slot, "failed", detail, stats)

    async def _close(
        self,
        job: str,
        slot: datetime,
        status: RunStatus,
        detail: str | None,
        stats: Mapping[str, Any] | None,
    ) -> bool:
        """Only the runner closes its own row (an abandoned mark is overwritten by the truth)."""
        values: dict[str, Any] = {"status": status, "finished_at": self.clock(), "detail": _cut(detail)}
        if stats is not None:
            values["stats"] = dict(stats)
        async with self.database.sessions.begin() as session:
            result = await session.execute(
                update(SchedulerRun)
                .where(
                    SchedulerRun.job == job,
                    SchedulerRun.slot == as_utc(slot),
                    SchedulerRun.runner == self.runner_id,
                )
                .values(**values)
            )
            return bool(getattr(result, "rowcount", 0))

    async def sweep_abandoned(self, job: str, older_than: timedelta) -> int:
        """Mark ``running`` rows started longer ago than ``older_than`` failed (their runner died)."""
        now = self.clock()
        async with self.database.sessions.begin() as session:
            result = await session.execute(
                update(SchedulerRun)
                .where(
                    SchedulerRun.job == job,
                    SchedulerRun.status == "running",
                    SchedulerRun.started_at < now - older_than,
                )
                .values(status="failed", finished_at=now, detail=ABANDONED)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def prune(self, job: str, before: datetime) -> int:
        """Delete closed runs of slots before ``before``. Only the newest due slot is ever claimed
        again, so older rows are history, kept for the dashboard as long as the caller wants."""
        async with self.database.sessions.begin() as session:
            result = await session.execute(
                delete(SchedulerRun).where(
                    SchedulerRun.job == job,
                    SchedulerRun.slot < as_utc(before),
                    SchedulerRun.status != "running",
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def get(self, job: str, slot: datetime) -> RunRecord | None:
        async with self.database.sessions() as session:
            row = await session.get(SchedulerRun, (job, as_utc(slot)))
            return None if row is None else RunRecord.model_validate(row)

    async def last_run(self, job: str) -> RunRecord | None:
        """The run of the newest slot claimed for ``job``, whatever its status."""
        runs = await self.recent(job, limit=1)
        return runs[0] if runs else None

    async def recent(self, job: str | None = None, limit: int = 50) -> list[RunRecord]:
        query = select(SchedulerRun).order_by(SchedulerRun.slot.desc(), SchedulerRun.job).limit(limit)
        if job is not None:
            query = query.where(SchedulerRun.job == job)
        async with self.database.sessions() as session:
            return [RunRecord.model_validate(r) for r in await session.scalars(query)]


class Watermarks:
    """Named high-water marks of incremental jobs; they only move forward."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def get(self, name: str) -> int:
        async with self.database.sessions() as session:
            value = await session.scalar(select(Watermark.value).where(Watermark.name == name))
            return int(value or 0)

    async def advance(self, name: str, value: int) -> int:
        """Raise the mark to ``value`` unless it is already higher; return the mark now."""
        try:
            return await self._advance_once(name, value)
        except IntegrityError:  # another process created the row between our read and insert
            return await self._advance_once(name, value)

    async def _advance_once(self, name: str, value: int) -> int:
        async with self.database.sessions.begin() as session:
            row = await session.scalar(select(Watermark).where(Watermark.name == name).with_for_update())
            if row is None:
                session.add(Watermark(name=name, value=value, updated_at=utcnow()))
                return value
            if value > row.value:
                row.value = value
                row.updated_at = utcnow()
            return row.value


def _cut(detail: str | None) -> str | None:
    if detail is None or len(detail) <= _DETAIL_MAX:
        return detail
    return detail[: _DETAIL_MAX - 1] + "…"
