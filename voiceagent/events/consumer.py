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
    topic. Broker errors pause the loop with backoff instead of ending it."""

    def __init__(
        self,
        subscription: EventSubscription,
        handler: Handler,
        *,
        dedup: Deduplicator | None = None,
        max_attempts: int = 5,
        invisible_s: float = 30.0,
        batch: int = 16,
        wait_s: float = 5.0,
        error_backoff_s: float = 1.0,
    ) -> None:
        self.subscription = subscription
        self.handler = handler
        self.dedup = dedup or Deduplicator()
        self.max_attempts = max_attempts
        self.invisible_s = invisible_s
        self.batch = batch
        self.wait_s = wait_s
        self.error_backoff_s = error_backoff_s
        self.stats = ConsumerStats()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = self.error_backoff_s
        while not stop.is_set():
            try:
                deliveries = await self.subscription.receive(self.batch, self.invisible_s, self.wait_s)
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
                await self._handle(delivery)

    async def _handle(self, delivery: Delivery) -> None:
        key = delivery.event.idempotency_key
        try:
            if self.dedup.is_duplicate(key):
                self.stats.duplicates += 1
                await self.subscription.ack(delivery)
                return
            try:
                await self.handler(delivery.event)
            except Exception as exc:  # a handler bug must not end the loop
                self.stats.failures += 1
                attempt = delivery.message.delivery_attempt
                log.exception("handler failed for %s (attempt %d)", delivery.event.id, attempt)
                if attempt >= self.max_attempts:
                    await self.subscription.reject(
                        delivery.message, "handler_failed", f"{type(exc).__name__}: {exc}"
                    )
                    self.stats.dead_lettered += 1
                return
            self.dedup.remember(key)
            self.stats.handled += 1
            await self.subscription.ack(delivery)
        except BusError as exc:
            # Ack/dead-letter failed: the message comes back after its invisible time; dedup
            # makes that second delivery harmless if the handler already ran.
            log.warning("could not settle message %s: %s", delivery.message.message_id, exc)
