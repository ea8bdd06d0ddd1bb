"""The outreach scheduler: APScheduler 3.x (``AsyncIOScheduler``, UTC) as the timer, the run ledger
as the judge of what runs.

Every firing maps to a *slot*, computed from the clock and the job's trigger alone, so every
scheduler process with the same config computes the same slot: for ``interval_s`` the grid point
at or before now on a grid anchored at the Unix epoch, for ``cron`` the trigger's most recent fire
time at or before now. The slot is claimed in the :class:`RunLedger` before the job runs; only the
process whose insert wins runs it, and the outcome (stats, or why it failed) lands on that row.

- Catch-up: on start (``catch_up``), each job fires once at once; its slot is the newest due one,
  so a scheduler that was down across a slot runs it once (never each missed slot), and one
  restarted within a slot that already ran does nothing.
- Overlap: a job runs one at a time per process. A firing that comes while the previous run is
  still going waits for it, then takes the newest due slot (like APScheduler's coalescing).
- Failure: an exception (or the run timeout, ``max(period, 60 s)``) fails the run's row; the
  scheduler itself never dies of a job.
- Housekeeping (at most every 5 minutes per job): ``running`` rows older than the job's timeout
  plus a minute are marked abandoned (their runner died; the slot stays taken, see runs.py), and
  rows older than ``keep_runs_for`` are deleted — never the newest due slot's row.
- APScheduler only wakes us up: the run itself is our own task, so :meth:`stop` can give
  in-flight runs a grace period before cancelling them (a cancelled run is marked failed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.cron import CronTrigger  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]

from voiceagent.config import JobSchedule, SchedulerSettings
from voiceagent.events.envelope import utcnow
from voiceagent.outreach.runs import RunLedger, as_utc

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# APScheduler computes interval fire times in float seconds: a wake-up a hair before the exact grid
# point must still count as that slot.
_SLACK = timedelta(milliseconds=1)
# Cron slots are searched backwards in doubling windows, up to past a leap day ("0 0 29 2 *").
_CRON_LOOKBACK_MAX = timedelta(days=366 * 8 + 2)
_MIN_TIMEOUT_S = 60.0
_ABANDON_GRACE = timedelta(seconds=60)
_HOUSEKEEPING_EVERY = timedelta(minutes=5)

JobFn = Callable[[datetime], Awaitable[Mapping[str, Any]]]
"""A job: called with its slot, returns the stats recorded on the run row."""


class JobFailed(Exception):
    """Raised by a job that did part of its work but failed: the run is failed, stats kept."""

    def __init__(self, detail: str, stats: Mapping[str, Any]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.stats = dict(stats)


@dataclass(frozen=True)
class RunOutcome:
    job: str
    slot: datetime
    status: Literal["succeeded", "failed", "taken", "error"]  # taken: another run has the slot
    stats: Mapping[str, Any]
    detail: str | None = None


def default_runner_id(node_id: str | None = None) -> str:
    """Who ran a slot, as shown on its row: the node and the process."""
    return f"{node_id or socket.gethostname()}/{os.getpid()}"


_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def crontab_trigger(expr: str) -> Any:
    """A CronTrigger (UTC) with standard crontab meaning. APScheduler 3.x reads numeric weekdays
    as 0 = Monday (its issue 286); crontab means 0 (or 7) = Sunday, so numbers become names."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(
            f"cron {expr!r}: expected 5 fields (minute hour day month weekday), got {len(fields)}"
        )
    minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_crontab_weekdays(weekday),
            timezone=UTC,
        )
    except ValueError as exc:
        raise ValueError(f"cron {expr!r}: {exc}") from None


def _crontab_weekdays(field: str) -> str:
    parts = []
    for part in field.split(","):
        match = re.fullmatch(r"(\*|\d+)(?:-(\d+))?(?:/(\d+))?", part)
        if match is None or (match[1] == "*" and match[2] is not None):
            parts.append(part)  # names (mon-fri) mean the same to both; APScheduler checks the rest
            continue
        if match[1] == "*" and match[3] is None:
            parts.append("*")
            continue
        first = 0 if match[1] == "*" else int(match[1])
        last = 6 if match[1] == "*" else int(match[2] or (6 if match[3] else match[1]))
        step = int(match[3] or 1)
        if not (0 <= first <= 7 and 0 <= last <= 7 and first <= last and step >= 1):
            raise ValueError(f"cron weekday {part!r}: expected 0-7 (0 and 7 are Sunday)")
        parts.extend(_WEEKDAYS[day % 7] for day in range(first, last + 1, step))
    return ",".join(dict.fromkeys(parts))


