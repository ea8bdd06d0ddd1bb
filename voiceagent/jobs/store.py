"""Jobs in the shared store: their state machine, the claims that make a run exclusive, and their
files in chunks.

Every change is one short transaction guarded by a condition on the current state, so two
workers, a cancel and the sweeper can race freely on SQLite or PostgreSQL: exactly one wins and
the others learn it from the row count. Times come from this process' clock (nodes' clocks are
assumed NTP-close; leases are tens of seconds)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from voiceagent.events.envelope import utcnow
from voiceagent.jobs.schemas import FINISHED, Claim, JobRecord, ResultFile
from voiceagent.store.database import Database
from voiceagent.store.models import Job, JobBlob
from voiceagent.store.records import as_utc

INPUT = "input"  # the owner of an upload's chunks
CANCELLED_RUNNING = "cancelled while running"
DEFAULT_TTL_S = 86400.0  # a job settled where the caller did not say how long to keep it
ClaimRefusal = Literal["missing", "finished", "held", "not_yet", "cancel_requested"]


class JobNotFound(LookupError):
    pass


class JobFinished(RuntimeError):
    """Cancelling (or changing) a job that has already finished."""

    def __init__(self, job: JobRecord) -> None:
        super().__init__(f"job {job.id} already {job.status}")
        self.job = job


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.clock = clock

    # --- submit -----------------------------------------------------------------------------

    async def create(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        job_id: str | None = None,
        status: Literal["receiving", "queued", "failed"] = "queued",
        submitted_by: str | None = None,
        dedupe_key: str | None = None,
        input_name: str | None = None,
        input_type: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
        ttl_s: float | None = None,
    ) -> JobRecord:
        """A new job; ``failed`` records a submission refused for its content (with the reason).
        A ``dedupe_key`` already taken returns the job that has it instead of a second one."""
        now = self.clock()
        row = Job(
            id=job_id or new_job_id(),
            kind=kind,
            status=status,
            params=params,
            input_name=input_name,
            input_type=input_type,
            input_bytes=0,
            progress=0.0,
            files=[],
            attempts=0,
            cancel_requested=False,
            not_before=now,
            published_at=now if status == "queued" else None,
            submitted_by=submitted_by,
            dedupe_key=dedupe_key,
            reason=reason,
            detail=detail,
            created_at=now,
            updated_at=now,
            finished_at=now if status == "failed" else None,
            expires_at=now + timedelta(seconds=ttl_s) if status == "failed" and ttl_s else None,
        )
        if dedupe_key is not None:
            existing = await self._by_dedupe_key(dedupe_key)
            if existing is not None:
                return existing
        try:
            async with self.database.sessions.begin() as session:
                session.add(row)
                await session.flush()
                return JobRecord.model_validate(row)
        except IntegrityError:
            if dedupe_key is None:
                raise
            existing = await self._by_dedupe_key(dedupe_key)
            if existing is None:
                raise
            return existing

    async def _by_dedupe_key(self, key: str) -> JobRecord | None:
        async with self.database.sessions() as session:
            row = await session.scalar(select(Job).where(Job.dedupe_key == key))
            return None if row is None else JobRecord.model_validate(row)

    async def append_input(self, job_id: str, seq: int, data: bytes) -> None:
        """One chunk of an upload as it streams in (the job is ``receiving``)."""
        async with self.database.sessions.begin() as session:
            session.add(JobBlob(job_id=job_id, owner=INPUT, name=INPUT, seq=seq, data=data))
            await session.execute(
                update(Job).where(Job.id == job_id).values(input_bytes=Job.input_bytes + len(data))
            )

    async def mark_queued(self, job_id: str) -> JobRecord:
        """The upload is complete: the job may be claimed."""
        now = self.clock()
        async with self.database.sessions.begin() as session:
            await session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "receiving")
                .values(status="queued", not_before=now, published_at=now, updated_at=now)
            )
            return await self._get(session, job_id)

    async def delete(self, job_id: str) -> None:
        """Undo a submission that could not be queued (broker down, upload refused): no trace."""
        async with self.database.sessions.begin() as session:
            await session.execute(delete(JobBlob).where(JobBlob.job_id == job_id))
            await session.execute(delete(Job).where(Job.id == job_id))

    async def mark_published(self, job_id: str) -> None:
        async with self.database.sessions.begin() as session:
            await session.execute(update(Job).where(Job.id == job_id).values(published_at=self.clock()))

    # --- read -------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord | None:
        async with self.database.sessions() as session:
            row = await session.get(Job, job_id)
            return None if row is None or row.status == "receiving" else JobRecord.model_validate(row)

    async def recent(
        self,
        *,
        limit: int = 50,
        before: datetime | None = None,
        status: str | None = None,
        kind: str | None = None,
    ) -> list[JobRecord]:
        query = select(Job).where(Job.status != "receiving").order_by(Job.created_at.desc(), Job.id)
        if before is not None:
            query = query.where(Job.created_at < before)
        if status is not None:
            query = query.where(Job.status == status)
        if kind is not None:
            query = query.where(Job.kind == kind)
        async with self.database.sessions() as session:
            rows = (await session.scalars(query.limit(limit))).all()
            return [JobRecord.model_validate(r) for r in rows]

    async def count_queued(self) -> int:
        async with self.database.sessions() as session:
            return int(await session.scalar(select(func.count()).where(Job.status == "queued")) or 0)

    async def counts(self) -> dict[str, int]:
        async with self.database.sessions() as session:
            rows = await session.execute(select(Job.status, func.count()).group_by(Job.status))
            return {status: int(n) for status, n in rows.all() if status != "receiving"}

    # --- run --------------------------------------------------------------------------------

    def _claimable(self, now: datetime) -> Any:
        return and_(
            Job.cancel_requested.is_(False),
            or_(
                and_(Job.status == "queued", Job.not_before <= now),
                and_(Job.status == "running", Job.lease_until < now),
            ),
        )

    def _abandoned_cancel(self, now: datetime) -> Any:
        """Running with cancel asked and no live worker: nobody will settle it but a claimer."""
        return and_(Job.status == "running", Job.cancel_requested.is_(True), Job.lease_until < now)

    async def _take(
        self, session: AsyncSession, job_id: str, worker: str, lease_s: float, now: datetime
    ) -> Claim | None:
        token = uuid.uuid4().hex
        claimed = await session.execute(
            update(Job)
            .where(Job.id == job_id, self._claimable(now))
            .values(
                status="running",
                claim=token,
                worker=worker[:128],
                lease_until=now + timedelta(seconds=lease_s),
                attempts=Job.attempts + 1,
                started_at=func.coalesce(Job.started_at, now),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
        return Claim(job=await self._get(session, job_id), token=token, worker=worker)

    async def claim(
        self, job_id: str, worker: str, lease_s: float, *, ttl_s: float | None = None
    ) -> Claim | ClaimRefusal:
        """Take one run of the job, or say why not: ``missing`` or ``finished`` (the message is
        spent), ``held`` by a live lease elsewhere, ``not_yet`` (a retry waits for its time),
        ``cancel_requested`` (a live run was asked to stop). A cancelled job whose worker is gone
        is settled here (kept ``ttl_s``) and reported ``finished``."""
        now = self.clock()
        async with self.database.sessions.begin() as session:
            claim = await self._take(session, job_id, worker, lease_s, now)
            if claim is not None:
                return claim
            row = await session.get(Job, job_id)
            if row is None or row.status == "receiving":
                return "missing"
            if row.status in FINISHED:
                return "finished"
            if row.cancel_requested and (row.status == "queued" or _lapsed(row.lease_until, now)):
                self._settle_cancelled(row, now, ttl_s)
                return "finished"
            if row.status == "queued":
                return "not_yet"
            return "held" if not row.cancel_requested else "cancel_requested"

    async def claim_next(
        self, kinds: Sequence[str], worker: str, lease_s: float, *, ttl_s: float | None = None
    ) -> Claim | None:
        """The oldest claimable job of these kinds (the store-polled queue), picked and taken in
        one transaction so concurrent pollers each get a different job. Cancelled jobs whose
        worker died are settled on the way (no message will come back for them)."""
        now = self.clock()
        async with self.database.sessions.begin() as session:
            await session.execute(
                update(Job)
                .where(Job.kind.in_(list(kinds)), self._abandoned_cancel(now))
                .values(**_cancelled(now, ttl_s, CANCELLED_RUNNING))
                .execution_options(synchronize_session=False)
            )
            job_id = await session.scalar(
                select(Job.id)
                .where(Job.kind.in_(list(kinds)), self._claimable(now))
                .order_by(Job.not_before, Job.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            return None if job_id is None else await self._take(session, job_id, worker, lease_s, now)

    async def heartbeat(
        self, claim: Claim, lease_s: float, progress: float | None = None, note: str | None = None
    ) -> bool | None:
        """Renew the lease (and record progress). None: the run is no longer this claim's (lost
        its lease); True: an operator asked to cancel it; False: carry on."""
        now = self.clock()
        values: dict[str, Any] = {"lease_until": now + timedelta(seconds=lease_s), "updated_at": now}
        if progress is not None:
            values["progress"] = max(0.0, min(1.0, progress))
        if note is not None:
            values["progress_note"] = note[:200]
        async with self.database.sessions.begin() as session:
            if not await self._update_run(session, claim, values):
                return None
            return bool(await session.scalar(select(Job.cancel_requested).where(Job.id == claim.job_id)))

    async def write_file(self, claim: Claim, name: str, chunks: AsyncIterator[bytes]) -> int:
        """Store one result file under this claim; returns its size."""
        size = 0
        seq = 0
        async for chunk in chunks:
            async with self.database.sessions.begin() as session:
                session.add(JobBlob(job_id=claim.job_id, owner=claim.token, name=name, seq=seq, data=chunk))
            seq += 1
            size += len(chunk)
        return size

    async def succeed(
        self, claim: Claim, files: Sequence[ResultFile], result: dict[str, Any], ttl_s: float
    ) -> bool:
        """Finish the run; False when it is no longer this claim's (its files become orphans)."""
        return await self._finish(
            claim,
            ttl_s,
            status="succeeded",
            progress=1.0,
            files=[f.model_dump() for f in files],
            result=result,
            result_owner=claim.token,
            reason=None,  # a failure an earlier attempt left is history now
            detail=None,
        )

    async def fail(self, claim: Claim, reason: str, detail: str, ttl_s: float) -> bool:
        return await self._finish(claim, ttl_s, status="failed", reason=reason[:64], detail=detail[:4000])

    async def cancelled(self, claim: Claim, ttl_s: float) -> bool:
        """The worker stopped the run because an operator asked to."""
        return await self._finish(claim, ttl_s, status="cancelled", reason=None, detail=CANCELLED_RUNNING)

    async def _finish(self, claim: Claim, ttl_s: float, **values: Any) -> bool:
        now = self.clock()
        expires_at = now + timedelta(seconds=ttl_s)
        return await self._change_run(
            claim, finished_at=now, updated_at=now, lease_until=None, expires_at=expires_at, **values
        )

    async def retry(self, claim: Claim, reason: str, detail: str, delay_s: float) -> datetime | None:
        """Put the job back for another run after ``delay_s``; returns when (None: not ours)."""
        at = self.clock() + timedelta(seconds=delay_s)
        requeued = await self._requeue(
            claim,
            not_before=at,
            reason=reason[:64],
            detail=detail[:4000],
            progress_note=f"retrying after: {detail[:150]}",
        )
        return at if requeued else None

    async def release(self, claim: Claim) -> bool:
        """A worker stopping cleanly hands the run back at once, and it does not count."""
        return await self._requeue(
            claim, not_before=self.clock(), attempts=Job.attempts - 1, progress_note=None
        )

    async def _requeue(self, claim: Claim, **values: Any) -> bool:
        now = self.clock()
        return await self._change_run(
            claim, status="queued", published_at=now, claim=None, lease_until=None, progress=0.0,
            updated_at=now, **values,
        )  # fmt: skip

    async def _change_run(self, run: Claim, /, **values: Any) -> bool:
        async with self.database.sessions.begin() as session:
            return await self._update_run(session, run, values)

    @staticmethod
    async def _update_run(session: AsyncSession, claim: Claim, values: dict[str, Any]) -> bool:
        """Change the job only while this claim still holds its run: the guard every write of a
        run goes through, so a run whose lease lapsed (claimed again elsewhere) changes nothing."""
        done = await session.execute(
            update(Job)
            .where(Job.id == claim.job_id, Job.claim == claim.token, Job.status == "running")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return done.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    # --- cancel -----------------------------------------------------------------------------

    async def cancel(self, job_id: str, ttl_s: float) -> JobRecord:
        """Queued: cancelled now. Running: asked to stop (the worker settles it at its next
        progress report). Finished: JobFinished. Unknown: JobNotFound."""
        now = self.clock()
        async with self.database.sessions.begin() as session:
            row = await session.get(Job, job_id, with_for_update=True)
            if row is None or row.status == "receiving":
                raise JobNotFound(job_id)
            if row.status in FINISHED:
                raise JobFinished(JobRecord.model_validate(row))
            row.cancel_requested = True
            row.updated_at = now
            if row.status == "queued":
                self._settle_cancelled(row, now, ttl_s)
            await session.flush()
            return JobRecord.model_validate(row)

    def _settle_cancelled(self, row: Job, now: datetime, ttl_s: float | None = None) -> None:
        if row.status == "running":  # its worker is gone (a live one settles it itself)
            detail = CANCELLED_RUNNING
        else:
            detail = "cancelled before it ran" if row.attempts == 0 else "cancelled before its retry"
        for name, value in _cancelled(now, ttl_s, detail).items():
            setattr(row, name, value)

    # --- files ------------------------------------------------------------------------------

    async def read_file(self, job_id: str, owner: str, name: str) -> AsyncIterator[bytes]:
        """A stored file chunk by chunk, each read in its own short query (a slow download holds
        no transaction open)."""
        seq = 0
        while True:
            async with self.database.sessions() as session:
                data = await session.scalar(
                    select(JobBlob.data).where(
                        JobBlob.job_id == job_id,
                        JobBlob.owner == owner,
                        JobBlob.name == name,
                        JobBlob.seq == seq,
                    )
                )
            if data is None:
                return
            yield data
            seq += 1

    def read_input(self, job_id: str) -> AsyncIterator[bytes]:
        return self.read_file(job_id, INPUT, INPUT)

    # --- upkeep -----------------------------------------------------------------------------

    async def stale(self, requeue_after_s: float, limit: int = 500) -> list[JobRecord]:
        """Jobs whose wake-up may be lost, taken for republishing (one sweeper wins each): queued
        and due but not published for ``requeue_after_s``, or running on a lapsed lease (a killed
        worker whose message the broker has not brought back)."""
        now = self.clock()
        horizon = now - timedelta(seconds=requeue_after_s)
        async with self.database.sessions.begin() as session:
            ids = (
                await session.scalars(
                    select(Job.id)
                    .where(
                        or_(
                            and_(
                                Job.status == "queued",
                                Job.not_before <= now,
                                or_(Job.published_at.is_(None), Job.published_at < horizon),
                            ),
                            and_(
                                Job.status == "running",
                                Job.lease_until < horizon,
                                or_(Job.published_at.is_(None), Job.published_at < horizon),
                            ),
                        )
                    )
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not ids:
                return []
            await session.execute(
                update(Job)
                .where(Job.id.in_(ids))
                .values(published_at=now)
                .execution_options(synchronize_session=False)
            )
            rows = (await session.scalars(select(Job).where(Job.id.in_(ids)))).all()
            return [JobRecord.model_validate(r) for r in rows]

    async def remove_expired(self, receiving_after_s: float = 3600.0, limit: int = 200) -> int:
        """Finished jobs past their retention, with their files; uploads abandoned mid-stream;
        files of runs that lost their lease. Returns the jobs removed."""
        now = self.clock()
        async with self.database.sessions.begin() as session:
            ids = (
                await session.scalars(
                    select(Job.id)
                    .where(
                        or_(
                            and_(Job.status.in_(list(FINISHED)), Job.expires_at < now),
                            and_(
                                Job.status == "receiving",
                                Job.created_at < now - timedelta(seconds=receiving_after_s),
                            ),
                        )
                    )
                    .limit(limit)
                )
            ).all()
            if ids:
                await session.execute(delete(JobBlob).where(JobBlob.job_id.in_(ids)))
                await session.execute(delete(Job).where(Job.id.in_(ids)))
            orphans = (
                select(JobBlob.job_id, JobBlob.owner)
                .join(Job, Job.id == JobBlob.job_id)
                .where(
                    Job.status.in_(list(FINISHED)),
                    JobBlob.owner != INPUT,
                    or_(Job.result_owner.is_(None), JobBlob.owner != Job.result_owner),
                )
                .distinct()
                .limit(limit)
            )
            for job_id, owner in (await session.execute(orphans)).all():
                await session.execute(delete(JobBlob).where(JobBlob.job_id == job_id, JobBlob.owner == owner))
            return len(ids)

    async def _get(self, session: AsyncSession, job_id: str) -> JobRecord:
        row = await session.get(Job, job_id, populate_existing=True)
        if row is None:
            raise JobNotFound(job_id)
        return JobRecord.model_validate(row)


def _lapsed(lease_until: datetime | None, now: datetime) -> bool:
    return lease_until is None or as_utc(lease_until) < now


def _cancelled(now: datetime, ttl_s: float | None, detail: str) -> dict[str, Any]:
    """A job's columns once it is cancelled, however it got there."""
    return {
        "status": "cancelled",
        "finished_at": now,
        "updated_at": now,
        "claim": None,
        "lease_until": None,
        "reason": None,
        "detail": detail,
        "expires_at": now + timedelta(seconds=ttl_s or DEFAULT_TTL_S),
    }
