"""A consumer loop that survives anything a message or the broker can throw at it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from voiceagent.events.bus import BusError
from voiceagent.events.dedup import Deduplicator
from voiceagent.events.eventbus import AnyEvent, Delivery, EventSubscription

log = logging.getLogger(__name__)

Handler = Callable[[AnyEvent], Awaitable[None]]


class EventUnusable(ValueError):
    """A handler's verdict that this event can never be handled (e.g. it names a user who does
    not exist): it goes to the dead-letter topic with ``reason`` at once, not after retries."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class RetryLater(RuntimeError):
    """A handler's way to say "not now" (e.g. the prompt could not be spoken yet): the message is
    left unacked for redelivery, logged in one line rather than as a failure with a traceback."""


@dataclass
class ConsumerStats:
    handled: int = 0
    duplicates: int = 0
    failures: int = 0
    dead_lettered: int = 0
    receive_errors: int = 0


class EventConsumer:
    """Receive → skip duplicates → handle → ack. A failing handler leaves the message unacked so
    the broker redelivers it after ``invisible_s``; after ``max_attempts`` it goes to the dead-letter
    topic. Broker errors pause the loop with backoff instead of ending it.

    With ``concurrency`` above 1, up to that many events are handled at once, so one slow handler
    (a prompt waiting for a safe moment in a call) never holds up the others. A handler that runs
    long keeps its message invisible: the lease is extended every ``invisible_s / 3`` until the
    handler returns, so the broker does not hand the same event to another consumer meanwhile."""

    def __init__(
        self,
        subscription: EventSubscription,
        handler: Handler,
        *,
        dedup: Deduplicator | bool | None = None,
        max_attempts: int = 5,
        invisible_s: float = 30.0,
        batch: int = 16,
        wait_s: float = 5.0,
        error_backoff_s: float = 1.0,
        concurrency: int = 1,
        on_acked: Handler | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.subscription = subscription
        self.handler = handler
        # False: the handler deduplicates itself (e.g. in a store shared by all nodes), and a
        # key seen here before must still reach it.
        self.dedup = dedup if isinstance(dedup, Deduplicator) else None if dedup is False else Deduplicator()
        self.on_acked = on_acked
        self.max_attempts = max_attempts
        self.invisible_s = invisible_s
        self.batch = batch
        self.wait_s = wait_s
        self.error_backoff_s = error_backoff_s
        self.concurrency = concurrency
        self.stats = ConsumerStats()
        self._in_flight: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._receive_until(stop)
        finally:
            # Stopping: handlers still running are cancelled; their messages stay unacked and come
            # back to this group (on another node, or after a restart).
            for task in self._in_flight:
                task.cancel()
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def _receive_until(self, stop: asyncio.Event) -> None:
        backoff = self.error_backoff_s
        while not stop.is_set():
            free = self.concurrency - len(self._in_flight)
            if free <= 0:
                await asyncio.wait(self._in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                deliveries = await self.subscription.receive(
                    min(self.batch, free), self.invisible_s, self.wait_s
                )
                backoff = self.error_backoff_s
            except BusError as exc:
                self.stats.receive_errors += 1
                log.warning(
                    "receive failed on %s: %s; retrying in %.1f s", self.subscription.group, exc, backoff
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            for delivery in deliveries:
                if self.concurrency == 1:
                    await self._handle(delivery)
                    continue
                task = asyncio.create_task(self._handle(delivery), name=f"event-{delivery.event.id}")
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)

    async def _handle(self, delivery: Delivery) -> None:
        lease = MessageLease(self.subscription, delivery, self.invisible_s)
        try:
            await self._settle(delivery, lease)
        finally:
            await lease.stop()

    async def _settle(self, delivery: Delivery, lease: MessageLease) -> None:
        key = delivery.event.idempotency_key
        try:
            if self.dedup is not None and self.dedup.is_duplicate(key):
                self.stats.duplicates += 1
                await lease.stop()
                await self.subscription.ack(delivery)
                return
            try:
                await self.handler(delivery.event)
            except EventUnusable as unusable:
                await lease.stop()
                await self.subscription.reject(delivery.message, unusable.reason, unusable.detail)
                self.stats.dead_lettered += 1
                return
            except Exception as exc:  # a handler bug must not end the loop
                self.stats.failures += 1
                attempt = delivery.message.delivery_attempt
                if isinstance(exc, RetryLater):
                    log.info("event %s (attempt %d) left for redelivery: %s", delivery.event.id, attempt, exc)
                else:
                    log.exception("handler failed for %s (attempt %d)", delivery.event.id, attempt)
                if attempt >= self.max_attempts:
                    await lease.stop()
                    await self.subscription.reject(
                        delivery.message, "handler_failed", f"{type(exc).__name__}: {exc}"
                    )
                    self.stats.dead_lettered += 1
                return
            if self.dedup is not None:
                self.dedup.remember(key)
            self.stats.handled += 1
            await lease.stop()
            await self.subscription.ack(delivery)
            if self.on_acked is not None:
                try:
                    await self.on_acked(delivery.event)
                except Exception:
                    log.exception("after-ack hook failed for %s", delivery.event.id)
        except BusError as exc:
            # Ack/dead-letter failed: the message comes back after its invisible time; dedup
            # makes that second delivery harmless if the handler already ran.
            log.warning("could not settle message %s: %s", delivery.message.message_id, exc)


class MessageLease:
    """Keeps one message invisible while its handler runs: extended every ``invisible_s / 3``.

    It is stopped before the message is acked or dead-lettered, *waiting* for an extension
    already on its way: on RocketMQ an extension that lands after the ack (or races it) leaves
    the broker a new checkpoint to revive, and the acked message comes back. Measured: one copy
    per race; with slow handlers (a busy store) each copy raced again, up to ~200 deliveries of
    one event in a minute."""

    def __init__(self, subscription: EventSubscription, delivery: Delivery, invisible_s: float) -> None:
        self.subscription = subscription
        self.delivery = delivery
        self.invisible_s = invisible_s
        self._extending: asyncio.Future[None] | None = None
        self._task = asyncio.create_task(self._keep_invisible())

    async def _keep_invisible(self) -> None:
        while True:
            await asyncio.sleep(self.invisible_s / 3)  # two chances before the lease runs out
            self._extending = asyncio.ensure_future(self.subscription.extend(self.delivery, self.invisible_s))
            try:
                await asyncio.shield(self._extending)
            except BusError as exc:  # it may be redelivered; handlers are idempotent
                log.warning("could not extend message %s: %s", self.delivery.message.message_id, exc)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._extending is not None:
            await asyncio.gather(self._extending, return_exceptions=True)