class Slotter:
    """A job's trigger and the slot arithmetic that agrees with it."""

    def __init__(self, schedule: JobSchedule) -> None:
        self.interval: timedelta | None = None
        if schedule.interval_s is not None:
            self.interval = timedelta(seconds=schedule.interval_s)
            if self.interval < _MICROSECOND:
                raise ValueError(f"interval_s {schedule.interval_s} is shorter than a microsecond")
            self.trigger: Any = IntervalTrigger(seconds=schedule.interval_s, start_date=EPOCH, timezone=UTC)
        else:
            assert schedule.cron is not None  # JobSchedule guarantees exactly one of them
            self.trigger = crontab_trigger(schedule.cron)

    def slot_at(self, now: datetime) -> datetime:
        """The newest slot due at ``now``."""
        now = as_utc(now) + _SLACK
        if self.interval is not None:
            step = self.interval // _MICROSECOND
            elapsed = (now - EPOCH) // _MICROSECOND
            return EPOCH + (elapsed - elapsed % step) * _MICROSECOND
        return self._cron_slot(now)

    def _cron_slot(self, now: datetime) -> datetime:
        lookback = timedelta(minutes=1)
        while True:
            fire: datetime | None = self.trigger.get_next_fire_time(None, now - lookback)
            if fire is not None and fire <= now:
                break
            if lookback > _CRON_LOOKBACK_MAX:
                raise ValueError("the cron expression has not fired in eight years")
            lookback *= 2
        while True:  # forward to the last fire time that is not after now
            following: datetime | None = self.trigger.get_next_fire_time(fire, fire + _MICROSECOND)
            if following is None or following > now:
                return as_utc(fire)
            fire = following

    def period(self) -> timedelta:
        """Time between two firings (for cron, the next two from now)."""
        if self.interval is not None:
            return self.interval
        first = self.trigger.get_next_fire_time(None, utcnow())
        second = self.trigger.get_next_fire_time(first, first + _MICROSECOND)
        return timedelta(0) if first is None or second is None else second - first


@dataclass
class _Job:
    name: str
    fn: JobFn
    slotter: Slotter
    timeout_s: float
    lock: asyncio.Lock
    waiting: bool = False
    housekept_at: datetime | None = None


