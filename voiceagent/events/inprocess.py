"""An in-process MessageBus for the embedded default: RocketMQ's semantics without a broker.

Messages live in memory only; a restart loses them. That is what `make run` without Java gets,
and why anything that must survive restarts runs on the real broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from voiceagent.events.bus import (
    BusError,
    InvalidReceipt,
    MessageBus,
    MessageConsumer,
    MessageRejected,
    MessageType,
    OutgoingMessage,
    ReceivedMessage,
    TopicNotFound,
    tag_matches,
)

MAX_BODY_BYTES = 4 * 1024 * 1024  # RocketMQ's default maxMessageSize


@dataclass
class _Pending:
    message: OutgoingMessage
    message_id: str
    visible_at: float
    attempts: int = 0
    receipt: int = 0


@dataclass
class _Group:
    subscriptions: Mapping[str, str]
    pending: dict[str, _Pending] = field(default_factory=dict)  # insertion order = publish order
    members: int = 0


class InProcessBus(MessageBus):
    def __init__(self, topics: Mapping[str, MessageType], max_pending_per_group: int = 100_000) -> None:
        self._topics = dict(topics)
        self._groups: dict[str, _Group] = {}
        self._max_pending = max_pending_per_group
        self._changed = asyncio.Condition()
        self._receipts = itertools.count(1)
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        async with self._changed:
            self._changed.notify_all()

    async def send(self, message: OutgoingMessage) -> str:
        return (await self.send_many([message]))[0]

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        if self._closed:
            raise BusError("in-process bus is closed")
        for message in messages:
            self._validate(message)
        # Work out every delivery first, so a full group refuses the whole call, not half of it.
        now = time.monotonic()
        ids = [uuid.uuid4().hex for _ in messages]
        deliveries: list[tuple[_Group, _Pending]] = []
        for message_id, message in zip(ids, messages, strict=True):
            visible_at = now
            if message.deliver_at is not None:
                visible_at = now + max(0.0, message.deliver_at.timestamp() - time.time())
            for group in self._groups.values():
                expression = group.subscriptions.get(message.topic)
                if expression is not None and tag_matches(expression, message.tag):
                    deliveries.append((group, _Pending(message, message_id, visible_at)))
        for group in {id(g): g for g, _ in deliveries}.values():
            incoming = sum(1 for g, _ in deliveries if g is group)
            if len(group.pending) + incoming > self._max_pending:
                raise BusError(f"in-process bus full: a group has {len(group.pending)} unacked messages")
        for group, pending in deliveries:
            group.pending[pending.message_id] = pending
        async with self._changed:
            self._changed.notify_all()
        return ids

    def _validate(self, message: OutgoingMessage) -> None:
        declared = self._topics.get(message.topic)
        if declared is None:
            raise TopicNotFound(f"topic {message.topic!r} is not declared")
        if len(message.body) > MAX_BODY_BYTES:
            raise MessageRejected(f"body of {len(message.body)} bytes exceeds {MAX_BODY_BYTES}")
        delayed = message.deliver_at is not None
        if declared == "NORMAL" and delayed:
            raise MessageRejected(f"topic {message.topic!r} is NORMAL: delayed messages need DELAY or MIXED")
        if declared == "DELAY" and not delayed:
            raise MessageRejected(f"topic {message.topic!r} is DELAY: every message needs deliver_at")

    async def consumer(self, group: str, subscriptions: Mapping[str, str]) -> MessageConsumer:
        for topic in subscriptions:
            if topic not in self._topics:
                raise TopicNotFound(f"topic {topic!r} is not declared")
        existing = self._groups.get(group)
        if existing is None:
            existing = self._groups[group] = _Group(dict(subscriptions))
        elif dict(existing.subscriptions) != dict(subscriptions):
            # RocketMQ requires every member of a group to subscribe identically.
            raise BusError(f"group {group!r} already subscribes to {dict(existing.subscriptions)}")
        existing.members += 1
        return _InProcessConsumer(self, existing)

    def _take(
        self, group: _Group, max_messages: int, invisible_s: float
    ) -> tuple[list[ReceivedMessage], float]:
        now = time.monotonic()
        taken: list[ReceivedMessage] = []
        next_visible = float("inf")
        for pending in group.pending.values():
            if pending.visible_at > now:
                next_visible = min(next_visible, pending.visible_at)
                continue
            if len(taken) == max_messages:
                break
            pending.attempts += 1
            pending.receipt = next(self._receipts)
            pending.visible_at = now + invisible_s
            message = pending.message
            taken.append(
                ReceivedMessage(
                    topic=message.topic,
                    body=message.body,
                    tag=message.tag,
                    keys=message.keys,
                    properties=dict(message.properties),
                    message_id=pending.message_id,
                    delivery_attempt=pending.attempts,
                    receipt=(pending.message_id, pending.receipt),
                )
            )
        return taken, next_visible


class _InProcessConsumer(MessageConsumer):
    def __init__(self, bus: InProcessBus, group: _Group) -> None:
        self._bus = bus
        self._group = group

    async def receive(
        self, max_messages: int = 16, invisible_s: float = 30.0, wait_s: float = 5.0
    ) -> list[ReceivedMessage]:
        deadline = time.monotonic() + wait_s
        async with self._bus._changed:  # take under the lock so a publish cannot slip between
            while True:
                taken, next_visible = self._bus._take(self._group, max_messages, invisible_s)
                now = time.monotonic()
                if taken or now >= deadline or self._bus._closed:
                    return taken
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._bus._changed.wait(), min(deadline, next_visible) - now)

    def _current(self, message: ReceivedMessage) -> _Pending:
        message_id, receipt = message.receipt
        pending = self._group.pending.get(message_id)
        if pending is None or pending.receipt != receipt:
            raise InvalidReceipt(f"message {message_id} was redelivered or already acked")
        return pending

    async def ack(self, message: ReceivedMessage) -> None:
        self._current(message)
        del self._group.pending[message.message_id]

    async def extend(self, message: ReceivedMessage, invisible_s: float) -> None:
        self._current(message).visible_at = time.monotonic() + invisible_s

    async def close(self) -> None:
        self._group.members -= 1
