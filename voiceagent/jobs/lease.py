"""The store side of one run: its claim kept alive, its progress written, its verdict raised."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from types import TracebackType

from voiceagent.jobs.kinds.base import JobCancelled, JobLost
from voiceagent.jobs.pacing import CallsFirst
from voiceagent.jobs.schemas import Claim
from voiceagent.jobs.store import JobStore

log = logging.getLogger(__name__)


class RunLease:
    """The store side of one run: renews the claim every ``lease_s / 3`` and writes progress at
    most every ``progress_every_s``. What the store answers (an operator cancelled, or the lease
    is no longer this run's) is raised to the kind at its next progress report, and checked
    again when it returns, so a kind that never reports still cannot store a cancelled result."""

    def __init__(
        self,
        store: JobStore,
        claim: Claim,
        lease_s: float,
        progress_every_s: float,
        clock: Callable[[], float] = time.monotonic,
        pacing: CallsFirst | None = None,
    ) -> None:
        self.store = store
        self.claim = claim
        self.lease_s = lease_s
        self.progress_every_s = progress_every_s
        self.pacing = pacing
        self._clock = clock
        self._written_at = clock()
        self._worked_from = clock()
        self._pending: tuple[float, str | None] | None = None
        self._verdict: type[JobCancelled] | type[JobLost] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunLease:
        self._task = asyncio.create_task(self._renew(), name=f"lease-{self.claim.job_id}")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def report(self, fraction: float, note: str | None = None) -> None:
        """JobContext.report: remember the progress, write it when due; raise when told to stop.
        Between two reports the kind worked: with a call live, rest in proportion first."""
        self.check()
        if self.pacing is not None:
            await self.pacing.rest_after(self._clock() - self._worked_from)
            self._worked_from = self._clock()
        self._pending = (fraction, note)
        if self._clock() - self._written_at >= self.progress_every_s:
            await self._write()
            self.check()

    def check(self) -> None:
        if self._verdict is JobLost:
            raise JobLost(f"job {self.claim.job_id}: this run's lease is no longer valid")
        if self._verdict is JobCancelled:
            raise JobCancelled(f"job {self.claim.job_id} was cancelled")

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)  # two chances before the lease runs out
            await self._write()

    async def _write(self) -> None:
        async with self._lock:
            pending, self._pending = self._pending, None
            self._written_at = self._clock()
            fraction, note = pending or (None, None)
            try:
                answer = await self.store.heartbeat(self.claim, self.lease_s, fraction, note)
            except Exception as exc:  # the store blinked: the next beat tries again
                log.warning("job %s: lease not renewed: %s", self.claim.job_id, exc)
                self._pending = self._pending or pending
                return
            if answer is None:
                self._verdict = JobLost
            elif answer and self._verdict is None:
                self._verdict = JobCancelled

    async def stop(self) -> None:
        if self._task is None:
            return
        async with self._lock:  # never cut a store write in half
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None
