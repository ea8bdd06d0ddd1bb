"""What the jobs API does, apart from HTTP: admit a submission (or refuse it with a reason the
client can act on), take an upload in as it streams, queue the job, and read, list and cancel jobs.

A submission is admitted in this order, cheapest refusal first: too many queued jobs (nothing is
stored: the client retries later); an unknown kind or parameters the kind refuses (stored as a
``failed`` job, so the refusal has an id and shows in the list like any other outcome); the
upload, streamed into the store while its size is counted (over the limit, or cut short: the job
is deleted); then the wake-up on the queue (the broker down: the job is deleted, so a client's
retry never leaves a twin behind). Refusals are :class:`JobError` subclasses; the API maps each to
its HTTP status.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from voiceagent.config import Settings
from voiceagent.jobs.kinds.base import JobInputError, JobKind
from voiceagent.jobs.queue import JobQueue, QueueUnavailable
from voiceagent.jobs.registry import KindRegistry
from voiceagent.jobs.schemas import REASONS, JobRecord, ResultFile
from voiceagent.jobs.store import JobFinished, JobNotFound, JobStore, new_job_id

log = logging.getLogger(__name__)

MAX_KIND_CHARS = 64  # the store's column
MAX_NAME_CHARS = 255
MAX_MEDIA_TYPE_CHARS = 128
DEFAULT_RETRY_AFTER_S = 30  # when there is no recent throughput to estimate from
MAX_RETRY_AFTER_S = 600
SUMMARY_SUBMITTER = "system:call-end"


class JobError(Exception):
    """A refusal the client can act on: ``code`` is short and stable, ``detail`` a sentence,
    ``job_id`` the stored job when the refusal was recorded as one."""

    code = "error"

    def __init__(self, detail: str, *, code: str | None = None, job_id: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.code
        self.job_id = job_id


class BadRequest(JobError):
    """The request itself is malformed (not JSON, not multipart, a missing field)."""

    code = "bad_request"


class UnsupportedMediaType(JobError):
    code = "unsupported_media_type"


class TooLarge(JobError):
    code = "too_large"


class JobRefused(JobError):
    """The kind or its parameters cannot work: stored as a failed job with ``code`` as reason."""


class Backpressure(JobError):
    code = "too_many_queued"

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class QueueDown(JobError):
    code = "queue_unavailable"


class NoSuchJob(JobError):
    code = "not_found"


class JobConflict(JobError):
    """The job is not in a state that allows this (finished already, or no result yet)."""

    code = "conflict"


@dataclass
class IncomingFile:
    """An upload as it arrives: ``chunks`` is read once, as the client sends it."""

    name: str
    media_type: str
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class ResultStream:
    job: JobRecord
    file: ResultFile
    chunks: AsyncIterator[bytes]


class JobService:
    def __init__(self, store: JobStore, queue: JobQueue, kinds: KindRegistry, settings: Settings) -> None:
        self.store = store
        self.queue = queue
        self.kinds = kinds
        self.settings = settings  # the kinds check their parameters against all of it
        self.limits = settings.jobs

    # --- submit -----------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        file: IncomingFile | None = None,
        submitted_by: str | None = None,
    ) -> JobRecord:
        """A new queued job; raises Backpressure, JobRefused (stored failed: its id is on the
        error), TooLarge, BadRequest (a broken upload) or QueueDown (nothing stored)."""
        await self._check_backpressure()
        kind_class = await self._admit(kind, params, file, submitted_by)
        if file is None:
            job = await self.store.create(kind, params, submitted_by=submitted_by)
        else:
            job = await self.store.create(
                kind,
                params,
                status="receiving",
                submitted_by=submitted_by,
                input_name=_file_name(file.name),
                input_type=_printable(file.media_type)[:MAX_MEDIA_TYPE_CHARS] or "application/octet-stream",
            )
            try:
                await self._receive(job.id, file.chunks)
                job = await self.store.mark_queued(job.id)
            except BaseException:  # too large, cut short, the client gone: leave no trace
                await self._discard(job.id)
                raise
        await self._publish(job, undo=True)
        log.info("job %s (%s) queued by %s", job.id, kind_class.name, submitted_by or "-")
        return job

    async def submit_summary(self, call_id: str) -> JobRecord:
        """The summary of a finished call, at most once per call (a repeat returns the first
        job). A broker that is down does not lose it: the job stays queued in the store, where
        the workers' sweep finds jobs whose wake-up never arrived."""
        kind = "summarize_call"
        params = {"call_id": call_id}
        await self._check_backpressure()
        await self._admit(kind, params, None, SUMMARY_SUBMITTER)
        job_id = new_job_id()
        job = await self.store.create(
            kind, params, job_id=job_id, submitted_by=SUMMARY_SUBMITTER, dedupe_key=f"{kind}:{call_id}"
        )
        if job.id == job_id:  # new, not the earlier one with this key
            await self._publish(job, undo=False)
        return job

    async def _check_backpressure(self) -> None:
        queued = await self.store.count_queued()
        if queued >= self.limits.max_queued:
            wait_s = await self._retry_after(queued - self.limits.max_queued + 1)
            raise Backpressure(
                f"{queued} jobs are waiting (the limit is {self.limits.max_queued}): try again later",
                wait_s,
            )

    async def _retry_after(self, excess: int) -> int:
        """Seconds until ``excess`` queued jobs are likely done, from how fast the latest ones
        finished (a rough guide for Retry-After, between 1 s and 10 min)."""
        done = await self.store.recent(limit=20, status="succeeded")
        finished = sorted(j.finished_at for j in done if j.finished_at is not None)
        span_s = (finished[-1] - finished[0]).total_seconds() if len(finished) >= 2 else 0.0
        if span_s <= 0:
            return DEFAULT_RETRY_AFTER_S
        per_job_s = span_s / (len(finished) - 1)
        return max(1, min(MAX_RETRY_AFTER_S, math.ceil(excess * per_job_s)))

    async def _admit(
        self, kind: str, params: dict[str, Any], file: IncomingFile | None, submitted_by: str | None
    ) -> type[JobKind]:
        """The kind, if it exists and accepts these parameters (and file, or lack of one)."""
        if not kind or len(kind) > MAX_KIND_CHARS or not kind.isprintable():
            raise BadRequest(f"kind must be 1 to {MAX_KIND_CHARS} printable characters")
        kind_class = self.kinds.get(kind)
        if kind_class is None:
            detail = f"no kind {kind!r}; known: {', '.join(self.kinds.names)}"
            await self._refuse(kind, params, submitted_by, "unknown_kind", detail)
        if file is not None and not kind_class.accepts_upload:
            await self._refuse(kind, params, submitted_by, "invalid_params", f"{kind} takes no file")
        if file is None and kind_class.requires_upload:
            detail = f"{kind} needs a file: send multipart/form-data with it in the field 'file'"
            await self._refuse(kind, params, submitted_by, "invalid_params", detail)
        try:
            kind_class.parse(params, self.settings)
        except JobInputError as exc:
            await self._refuse(kind, params, submitted_by, exc.reason, exc.detail)
        return kind_class

    async def _refuse(
        self, kind: str, params: dict[str, Any], submitted_by: str | None, reason: str, detail: str
    ) -> NoReturn:
        if reason not in REASONS:
            log.warning("job kind %s refused with an undocumented reason %r", kind, reason)
        job = await self.store.create(
            kind,
            params,
            status="failed",
            submitted_by=submitted_by,
            reason=reason,
            detail=detail,
            ttl_s=self.limits.result_ttl_s,
        )
        raise JobRefused(detail, code=reason, job_id=job.id)

    async def _receive(self, job_id: str, chunks: AsyncIterator[bytes]) -> None:
        """Store the upload in the store's chunk size as it arrives, refusing it the moment it
        passes the size limit (a client's Content-Length is not to be trusted)."""
        limit = self.limits.max_upload_bytes
        piece = self.limits.blob_chunk_bytes
        received = 0
        seq = 0
        pending = bytearray()
        async for data in chunks:
            received += len(data)
            if received > limit:
                raise TooLarge(f"the file is larger than the limit of {limit} bytes")
            pending += data
            while len(pending) >= piece:
                await self.store.append_input(job_id, seq, bytes(pending[:piece]))
                del pending[:piece]
                seq += 1
        if pending:
            await self.store.append_input(job_id, seq, bytes(pending))

    async def _discard(self, job_id: str) -> None:
        """Delete a half-made job even while the request is being cancelled; a failure here is
        only logged (the store's cleanup removes uploads left receiving after an hour)."""
        try:
            await asyncio.shield(self.store.delete(job_id))
        except Exception as exc:  # the caller's own error is the one to report
            log.warning("job %s: not deleted yet: %s: %s", job_id, type(exc).__name__, exc)

    async def _publish(self, job: JobRecord, *, undo: bool) -> None:
        try:
            await self.queue.publish(job.id, job.kind)
        except QueueUnavailable as exc:
            if not undo:
                log.warning("job %s stays queued unannounced (the sweep republishes it): %s", job.id, exc)
                return
            await self._discard(job.id)
            raise QueueDown(f"the job queue is unavailable, nothing was kept: {exc}") from None

    # --- read -------------------------------------------------------------------------------

    async def get(self, job_id: str) -> JobRecord:
        job = await self.store.get(job_id)
        if job is None:
            raise NoSuchJob(f"no job {job_id!r} (it may have expired)")
        return job

    async def recent(
        self, *, limit: int, before: datetime | None, status: str | None, kind: str | None
    ) -> list[JobRecord]:
        return await self.store.recent(limit=limit, before=before, status=status, kind=kind)

    async def cancel(self, job_id: str) -> JobRecord:
        """Queued: cancelled now. Running: asked to stop (the worker does at its next progress
        report, so the job shows ``cancel_requested`` until then)."""
        try:
            job = await self.store.cancel(job_id, self.limits.result_ttl_s)
        except JobNotFound:
            raise NoSuchJob(f"no job {job_id!r} (it may have expired)") from None
        except JobFinished as exc:
            raise JobConflict(
                f"the job has already {exc.job.status}", code="finished", job_id=job_id
            ) from None
        log.info("job %s: cancel requested (%s)", job_id, job.status)
        return job

    async def result(self, job_id: str, name: str | None = None) -> ResultStream:
        """One result file (the first, the main one, when ``name`` is None), to stream."""
        job = await self.get(job_id)
        if job.status != "succeeded":
            detail = f"the job is {job.status}: there is no result"
            raise JobConflict(detail, code="not_succeeded", job_id=job.id)
        if not job.files or job.result_owner is None:
            raise NoSuchJob("the job produced no files", job_id=job.id)
        if name is None:
            file = job.files[0]
        else:
            found = [f for f in job.files if f.name == name]
            if not found:
                names = ", ".join(f.name for f in job.files)
                raise NoSuchJob(f"the job has no file {name!r}; it has {names}", job_id=job.id)
            file = found[0]
        return ResultStream(job, file, self.store.read_file(job.id, job.result_owner, file.name))


def _printable(text: str) -> str:
    """Without control characters (PostgreSQL refuses NUL in text; none belongs in a name)."""
    return "".join(c for c in text if c.isprintable())


def _file_name(name: str) -> str:
    """The upload's base name only (some browsers send a path), cut to the column's size with
    its extension kept."""
    base = os.path.basename(_printable(name).replace("\\", "/")).strip() or "upload"
    if len(base) <= MAX_NAME_CHARS:
        return base
    stem, dot, ext = base.rpartition(".")
    if dot and 0 < len(ext) <= 16:
        return f"{stem[: MAX_NAME_CHARS - len(ext) - 1]}.{ext}"
    return base[:MAX_NAME_CHARS]
