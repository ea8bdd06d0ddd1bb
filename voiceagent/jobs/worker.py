"""`voiceagent worker`: runs queued jobs of some kinds; any number of these processes, on any
machines that reach the store (and the broker).

The store is the truth: a run starts with a *claim* there (a conditional update, so exactly one
worker wins), keeps it alive with a lease renewed every ``invisible_s / 3`` (the broker feed
extends the wake-up's message on the same beat), and ends with one conditional write of the
outcome, which a run that lost its lease can no longer make. A message is only a wake-up:
duplicates, redeliveries and wake-ups for finished jobs are harmless (feeds.py says which are
acked).

What happens to a run:

* succeeded: its files are written in chunks under its claim, then the job points at them.
* JobInputError: failed with the kind's reason, never retried.
* cancelled (seen at a progress report, or when the run returns): cancelled, no files kept.
* any other exception: transient. Retried after ``backoff_s * 2**(attempt-1)`` (capped, with
  jitter) through a delayed wake-up, until ``max_attempts`` runs failed: then failed with
  ``gave_up`` and the wake-up dead-lettered with that reason.
* lease lost (the store answered that the claim is no longer this run's): stop, write nothing.
* worker stopping (SIGTERM): the job goes back to the queue at once, the attempt not counted.
* worker killed: the lease lapses after ``invisible_s`` and the message comes back: another
  worker claims it; the killed run's files are orphans the retention removes. A job claimed
  more than ``max_attempts`` times without a result (it may be what kills its workers) gives up.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from voiceagent.config import Settings
from voiceagent.events import EventBus
from voiceagent.jobs.feeds import BrokerFeed, Feed, StoreFeed, pause
from voiceagent.jobs.files import input_file_name, private_folder, read_chunks
from voiceagent.jobs.kinds.base import JobCancelled, JobContext, JobInputError, JobKind, JobLost
from voiceagent.jobs.lease import RunLease
from voiceagent.jobs.pacing import CallsFirst
from voiceagent.jobs.queue import JobQueue, job_queue
from voiceagent.jobs.registry import KindRegistry
from voiceagent.jobs.schemas import Claim, JobRecord, ResultFile
from voiceagent.jobs.store import ClaimRefusal, JobStore
from voiceagent.store.database import Database

log = logging.getLogger(__name__)

Outcome = Literal[
    "succeeded", "failed", "cancelled", "retrying", "gave_up", "lost", "released", "spent", "held"
]
LEAVE_UNACKED: frozenset[str] = frozenset({"held", "lost", "released"})
EARLY_WAKE_UP_S = 5.0  # a delayed wake-up this early (timer precision, clocks) waits for its job
REMOVE_BATCH = 200


@dataclass(frozen=True)
class Settled:
    """What became of one wake-up (or one claim), and so of its message."""

    outcome: Outcome
    detail: str = ""

    @property
    def ack(self) -> bool:
        """False: leave the message to come back (someone holds the job, or nothing was settled)."""
        return self.outcome not in LEAVE_UNACKED


class UnknownKinds(ValueError):
    """A kind named in the worker's settings (or --kinds) that no module registers."""


class NoKindLoaded(RuntimeError):
    """Every kind's models failed to load: this worker could run nothing."""


def retry_delay(attempt: int, backoff_s: float, backoff_max_s: float, spread: float = 1.0) -> float:
    """Seconds before run ``attempt + 1``: doubling from ``backoff_s``, capped; ``spread`` in
    [0.75, 1] keeps many jobs failing together from coming back together."""
    return min(backoff_s * 2.0 ** (attempt - 1), backoff_max_s) * spread