class OutreachScheduler:
    """Runs ``jobs`` (name → job) on the schedules of the same name in ``settings``.

    Only jobs named in ``settings`` ("analysis", "checkin") with ``enabled`` schedules are run.
    ``clock`` decides slots (tests pass a fake one); APScheduler keeps real time for wake-ups.
    """

    def __init__(
        self,
        settings: SchedulerSettings,
        ledger: RunLedger,
        jobs: Mapping[str, JobFn],
        *,
        clock: Callable[[], datetime] = utcnow,
        run_timeout_s: float | None = None,
        stop_grace_s: float = 10.0,
        keep_runs_for: timedelta = timedelta(days=7),
    ) -> None:
        self.settings = settings
        self.keep_runs_for = keep_runs_for
        self.ledger = ledger
        self.clock = clock
        self.stop_grace_s = stop_grace_s
        self._jobs: dict[str, _Job] = {}
        for name, fn in jobs.items():
            schedule = getattr(settings, name, None)
            if not isinstance(schedule, JobSchedule):
                raise ValueError(f"no schedule for job {name!r} in outreach.scheduler")
            if not schedule.enabled:
                continue
            try:
                slotter = Slotter(schedule)
            except ValueError as exc:
                raise ValueError(f"outreach.scheduler.{name}: {exc}") from None
            timeout = run_timeout_s or max(slotter.period().total_seconds(), _MIN_TIMEOUT_S)
            self._jobs[name] = _Job(name, fn, slotter, timeout, asyncio.Lock())
        self._aps: AsyncIOScheduler | None = None
        self._tasks: set[asyncio.Task[RunOutcome]] = set()
        self._stopping = False

    @property
    def job_names(self) -> list[str]:
        return list(self._jobs)

    def slot_at(self, job: str, now: datetime) -> datetime:
        return self._jobs[job].slotter.slot_at(now)

    @property
    def running(self) -> bool:
        return self._aps is not None and not self._stopping

    async def start(self) -> None:
        """Arm the triggers (and fire each job once if ``catch_up``); returns at once."""
        if self._aps is not None:
            raise RuntimeError("the scheduler is already started")
        self._stopping = False
        self._aps = AsyncIOScheduler(timezone=UTC)
        for job in self._jobs.values():
            job.waiting = False  # a firing cancelled by stop() before it began never cleared it
            self._aps.add_job(
                self._on_trigger,
                job.slotter.trigger,
                args=[job.name],
                id=job.name,
                name=f"outreach {job.name}",
                max_instances=1,
                coalesce=True,
                misfire_grace_time=None,
            )
        self._aps.start()
        log.info(
            "outreach scheduler started (%s), catch-up %s",
            ", ".join(self._jobs) or "no jobs",
            "on" if self.settings.catch_up else "off",
        )
        if self.settings.catch_up:
            for name in self._jobs:
                self.trigger(name)

    async def stop(self) -> None:
        """No new firings; in-flight runs get ``stop_grace_s`` to finish, then are cancelled."""
        if self._aps is None:
            return
        self._stopping = True
        if self._aps.running:
            self._aps.shutdown(wait=False)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a loop callback
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.stop_grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._aps = None
        log.info("outreach scheduler stopped")

    async def __aenter__(self) -> OutreachScheduler:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def _on_trigger(self, name: str) -> None:
        # Runs as APScheduler's own task: hand off at once, so its executor never holds a run.
        self.trigger(name)

    def trigger(self, name: str) -> asyncio.Task[RunOutcome] | None:
        """Fire ``name`` now, as its trigger would (None: stopping, or a firing already waits)."""
        job = self._jobs[name]
        if self._stopping or job.waiting:
            return None
        job.waiting = True
        task = asyncio.get_running_loop().create_task(self._serialised(job), name=f"outreach-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _serialised(self, job: _Job) -> RunOutcome:
        try:
            await job.lock.acquire()
        finally:
            job.waiting = False
        try:
            return await self.fire(job.name)
        finally:
            job.lock.release()

    async def fire(self, name: str) -> RunOutcome:
        """Claim the newest due slot of ``name`` and run it there; never raises but cancellation."""
        job = self._jobs[name]
        slot = job.slotter.slot_at(self.clock())
        try:
            if not await self.ledger.claim(name, slot):
                log.debug("outreach %s slot %s: already taken", name, slot.isoformat())
                return RunOutcome(name, slot, "taken", {})
        except Exception as exc:  # the store is down: this slot is lost, the next one tries again
            log.error("outreach %s slot %s: cannot claim: %s", name, slot.isoformat(), exc)
            return RunOutcome(name, slot, "error", {}, str(exc))

        await self._housekeeping(job, slot)
        stats: Mapping[str, Any] = {}
        try:
            async with asyncio.timeout(job.timeout_s):
                stats = dict(await job.fn(slot))
        except asyncio.CancelledError:
            await self._record(name, slot, "failed", {}, "cancelled: the scheduler stopped")
            raise
        except JobFailed as exc:
            outcome = RunOutcome(name, slot, "failed", exc.stats, exc.detail)
        except TimeoutError:
            outcome = RunOutcome(name, slot, "failed", {}, f"timed out after {job.timeout_s:g} s")
        except Exception as exc:
            log.exception("outreach %s slot %s failed", name, slot.isoformat())
            outcome = RunOutcome(name, slot, "failed", {}, f"{type(exc).__name__}: {exc}")
        else:
            outcome = RunOutcome(name, slot, "succeeded", stats)
        if outcome.status == "failed":
            log.warning("outreach %s slot %s failed: %s", name, slot.isoformat(), outcome.detail)
        else:  # a run that did something is worth a line; an idle check-in every 10 s is not
            busy = any(v for k, v in outcome.stats.items() if k not in ("watermark", "live_calls"))
            log.log(
                logging.INFO if busy else logging.DEBUG,
                "outreach %s slot %s done: %s",
                name,
                slot.isoformat(),
                dict(outcome.stats),
            )
        await self._record(name, slot, outcome.status, outcome.stats, outcome.detail)
        return outcome

    async def _housekeeping(self, job: _Job, slot: datetime) -> None:
        """Now and then: mark runs whose runner died, and delete history past ``keep_runs_for``
        (never the newest due slot's row, which is what keeps a restart from running it again)."""
        now = self.clock()
        if job.housekept_at is not None and now - job.housekept_at < _HOUSEKEEPING_EVERY:
            return
        job.housekept_at = now
        try:
            swept = await self.ledger.sweep_abandoned(
                job.name, timedelta(seconds=job.timeout_s) + _ABANDON_GRACE
            )
            if swept:
                log.warning(
                    "outreach %s: %d run(s) left by a stopped runner marked abandoned", job.name, swept
                )
            await self.ledger.prune(job.name, before=min(now - self.keep_runs_for, slot))
        except Exception as exc:
            log.warning("outreach %s: run ledger housekeeping failed: %s", job.name, exc)

    async def _record(
        self, name: str, slot: datetime, status: str, stats: Mapping[str, Any], detail: str | None
    ) -> None:
        """Close the run's row; a store failure here is logged (a later sweep marks the row)."""
        try:
            async with asyncio.timeout(10):
                if status == "succeeded":
                    await self.ledger.finish(name, slot, stats)
                else:
                    await self.ledger.fail(name, slot, detail or status, stats)
        except Exception as exc:
            log.error("outreach %s slot %s: cannot record %s: %s", name, slot.isoformat(), status, exc)
