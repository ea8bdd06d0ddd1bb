"""The jobs in a server node: the API's service over the shared store and the job queue, and the
summary of every call that ends here (the workers run the jobs, in `voiceagent worker`)."""

from __future__ import annotations

import logging

from voiceagent.config import Settings
from voiceagent.events import EventBus
from voiceagent.jobs.queue import job_queue
from voiceagent.jobs.registry import KindRegistry
from voiceagent.jobs.service import JobError, JobService
from voiceagent.jobs.store import JobStore
from voiceagent.store.database import Database

log = logging.getLogger(__name__)


class JobsNode:
    def __init__(self, settings: Settings, *, database: Database, bus: EventBus) -> None:
        """Raises ValueError when the settings cannot work (a queue the events backend cannot
        carry, a kind in ``jobs.extra_kinds`` that does not import)."""
        self.settings = settings.jobs
        self.store = JobStore(database)
        self.queue = job_queue(settings.jobs, bus)
        try:
            self.kinds = KindRegistry(settings.jobs.extra_kinds)
        except ImportError as exc:
            raise ValueError(f"jobs: a job kind does not import: {exc}") from exc
        self.service = JobService(self.store, self.queue, self.kinds, settings)

    async def call_ended(self, call_id: str, user_turns: int) -> None:
        """The calls layer's hook once a call's end is stored: queue its summary (once), when
        the settings ask for one and the caller said enough. Never raises: a summary that cannot
        be queued is logged, and the call it is about has already ended well."""
        summarize = self.settings.summarize_call
        if not summarize.on_call_end or user_turns < summarize.min_user_turns:
            return
        try:
            job = await self.service.submit_summary(call_id)
        except JobError as exc:
            log.warning("call %s: no summary queued (%s: %s)", call_id, exc.code, exc.detail)
        except Exception:
            log.exception("call %s: queueing its summary failed", call_id)
        else:
            log.debug("call %s: summary job %s (%s)", call_id, job.id, job.status)
