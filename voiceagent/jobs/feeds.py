"""Where a worker's next job comes from: wake-ups on the RocketMQ ``jobs`` topic, or the store's
queued rows polled (the embedded default, no broker).

Either way a slot (``worker.concurrency`` for all kinds together) is taken *before* looking, so a
busy worker holds no message another worker could be running, and a wake-up is only a hint: the
runner's claim in the store decides whether anything runs (RocketMQ 5.3 hands an extended
message out again even after its ack, so duplicates are the normal case, not an error)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from voiceagent.events import BusError, Delivery, EventBus, EventSubscription, JobQueuedEvent
from voiceagent.events.consumer import MessageLease
from voiceagent.jobs.settings import WorkerSettings

if TYPE_CHECKING:
    from voiceagent.jobs.worker import JobRunner

log = logging.getLogger(__name__)

ERROR_BACKOFF_S, ERROR_BACKOFF_MAX_S = 1.0, 30.0
RECEIVE_WAIT_S = 2.0  # a long poll: returns at once when a wake-up arrives
SHORTEST_WAIT_S = 0.5  # a kind's long poll never shorter (each is a round trip to the broker)


def receive_wait(kinds: int, slots: int, longest_s: float = RECEIVE_WAIT_S) -> float:
    """How long one kind's long poll may hold a slot. With fewer slots than kinds, the kinds take
    the slots in turn, so a wake-up of the kind last in line waits for every other kind's poll:
    the polls shorten so that one round of them stays within ``longest_s`` (3 kinds, 1 slot:
    0.67 s each, a wake-up waits at most ~1.3 s for its kind's turn instead of ~4 s)."""
    return max(min(SHORTEST_WAIT_S, longest_s), longest_s * min(1.0, slots / max(kinds, 1)))


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds``, or less once ``stop`` is set. (``asyncio.timeout``, not ``wait_for``:
    Python 3.11's ``wait_for`` can swallow a cancel that lands as the wait ends.)"""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await stop.wait()


class Feed(ABC):
    """Hands jobs to a runner while a slot is free, until ``stop``; on stop, runs in hand are
    cancelled at once (each gives its job back to the store) before the feed returns."""

    queue: str  # for the start log line

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.slots = asyncio.Semaphore(settings.concurrency)
        self._running: set[asyncio.Task[Any]] = set()

    async def run(self, runner: JobRunner, kinds: Sequence[str], stop: asyncio.Event) -> None:
        feeding = asyncio.create_task(self._feed(runner, kinds, stop), name=f"jobs-feed-{self.queue}")
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({feeding, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)
            try:  # the loops notice the stop within one receive wait or poll
                await asyncio.wait_for(asyncio.shield(feeding), RECEIVE_WAIT_S + 10.0)
            except TimeoutError:
                feeding.cancel()
                await asyncio.gather(feeding, return_exceptions=True)

    @abstractmethod
    async def _feed(self, runner: JobRunner, kinds: Sequence[str], stop: asyncio.Event) -> None: ...

    async def _slot(self, stop: asyncio.Event) -> bool:
        """Take a slot, waiting for one; False (and no slot) once ``stop`` is set first."""
        if stop.is_set():
            return False
        acquiring = asyncio.ensure_future(self.slots.acquire())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            acquiring.cancel()  # no-op once acquired; a cancelled waiter passes its turn on
        if not acquiring.done() or acquiring.cancelled():
            return False
        if stop.is_set():
            self.slots.release()
            return False
        return True

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``work`` in the slot just taken; the slot is freed when it ends."""
        task = asyncio.create_task(work, name=name)
        self._running.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        self.slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("%s ended with an error", task.get_name(), exc_info=task.exception())


class StoreFeed(Feed):
    """Polls the store for the oldest claimable job of the worker's kinds every ``poll_s`` while
    idle (at once while there are more). Lapsed leases are claimable, so nothing is swept."""

    queue = "store"

    async def _feed(self, runner: JobRunner, kinds: Sequence[str], stop: asyncio.Event) -> None:
        backoff = ERROR_BACKOFF_S
        while await self._slot(stop):
            try:
                claim = await runner.claim_next(kinds)
                backoff = ERROR_BACKOFF_S
            except Exception as exc:  # the store is unreachable: try again, never end the loop
                self.slots.release()
                log.warning("cannot look for jobs in the store: %s; retrying in %.0f s", exc, backoff)
                await pause(stop, backoff)
                backoff = min(backoff * 2, ERROR_BACKOFF_MAX_S)
                continue
            if claim is None:
                self.slots.release()
                await pause(stop, self.settings.poll_s)
                continue
            self._spawn(runner.run(claim), f"job-{claim.job_id}")


class BrokerFeed(Feed):
    """One RocketMQ consumer per kind, in group ``<group_prefix>-<kind>`` filtered on the tag
    ``<kind>`` (a group's members must all subscribe alike, so kinds never share one).

    A wake-up's message is kept invisible while its job runs (extended every ``invisible_s / 3``)
    and then: acked when the job is settled in the store or the wake-up is spent (job missing,
    finished, or waiting for a retry that has its own delayed wake-up); dead-lettered (then
    acked) when the job gave up; left unacked when another worker holds the job, this run lost
    its lease, or the worker is stopping, so the broker brings it back after its invisible time.
    """

    queue = "rocketmq"

    def __init__(self, bus: EventBus, settings: WorkerSettings, wait_s: float = RECEIVE_WAIT_S) -> None:
        super().__init__(settings)
        self.bus = bus
        self.wait_s = wait_s

    def group(self, kind: str) -> str:
        return f"{self.settings.group_prefix}-{kind}"

    async def _feed(self, runner: JobRunner, kinds: Sequence[str], stop: asyncio.Event) -> None:
        wait_s = receive_wait(len(kinds), self.settings.concurrency, self.wait_s)
        await asyncio.gather(*(self._consume(kind, runner, stop, wait_s) for kind in kinds))

    async def _consume(self, kind: str, runner: JobRunner, stop: asyncio.Event, wait_s: float) -> None:
        subscription = await self.bus.subscribe_until_stopped(self.group(kind), ["jobs"], kind, stop)
        if subscription is None:
            return
        backoff = ERROR_BACKOFF_S
        try:
            while await self._slot(stop):
                try:
                    deliveries = await subscription.receive(1, self.settings.invisible_s, wait_s)
                    backoff = ERROR_BACKOFF_S
                except BusError as exc:  # broker down or restarting: the loop waits it out
                    self.slots.release()
                    log.warning(
                        "receive failed on %s: %s; retrying in %.0f s", subscription.group, exc, backoff
                    )
                    await pause(stop, backoff)
                    backoff = min(backoff * 2, ERROR_BACKOFF_MAX_S)
                    continue
                if not deliveries or stop.is_set():  # one received while stopping comes back later
                    self.slots.release()
                    continue
                delivery = deliveries[0]
                self._spawn(self._handle(subscription, delivery, runner), f"wake-up-{delivery.event.id}")
        finally:
            with contextlib.suppress(Exception):
                await subscription.close()

    async def _handle(self, subscription: EventSubscription, delivery: Delivery, runner: JobRunner) -> None:
        event = delivery.event
        try:
            if not isinstance(event, JobQueuedEvent):  # published to the wrong topic
                await subscription.reject(delivery.message, "wrong_topic", f"{event.type} on the jobs topic")
                return
            lease = MessageLease(subscription, delivery, self.settings.invisible_s)
            try:
                settled = await runner.wake(event.payload.job_id)
            finally:
                await lease.stop()  # waits for an extension in flight: one racing the ack revives it
            if settled.outcome == "gave_up":
                await subscription.reject(delivery.message, "gave_up", settled.detail)
            elif settled.ack:
                await subscription.ack(delivery)
        except BusError as exc:
            log.warning(
                "could not settle wake-up %s: %s (it comes back; the store makes that harmless)",
                delivery.message.message_id,
                exc,
            )