class JobRunner:
    """Runs one job, from its claim to its outcome in the store; shared by every feed."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        kinds: Mapping[str, JobKind],
        queue: JobQueue,
        *,
        name: str,
        spread: Callable[[], float] = lambda: random.uniform(0.75, 1.0),
        pacing: CallsFirst | None = None,
    ) -> None:
        self.pacing = pacing
        self.settings = settings
        self.jobs = settings.jobs
        self.worker = settings.jobs.worker
        self.store = store
        self.kinds = dict(kinds)  # the kinds this process runs (a kind that failed to load is not)
        self.queue = queue
        self.name = name
        self.spread = spread
        self.outcomes: Counter[str] = Counter()

    # --- taking a job -----------------------------------------------------------------------

    async def claim_next(self, kinds: Sequence[str]) -> Claim | None:
        return await self.store.claim_next(
            kinds, self.name, self.worker.invisible_s, ttl_s=self.jobs.result_ttl_s
        )

    async def wake(self, job_id: str) -> Settled:
        """A wake-up for ``job_id``: claim it and run it, or say why not."""
        try:
            claim = await self._claim(job_id)
            if claim == "not_yet":
                claim = await self._claim_when_due(job_id)
        except Exception as exc:  # the store is unreachable: the message comes back later
            log.warning("job %s: cannot claim it: %s", job_id, exc)
            return Settled("held", f"store unreachable: {exc}")
        if isinstance(claim, Claim):
            return await self.run(claim)
        self.outcomes[claim] += 1
        if claim in ("held", "cancel_requested"):
            return Settled("held", claim)
        return Settled("spent", claim)

    async def _claim(self, job_id: str) -> Claim | ClaimRefusal:
        return await self.store.claim(
            job_id, self.name, self.worker.invisible_s, ttl_s=self.jobs.result_ttl_s
        )

    async def _claim_when_due(self, job_id: str) -> Claim | ClaimRefusal:
        """A delayed wake-up may arrive a little before its job's time (the broker's timer has a
        one-second grain; clocks differ): wait that out rather than spend the wake-up."""
        job = await self.store.get(job_id)
        if job is None or job.status != "queued":
            return "not_yet"
        early = (job.not_before - self.store.clock()).total_seconds()
        if early > EARLY_WAKE_UP_S:  # an older wake-up: the retry has a delayed one of its own
            return "not_yet"
        await asyncio.sleep(max(0.0, early) + 0.01)
        return await self._claim(job_id)

    # --- running it -------------------------------------------------------------------------

    async def run(self, claim: Claim) -> Settled:
        """Run a claimed job to its outcome; cancelled (the worker stopping), it hands the job
        back to the queue and re-raises."""
        job = claim.job
        kind = self.kinds.get(job.kind)
        if kind is None:  # a wake-up with the wrong tag: leave the job to a worker of its kind
            await self._release(claim)
            return Settled("spent", f"{job.kind} is not a kind this worker runs")
        started = time.monotonic()
        try:
            async with RunLease(
                self.store, claim, self.worker.invisible_s, self.worker.progress_every_s, pacing=self.pacing
            ) as lease:
                settled = await self._attempt(kind, claim, lease)
        except asyncio.CancelledError:
            await self._release(claim)
            self._log(job, Settled("released", "the worker is stopping"), started)
            raise
        self._log(job, settled, started)
        return settled

    async def _attempt(self, kind: JobKind, claim: Claim, lease: RunLease) -> Settled:
        job, ttl_s = claim.job, self.jobs.result_ttl_s
        if job.attempts > self.worker.max_attempts:
            # Only runs that never reported back get here (workers killed or stuck on this job):
            # the job itself may be what kills them.
            return await self._give_up(
                claim, f"{job.attempts - 1} runs ended without a result (workers lost)"
            )
        try:
            async with private_folder(job.id) as workdir:
                context = JobContext(
                    job_id=job.id,
                    params=kind.parse(job.params, self.settings),
                    workdir=workdir,
                    input_path=await self._fetch_input(job, workdir),
                    input_name=job.input_name,
                    report=lease.report,
                    attempt=job.attempts,
                )
                result = await kind.run(context)
                lease.check()
                files = [
                    await self._store_file(claim, described, path) for described, path in context.outputs
                ]
                lease.check()
            await lease.stop()
            return await self._settle("succeeded", self.store.succeed(claim, files, result, ttl_s))
        except JobInputError as exc:
            await lease.stop()
            return await self._settle(
                "failed", self.store.fail(claim, exc.reason, exc.detail, ttl_s), exc.detail
            )
        except JobCancelled:
            await lease.stop()
            return await self._settle("cancelled", self.store.cancelled(claim, ttl_s))
        except JobLost as exc:
            return Settled("lost", str(exc))
        except Exception as exc:
            await lease.stop()
            return await self._failed(claim, exc)

    async def _failed(self, claim: Claim, exc: Exception) -> Settled:
        job, attempt = claim.job, claim.job.attempts
        what = f"{type(exc).__name__}: {exc}"
        log.warning(
            "job %s (%s) attempt %d of %d failed",
            job.id,
            job.kind,
            attempt,
            self.worker.max_attempts,
            exc_info=exc,
        )
        if attempt >= self.worker.max_attempts:
            return await self._give_up(claim, f"{what} (after {attempt} attempts)")
        delay = retry_delay(attempt, self.worker.backoff_s, self.worker.backoff_max_s, self.spread())
        try:
            at = await self.store.retry(claim, "worker_error", what, delay)
        except Exception as store_error:
            log.warning("job %s: retry not recorded: %s", job.id, store_error)
            return Settled("lost", what)
        if at is None:
            return Settled("lost", what)
        try:  # before the current wake-up is acked: it is the job's only way back
            await self.queue.publish(job.id, job.kind, deliver_at=at)
        except Exception as publish_error:
            log.warning(
                "job %s: retry wake-up not published (%s); the sweep publishes it", job.id, publish_error
            )
        return Settled("retrying", f"{what}; next attempt in {delay:.1f} s")

    async def _give_up(self, claim: Claim, detail: str) -> Settled:
        return await self._settle(
            "gave_up", self.store.fail(claim, "gave_up", detail, self.jobs.result_ttl_s), detail
        )

    async def _settle(self, outcome: Outcome, write: Awaitable[bool], detail: str = "") -> Settled:
        """The run's last store write; if it does not land, nothing is settled (lost)."""
        try:
            if await write:
                return Settled(outcome, detail)
        except Exception as exc:
            log.warning("could not record an outcome (%s): %s", outcome, exc)
        return Settled("lost", f"{outcome} not recorded")

    async def _release(self, claim: Claim) -> None:
        """Hand the job back at once (graceful stop), with a wake-up so another worker starts it."""
        try:
            if await self.store.release(claim):
                await self.queue.publish(claim.job_id, claim.job.kind)
        except Exception as exc:  # its lease lapses; the message comes back
            log.warning("job %s not handed back: %s", claim.job_id, exc)

    async def _fetch_input(self, job: JobRecord, workdir: Path) -> Path | None:
        """The upload, copied out of the store into the run's private folder."""
        if job.input_name is None and job.input_bytes == 0:
            return None
        path = workdir / input_file_name(job.input_name)
        handle = await asyncio.to_thread(path.open, "wb")
        try:
            async for chunk in self.store.read_input(job.id):
                await asyncio.to_thread(handle.write, chunk)
        finally:
            await asyncio.to_thread(handle.close)
        return path

    async def _store_file(self, claim: Claim, described: ResultFile, path: Path) -> ResultFile:
        size = await self.store.write_file(
            claim, described.name, read_chunks(path, self.jobs.blob_chunk_bytes)
        )
        return described.model_copy(update={"bytes": size})

    def _log(self, job: JobRecord, settled: Settled, started: float) -> None:
        """One line per run: "job <id> <kind>: <outcome>, attempt <n>, <seconds> s[: detail]"."""
        self.outcomes[settled.outcome] += 1
        log.info(
            "job %s %s: %s, attempt %d, %.2f s%s",
            job.id,
            job.kind,
            settled.outcome,
            job.attempts,
            time.monotonic() - started,
            f": {settled.detail}" if settled.detail and settled.outcome != "succeeded" else "",
        )


