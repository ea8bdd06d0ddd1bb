"""Publisher retries, dedup expiry and the consumer loop's resilience, with fake transports."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from tests.events.conftest import event_settings
from voiceagent.events import (
    BrokerUnavailable,
    BusError,
    Deduplicator,
    EventBus,
    EventConsumer,
    EventSubscription,
    GreetEvent,
    GreetPayload,
    InvalidReceipt,
    MessageBus,
    MessageConsumer,
    MessageRejected,
    OutgoingMessage,
    PublishFailed,
    TopicNotFound,
)
from voiceagent.events.inprocess import InProcessBus


class FlakyTransport(MessageBus):
    """Fails the first ``failures`` sends as an unreachable broker would, then stores them."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.sent: list[OutgoingMessage] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, message: OutgoingMessage) -> str:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise BrokerUnavailable("connection refused (127.0.0.1:8081)")
        self.sent.append(message)
        return f"id-{len(self.sent)}"

    async def consumer(self, group: str, subscriptions: Mapping[str, str]) -> MessageConsumer:
        raise NotImplementedError


def greet() -> GreetEvent:
    return GreetEvent(payload=GreetPayload(user_id="alice"))


async def test_publish_retries_with_growing_backoff_then_succeeds() -> None:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    transport = FlakyTransport(failures=3)
    settings = event_settings(
        "inprocess", publish_retries=5, publish_backoff_s=1.0, publish_backoff_max_s=3.0
    )
    bus = EventBus(transport, settings, sleep=fake_sleep)
    assert await bus.publish(greet()) == "id-1"
    assert transport.attempts == 4 and len(transport.sent) == 1
    # Exponential (1, 2, 4 capped at 3) with jitter in [0.5, 1].
    for sleep, ceiling in zip(sleeps, [1.0, 2.0, 3.0], strict=True):
        assert ceiling / 2 <= sleep <= ceiling


async def test_publish_gives_up_with_a_clear_error() -> None:
    async def no_sleep(_: float) -> None: ...

    transport = FlakyTransport(failures=100)
    bus = EventBus(transport, event_settings("inprocess", publish_retries=2), sleep=no_sleep)
    with pytest.raises(PublishFailed, match=r"broker unreachable after 3 attempt\(s\): connection refused"):
        await bus.publish(greet())
    assert transport.sent == []


async def test_rejections_are_not_retried() -> None:
    bus = EventBus(InProcessBus({"voiceagent-outreach": "NORMAL"}), event_settings("inprocess"))
    with pytest.raises(TopicNotFound):
        await bus.publish(
            GreetEvent(payload=GreetPayload(user_id="u")).model_copy(update={"type": "knowledge.changed"})
        )
    with pytest.raises(MessageRejected, match="NORMAL"):
        await bus.publish(greet(), deliver_at=datetime.now(UTC) + timedelta(seconds=5))


def test_dedup_forgets_after_ttl_and_when_full() -> None:
    now = [0.0]
    dedup = Deduplicator(ttl_s=10, max_keys=2, clock=lambda: now[0])
    dedup.remember("a")
    assert dedup.is_duplicate("a") and not dedup.is_duplicate("b")
    now[0] = 11
    assert not dedup.is_duplicate("a")
    for key in ("x", "y", "z"):
        dedup.remember(key)
    assert len(dedup) == 2 and not dedup.is_duplicate("x") and dedup.is_duplicate("z")


class BrokenConsumer(MessageConsumer):
    def __init__(self) -> None:
        self.calls = 0

    async def receive(self, max_messages: int = 16, invisible_s: float = 30.0, wait_s: float = 5.0) -> list:  # type: ignore[type-arg]
        self.calls += 1
        raise BrokerUnavailable("proxy restarting")

    async def ack(self, message: object) -> None: ...  # type: ignore[override]

    async def extend(self, message: object, invisible_s: float) -> None: ...  # type: ignore[override]

    async def close(self) -> None: ...


async def test_consumer_loop_survives_broker_errors_and_stops_on_request() -> None:
    broken = BrokenConsumer()
    bus = EventBus(FlakyTransport(0), event_settings("inprocess"))

    async def handler(_: object) -> None: ...

    consumer = EventConsumer(EventSubscription(bus, broken, "g"), handler, error_backoff_s=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert broken.calls >= 2 and consumer.stats.receive_errors == broken.calls


async def test_inprocess_group_members_must_subscribe_alike() -> None:
    bus = InProcessBus({"t1": "NORMAL", "t2": "NORMAL"})
    await bus.consumer("g", {"t1": "a"})
    with pytest.raises(BusError, match="already subscribes"):
        await bus.consumer("g", {"t1": "b"})
    with pytest.raises(TopicNotFound):
        await bus.consumer("h", {"nope": "*"})


async def test_inprocess_members_of_a_group_share_the_work() -> None:
    bus = InProcessBus({"t": "NORMAL"})
    first, second = await bus.consumer("g", {"t": "*"}), await bus.consumer("g", {"t": "*"})
    await bus.send_many([OutgoingMessage(topic="t", body=str(i).encode()) for i in range(4)])
    a = await first.receive(max_messages=3, wait_s=0)
    b = await second.receive(max_messages=3, wait_s=0)
    assert len(a) == 3 and len(b) == 1
    assert {m.body for m in a + b} == {b"0", b"1", b"2", b"3"}


async def test_stale_receipts_are_refused() -> None:
    bus = InProcessBus({"t": "NORMAL"})
    consumer = await bus.consumer("g", {"t": "*"})
    await bus.send(OutgoingMessage(topic="t", body=b"x"))
    [old] = await consumer.receive(invisible_s=0.05, wait_s=0)
    await asyncio.sleep(0.06)
    [new] = await consumer.receive(wait_s=0)
    assert new.delivery_attempt == 2
    with pytest.raises(InvalidReceipt):
        await consumer.ack(old)
    await consumer.ack(new)
    assert await consumer.receive(wait_s=0) == []


async def test_inprocess_bus_refuses_a_batch_that_would_overflow_a_group_whole() -> None:
    bus = InProcessBus({"t": "NORMAL"}, max_pending_per_group=3)
    consumer = await bus.consumer("g", {"t": "*"})
    await bus.send_many([OutgoingMessage(topic="t", body=b"1"), OutgoingMessage(topic="t", body=b"2")])
    with pytest.raises(BusError, match="in-process bus full"):
        await bus.send_many([OutgoingMessage(topic="t", body=b"3"), OutgoingMessage(topic="t", body=b"4")])
    assert [m.body for m in await consumer.receive(wait_s=0)] == [b"1", b"2"]
