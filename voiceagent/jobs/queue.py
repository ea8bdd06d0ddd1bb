"""Where a queued job's wake-up goes: the RocketMQ ``jobs`` topic (tagged with the kind, so a
worker receives only the kinds it runs), or nowhere for the store-polled queue (the embedded
default), whose workers find queued rows themselves. Either way the store holds the job."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Literal

from voiceagent.events import EventBus, JobQueuedEvent, JobQueuedPayload, PublishFailed
from voiceagent.jobs.settings import JobsSettings

QueueKind = Literal["rocketmq", "store"]


class QueueUnavailable(RuntimeError):
    """The broker did not take the wake-up (down through every retry)."""


class JobQueue(ABC):
    kind: QueueKind

    @abstractmethod
    async def publish(self, job_id: str, kind: str, deliver_at: datetime | None = None) -> None:
        """Wake a worker of ``kind`` for the job (not before ``deliver_at``)."""


class BrokerJobQueue(JobQueue):
    kind: QueueKind = "rocketmq"

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus

    async def publish(self, job_id: str, kind: str, deliver_at: datetime | None = None) -> None:
        event = JobQueuedEvent(
            idempotency_key=f"job:{job_id}", payload=JobQueuedPayload(job_id=job_id, kind=kind)
        )
        try:
            await self.bus.publish(event, tag=kind, deliver_at=deliver_at)
        except PublishFailed as exc:
            raise QueueUnavailable(str(exc)) from exc


class StoreJobQueue(JobQueue):
    """Workers poll the store's queued rows (``JobStore.claim_next``): nothing to send."""

    kind: QueueKind = "store"

    async def publish(self, job_id: str, kind: str, deliver_at: datetime | None = None) -> None:
        return None


def queue_kind(settings: JobsSettings, events_backend: str) -> QueueKind:
    if settings.queue == "auto":
        return "rocketmq" if events_backend == "rocketmq" else "store"
    if settings.queue == "rocketmq" and events_backend != "rocketmq":
        raise ValueError("jobs.queue is rocketmq but events.backend is not: set events.backend: rocketmq")
    return settings.queue


def job_queue(settings: JobsSettings, bus: EventBus) -> JobQueue:
    if queue_kind(settings, bus.settings.backend) == "rocketmq":
        return BrokerJobQueue(bus)
    return StoreJobQueue()