class Worker:
    """One worker process: its kinds (loaded once, before the first job), a feed handing it
    jobs, and the upkeep every worker shares (several at once is safe: the store arbitrates):
    republishing wake-ups that were lost, removing results past their retention."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        kinds: Sequence[JobKind],
        queue: JobQueue,
        feed: Feed,
        *,
        name: str | None = None,
        priority: str = "normal priority",
        pacing: CallsFirst | None = None,
    ) -> None:
        self.settings = settings.jobs
        self.store = store
        self.queue = queue
        self.feed = feed
        self.priority = priority
        if pacing is not None:
            self.priority += f", {pacing.duty:.0%} of the time while node {pacing.node_id} holds a call"
        self.runner = JobRunner(
            settings,
            store,
            {k.name: k for k in kinds},
            queue,
            name=name or f"{settings.node_id}:{os.getpid()}",
            pacing=pacing,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: then the runs in hand are handed back and the kinds closed."""
        kinds = await self._load()
        upkeep = asyncio.create_task(self._upkeep(stop), name="jobs-upkeep")
        try:
            if stop.is_set():
                return
            worker = self.settings.worker
            log.info(
                "worker %s running kinds %s from the %s queue, %d at once, %s",
                self.runner.name,
                ", ".join(kinds),
                self.feed.queue,
                worker.concurrency,
                self.priority,
            )
            await self.feed.run(self.runner, kinds, stop)
        finally:
            upkeep.cancel()
            await asyncio.gather(upkeep, return_exceptions=True)
            for kind in self.runner.kinds.values():
                try:
                    await kind.close()
                except Exception:
                    log.exception("job kind %s did not close cleanly", kind.name)

    async def _load(self) -> list[str]:
        """Load every kind's models; a kind that fails is logged and left to other workers."""
        for name, kind in list(self.runner.kinds.items()):
            try:
                await kind.load()
            except Exception:
                log.exception("job kind %s failed to load: its jobs are left to other workers", name)
                del self.runner.kinds[name]
        if not self.runner.kinds:
            raise NoKindLoaded("no job kind could be loaded (see the errors above)")
        return sorted(self.runner.kinds)

    async def _upkeep(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        sweep_at = clean_at = loop.time()
        while not stop.is_set():
            if loop.time() >= sweep_at:
                await self.sweep()
                sweep_at = loop.time() + self.settings.worker.sweep_s
            if loop.time() >= clean_at:
                await self.clean()
                clean_at = loop.time() + self.settings.cleanup_every_s
            await pause(stop, min(sweep_at, clean_at) - loop.time())

    async def sweep(self) -> int:
        """Publish wake-ups again for jobs that have none in flight (a publish that failed, a
        message the broker lost, a dead worker's job): the store hands each to one sweeper."""
        if self.queue.kind == "store":  # claim_next sees every due job and lapsed lease itself
            return 0
        try:
            stale = await self.store.stale(self.settings.worker.requeue_after_s)
        except Exception as exc:
            log.warning("sweep skipped: %s", exc)
            return 0
        published = 0
        for job in stale:
            try:
                await self.queue.publish(job.id, job.kind)
                published += 1
            except Exception as exc:  # the next sweep after requeue_after_s tries again
                log.warning("job %s: wake-up not republished: %s", job.id, exc)
        if stale:
            log.info("republished wake-ups for %d of %d job(s) with none in flight", published, len(stale))
        return published

    async def clean(self) -> int:
        """Remove finished jobs past their retention (and files no run owns)."""
        removed = 0
        try:
            while True:
                batch = await self.store.remove_expired(limit=REMOVE_BATCH)
                removed += batch
                if batch < REMOVE_BATCH:
                    break
        except Exception as exc:
            log.warning("retention skipped: %s", exc)
        if removed:
            log.info("removed %d expired job(s)", removed)
        return removed


def kind_classes(registry: KindRegistry, names: Sequence[str]) -> list[type[JobKind]]:
    unknown = [n for n in names if registry.get(n) is None]
    if unknown:
        raise UnknownKinds(f"unknown job kind(s) {', '.join(unknown)}; known: {', '.join(registry.names)}")
    return [k for n in dict.fromkeys(names) if (k := registry.get(n)) is not None]


def create_worker(
    settings: Settings, database: Database, bus: EventBus, *, priority: str = "normal priority"
) -> Worker:
    """The worker ``settings.jobs.worker`` describes: the broker feed when jobs are queued on
    RocketMQ, the store feed otherwise. UnknownKinds when a kind is not registered."""
    classes = kind_classes(KindRegistry(settings.jobs.extra_kinds), settings.jobs.worker.kinds)
    queue = job_queue(settings.jobs, bus)
    store = JobStore(database)
    feed: Feed = (
        BrokerFeed(bus, settings.jobs.worker) if queue.kind == "rocketmq" else StoreFeed(settings.jobs.worker)
    )
    kinds = [cls(settings, database) for cls in classes]
    worker = settings.jobs.worker
    pacing = None
    if worker.duty_beside_calls < 1:
        pacing = CallsFirst(
            database, settings.node_id, worker.duty_beside_calls, settings.outreach.stale_after_s
        )
    return Worker(settings, store, kinds, queue, feed, priority=priority, pacing=pacing)
