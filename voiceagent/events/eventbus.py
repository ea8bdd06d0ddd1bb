"""Typed publish/subscribe over any MessageBus: encoding, topic routing, retries, dead letters.

This is the only layer the rest of VoiceAgent touches. Anything a consumer cannot read is moved
to the dead-letter topic with its reason and acked, so one bad message never blocks a queue and
nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from voiceagent.config import EventSettings
from voiceagent.events.bus import (
    BrokerUnavailable,
    BusError,
    MessageBus,
    MessageConsumer,
    OutgoingMessage,
    ReceivedMessage,
)
from voiceagent.events.envelope import AnyEvent as AnyEvent
from voiceagent.events.envelope import EventRejected, decode, encode

log = logging.getLogger(__name__)

TOPIC_OF_TYPE = {
    "outreach.greet": "outreach",
    "outreach.ask": "outreach",
    "knowledge.changed": "knowledge",
    "job.queued": "jobs",
}
T = TypeVar("T")

# Properties set on dead letters, so an operator can see why and where from.
DLQ_REASON, DLQ_DETAIL = "va_dlq_reason", "va_dlq_detail"
DLQ_TOPIC, DLQ_MESSAGE_ID, DLQ_GROUP = "va_dlq_topic", "va_dlq_message_id", "va_dlq_group"


class PublishFailed(BusError):
    """The broker stayed unreachable through every retry; the event was not stored."""


class Delivery(BaseModel):
    model_config = ConfigDict(frozen=True)

    event: AnyEvent
    message: ReceivedMessage


class EventBus:
    def __init__(
        self,
        transport: MessageBus,
        settings: EventSettings,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.transport = transport
        self.settings = settings
        self._sleep = sleep

    def topic(self, logical: str) -> str:
        return self.settings.topics[logical].name

    def _message(self, event: AnyEvent, tag: str | None, deliver_at: datetime | None) -> OutgoingMessage:
        return OutgoingMessage(
            topic=self.topic(TOPIC_OF_TYPE[event.type]),
            body=encode(event),
            tag=tag or event.type,
            keys=(event.idempotency_key, event.id),
            properties={"va_type": event.type},
            deliver_at=deliver_at,
        )

    async def publish(
        self, event: AnyEvent, *, tag: str | None = None, deliver_at: datetime | None = None
    ) -> str:
        """Store the event on the broker (or raise); a tag routes it, e.g. to one node."""
        message = self._message(event, tag, deliver_at)
        return await self._retrying(lambda: self.transport.send(message))

    async def publish_many(self, events: Sequence[AnyEvent], *, tag: str | None = None) -> list[str]:
        messages = [self._message(e, tag, None) for e in events]
        return await self._retrying(lambda: self.transport.send_many(messages))

    async def _retrying(self, send: Callable[[], Awaitable[T]]) -> T:
        retries = self.settings.publish_retries
        for attempt in range(retries + 1):
            try:
                return await send()
            except BrokerUnavailable as exc:
                if attempt == retries:
                    raise PublishFailed(f"broker unreachable after {attempt + 1} attempt(s): {exc}") from exc
                delay = min(self.settings.publish_backoff_s * 2**attempt, self.settings.publish_backoff_max_s)
                delay *= random.uniform(0.5, 1.0)  # spread retries of many publishers
                log.warning("publish failed (%s); retry %d/%d in %.2f s", exc, attempt + 1, retries, delay)
                await self._sleep(delay)
        raise AssertionError("unreachable")

    async def subscribe(self, group: str, topics: Sequence[str], tag_filter: str = "*") -> EventSubscription:
        """Join ``group`` on the logical ``topics`` (e.g. ["outreach"]) with a tag filter."""
        consumer = await self.transport.consumer(group, {self.topic(t): tag_filter for t in topics})
        return EventSubscription(self, consumer, group)

    async def subscribe_until_stopped(
        self,
        group: str,
        topics: Sequence[str],
        tag_filter: str,
        stop: asyncio.Event,
        retry_s: float = 2.0,
    ) -> EventSubscription | None:
        """:meth:`subscribe`, retried while the broker is down (a node runs without it, and its
        consumers join once it is back); None once ``stop`` is set first."""
        while not stop.is_set():
            try:
                return await self.subscribe(group, topics, tag_filter)
            except BusError as exc:
                log.warning("cannot subscribe %s yet: %s", group, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), retry_s)
        return None

    async def dead_letter(self, message: ReceivedMessage, group: str, reason: str, detail: str) -> str:
        log.warning(
            "dead-lettering message %s from %s: %s: %s", message.message_id, message.topic, reason, detail
        )
        letter = OutgoingMessage(
            topic=self.topic("dead_letter"),
            body=message.body,
            tag=reason,
            keys=message.keys,
            properties={
                **message.properties,
                DLQ_REASON: reason,
                DLQ_DETAIL: detail[:1000],
                DLQ_TOPIC: message.topic,
                DLQ_MESSAGE_ID: message.message_id,
                DLQ_GROUP: group,
            },
        )
        return await self._retrying(lambda: self.transport.send(letter))


class EventSubscription:
    def __init__(self, bus: EventBus, consumer: MessageConsumer, group: str) -> None:
        self.bus = bus
        self.consumer = consumer
        self.group = group

    async def receive(
        self, max_messages: int = 16, invisible_s: float = 30.0, wait_s: float = 5.0
    ) -> list[Delivery]:
        """Decoded events only: unreadable ones are dead-lettered and acked on the way."""
        deliveries = []
        for message in await self.consumer.receive(max_messages, invisible_s, wait_s):
            try:
                deliveries.append(Delivery(event=decode(message.body), message=message))
            except EventRejected as rejected:
                await self.reject(message, rejected.reason, rejected.detail)
        return deliveries

    async def reject(self, message: ReceivedMessage, reason: str, detail: str) -> None:
        await self.bus.dead_letter(message, self.group, reason, detail)
        await self.consumer.ack(message)

    async def ack(self, delivery: Delivery) -> None:
        await self.consumer.ack(delivery.message)

    async def extend(self, delivery: Delivery, invisible_s: float) -> None:
        await self.consumer.extend(delivery.message, invisible_s)

    async def close(self) -> None:
        await self.consumer.close()
