"""The event-bus contract, run against the in-process bus and the real RocketMQ broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from voiceagent.events import (
    AskEvent,
    AskPayload,
    Deduplicator,
    Delivery,
    EventBus,
    EventConsumer,
    EventSubscription,
    GreetEvent,
    GreetPayload,
    KnowledgeChangedEvent,
    KnowledgeChangedPayload,
    MessageConsumer,
    OutgoingMessage,
    ReceivedMessage,
)
from voiceagent.events.eventbus import DLQ_DETAIL, DLQ_GROUP, DLQ_REASON, DLQ_TOPIC

Unique = Callable[[str], str]


def greet(user: str = "alice", **fields: object) -> GreetEvent:
    return GreetEvent(payload=GreetPayload(user_id=user, reason="returning user"), **fields)  # type: ignore[arg-type]


async def receive_until(
    sub: EventSubscription, count: int, within_s: float = 20.0, **kw: float
) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + within_s
    while len(got) < count and time.monotonic() < deadline:
        got += await sub.receive(wait_s=min(2.0, max(0.1, deadline - time.monotonic())), **kw)  # type: ignore[arg-type]
    return got


async def dead_letter_reader(bus: EventBus, unique: Unique, tag: str = "*") -> MessageConsumer:
    # Joined before anything is dead-lettered: a new RocketMQ group may start at the latest offset.
    return await bus.transport.consumer(unique("dlq-reader"), {bus.topic("dead_letter"): tag})


async def drain(
    consumer: MessageConsumer, group: str, count: int, within_s: float = 30.0
) -> list[ReceivedMessage]:
    """Dead letters written on behalf of ``group`` (other tests share the topic)."""
    got: list[ReceivedMessage] = []
    deadline = time.monotonic() + within_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            for message in await consumer.receive(wait_s=min(2.0, max(0.1, deadline - time.monotonic()))):
                await consumer.ack(message)
                if message.properties.get(DLQ_GROUP) == group:
                    got.append(message)
    finally:
        await consumer.close()
    return got


async def test_publish_then_receive_round_trips_every_event_type(event_bus: EventBus, unique: Unique) -> None:
    tag = unique("t")
    outreach = await event_bus.subscribe(unique("g-out"), ["outreach"], tag)
    knowledge = await event_bus.subscribe(unique("g-kb"), ["knowledge"], tag)
    events = [
        greet(),
        AskEvent(
            payload=AskPayload(user_id="bob", question="Shall I book the table for 7?", intent="booking")
        ),
        KnowledgeChangedEvent(payload=KnowledgeChangedPayload(document_id="faq/7", change="updated")),
    ]
    for event in events:
        await event_bus.publish(event, tag=tag)

    got = await receive_until(outreach, 2) + await receive_until(knowledge, 1)
    assert sorted((d.event.model_dump() for d in got), key=lambda e: e["id"]) == sorted(
        (e.model_dump() for e in events), key=lambda e: e["id"]
    )
    for delivery in got:
        assert delivery.message.delivery_attempt == 1
        assert delivery.event.idempotency_key in delivery.message.keys
        await (outreach if delivery.event.type.startswith("outreach") else knowledge).ack(delivery)
    await outreach.close()
    await knowledge.close()


async def test_each_group_sees_only_its_tags(event_bus: EventBus, unique: Unique) -> None:
    node_a, node_b = unique("node-a"), unique("node-b")
    sub_a = await event_bus.subscribe(unique("g-a"), ["outreach"], node_a)
    sub_b = await event_bus.subscribe(unique("g-b"), ["outreach"], node_b)
    sub_both = await event_bus.subscribe(unique("g-ab"), ["outreach"], f"{node_a}||{node_b}")

    for_a = [greet("u1"), greet("u2")]
    for_b = [greet("u3")]
    for event in for_a:
        await event_bus.publish(event, tag=node_a)
    for event in for_b:
        await event_bus.publish(event, tag=node_b)

    got_a = await receive_until(sub_a, 2)
    got_b = await receive_until(sub_b, 1)
    got_both = await receive_until(sub_both, 3)
    # Nothing more arrives for the filtered groups.
    got_a += await sub_a.receive(wait_s=1.0)
    got_b += await sub_b.receive(wait_s=1.0)
    assert {d.event.id for d in got_a} == {e.id for e in for_a}
    assert {d.event.id for d in got_b} == {e.id for e in for_b}
    assert {d.event.id for d in got_both} == {e.id for e in for_a + for_b}
    for sub, got in ((sub_a, got_a), (sub_b, got_b), (sub_both, got_both)):
        for delivery in got:
            await sub.ack(delivery)
        await sub.close()


async def test_unacked_message_comes_back_and_acked_one_does_not(event_bus: EventBus, unique: Unique) -> None:
    tag = unique("t")
    sub = await event_bus.subscribe(unique("g"), ["outreach"], tag)
    kept, dropped = greet("keep"), greet("drop")
    await event_bus.publish(kept, tag=tag)
    await event_bus.publish(dropped, tag=tag)

    first = await receive_until(sub, 2, invisible_s=2.0)
    assert {d.event.id for d in first} == {kept.id, dropped.id}
    for delivery in first:
        if delivery.event.id == kept.id:
            await sub.ack(delivery)

    again = await receive_until(sub, 1, within_s=30.0, invisible_s=30.0)
    assert [d.event.id for d in again] == [dropped.id]
    assert again[0].message.delivery_attempt == 2
    await sub.ack(again[0])
    assert await sub.receive(wait_s=3.0, invisible_s=30.0) == []
    await sub.close()


async def test_extend_keeps_a_message_hidden(event_bus: EventBus, unique: Unique) -> None:
    tag = unique("t")
    sub = await event_bus.subscribe(unique("g"), ["outreach"], tag)
    await event_bus.publish(greet(), tag=tag)
    [delivery] = await receive_until(sub, 1, invisible_s=2.0)
    await sub.extend(delivery, 20.0)
    assert await sub.receive(wait_s=4.0) == []  # would have come back after 2 s without extend
    await sub.close()


async def test_delayed_event_arrives_not_before_its_time(event_bus: EventBus, unique: Unique) -> None:
    tag = unique("t")
    sub = await event_bus.subscribe(unique("g"), ["outreach"], tag)
    deliver_at = datetime.now(UTC) + timedelta(seconds=4)
    event = greet()
    await event_bus.publish(event, tag=tag, deliver_at=deliver_at)

    [delivery] = await receive_until(sub, 1, within_s=30.0)
    arrived = datetime.now(UTC)
    assert delivery.event.id == event.id
    assert arrived >= deliver_at, f"arrived {(deliver_at - arrived).total_seconds():.3f} s early"
    await sub.ack(delivery)
    await sub.close()


async def test_duplicate_publishes_are_handled_once(event_bus: EventBus, unique: Unique) -> None:
    tag = unique("t")
    sub = await event_bus.subscribe(unique("g"), ["outreach"], tag)
    event = greet(idempotency_key=unique("greet:alice"))
    retried = event.model_copy(update={"id": "second-publish"})  # same key, new message
    other = greet("bob")
    for e in (event, retried, other):
        await event_bus.publish(e, tag=tag)

    handled: list[str] = []

    async def handler(e: object) -> None:
        handled.append(e.payload.user_id)  # type: ignore[attr-defined]

    consumer = EventConsumer(sub, handler, dedup=Deduplicator(), wait_s=1.0)
    stop = asyncio.Event()
    loop = asyncio.create_task(consumer.run(stop))
    deadline = time.monotonic() + 20
    while consumer.stats.handled + consumer.stats.duplicates < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    stop.set()
    await loop
    assert sorted(handled) == ["alice", "bob"]
    assert consumer.stats.duplicates == 1
    assert await sub.receive(wait_s=2.0) == []  # the duplicate was acked, not left to come back
    await sub.close()


async def test_unreadable_messages_go_to_dead_letter_and_do_not_block(
    event_bus: EventBus, unique: Unique
) -> None:
    tag = unique("t")
    group = unique("g")
    sub = await event_bus.subscribe(group, ["outreach"], tag)
    dlq = await dead_letter_reader(event_bus, unique)
    topic = event_bus.topic("outreach")
    good = greet()
    expired = greet("late", expires_at=datetime.now(UTC) + timedelta(milliseconds=300))
    bad_bodies = {
        "not_json": b"\x00\xffnot json",
        "unknown_type": greet().model_dump_json().replace("outreach.greet", "outreach.dance").encode(),
        "schema_version": greet()
        .model_dump_json()
        .replace('"schema_version":1', '"schema_version":9')
        .encode(),
        "invalid": b'{"schema_version":1,"type":"outreach.ask","payload":{"user_id":"x"}}',
    }
    for body in bad_bodies.values():
        await event_bus.transport.send(OutgoingMessage(topic=topic, body=body, tag=tag))
    await event_bus.publish(expired, tag=tag)
    await event_bus.publish(good, tag=tag)
    await asyncio.sleep(0.4)  # let `expired` expire in flight

    got = await receive_until(sub, 1)
    assert [d.event.id for d in got] == [good.id]
    await sub.ack(got[0])
    assert await sub.receive(wait_s=2.0) == []  # rejected ones were acked, not redelivered

    letters = await drain(dlq, group, 5)
    reasons = {m.properties[DLQ_REASON]: m for m in letters}
    assert set(reasons) == {*bad_bodies, "expired"}
    for reason, body in bad_bodies.items():
        assert reasons[reason].body == body  # the original bytes are kept
        assert reasons[reason].properties[DLQ_TOPIC] == topic
        assert reasons[reason].properties[DLQ_DETAIL]
    await sub.close()


async def test_a_failing_handler_is_retried_then_dead_lettered(event_bus: EventBus, unique: Unique) -> None:
    tag = unique("t")
    group = unique("g")
    sub = await event_bus.subscribe(group, ["outreach"], tag)
    dlq = await dead_letter_reader(event_bus, unique, "handler_failed")
    event = greet("flaky")
    await event_bus.publish(event, tag=tag)
    attempts: list[int] = []

    async def handler(_: object) -> None:
        attempts.append(len(attempts) + 1)
        raise RuntimeError("tool call exploded")

    consumer = EventConsumer(sub, handler, max_attempts=2, invisible_s=2.0, wait_s=1.0)
    stop = asyncio.Event()
    loop = asyncio.create_task(consumer.run(stop))
    deadline = time.monotonic() + 40
    while consumer.stats.dead_lettered < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stop.set()
    await loop
    assert attempts == [1, 2]
    assert consumer.stats.failures == 2 and consumer.stats.dead_lettered == 1
    [letter] = await drain(dlq, group, 1)
    assert "tool call exploded" in letter.properties[DLQ_DETAIL]
    await sub.close()


async def test_a_burst_published_together_arrives_whole(event_bus: EventBus, unique: Unique) -> None:
    tag = unique("t")
    sub = await event_bus.subscribe(unique("g"), ["outreach"], tag)
    burst = [greet(f"user-{i}") for i in range(150)] + [
        AskEvent(payload=AskPayload(user_id=f"asked-{i}", question="Still want the table?"))
        for i in range(50)
    ]
    ids = await event_bus.publish_many(burst, tag=tag)
    assert len(ids) == len(burst)

    got = await receive_until(sub, len(burst), within_s=30.0, max_messages=32)
    assert sorted(d.event.id for d in got) == sorted(e.id for e in burst)
    assert {d.event.type for d in got} == {"outreach.greet", "outreach.ask"}
    for delivery in got:
        await sub.ack(delivery)
    await sub.close()


async def test_a_slow_handler_neither_blocks_others_nor_loses_its_lease(
    event_bus: EventBus, unique: Unique, request: pytest.FixtureRequest
) -> None:
    """With concurrency, three events whose handlers wait (as a prompt waits for a safe moment)
    are all in hand at once; their messages stay hidden for 2.5 invisible periods, because the
    lease is extended while the handler runs; each is handled once and acked."""
    if event_bus.settings.backend == "rocketmq":
        # Known broker behaviour (RocketMQ 5.3.3, measured with 3 s and 12 s invisible times): every
        # ChangeInvisibleDuration leaves a checkpoint that revives, so an extended message comes
        # back (attempt 2) about once per extension, during and after its ack. Outreach copes (the
        # shared ledger says it was spoken; long invisible times keep extensions rare); this test
        # documents the gap rather than hiding it.
        request.applymarker(
            pytest.mark.xfail(reason="RocketMQ 5.3 redelivers extended messages", strict=False)
        )
    tag = unique("t")
    sub = await event_bus.subscribe(unique("g"), ["outreach"], tag)
    users = ["ann", "bob", "cy"]
    for user in users:
        await event_bus.publish(greet(user), tag=tag)
    started: list[str] = []
    release = asyncio.Event()

    async def handler(e: object) -> None:
        started.append(e.payload.user_id)  # type: ignore[attr-defined]
        await release.wait()

    consumer = EventConsumer(sub, handler, invisible_s=3.0, wait_s=1.0, concurrency=4)
    stop = asyncio.Event()
    loop = asyncio.create_task(consumer.run(stop))
    async with asyncio.timeout(20):
        while len(started) < len(users):
            await asyncio.sleep(0.05)
    await asyncio.sleep(7.5)  # 2.5 invisible periods: without the lease each would come back
    release.set()
    async with asyncio.timeout(20):
        while consumer.stats.handled < len(users):
            await asyncio.sleep(0.05)
    stop.set()
    await loop
    assert sorted(started) == users  # handled once each: no redelivery while in hand
    assert await sub.receive(wait_s=3.0) == []  # and acked
    await sub.close()


async def test_stopping_mid_handler_leaves_the_event_for_redelivery(
    event_bus: EventBus, unique: Unique
) -> None:
    tag, group = unique("t"), unique("g")
    sub = await event_bus.subscribe(group, ["outreach"], tag)
    await event_bus.publish(greet("ann"), tag=tag)
    in_hand = asyncio.Event()

    async def never_done(e: object) -> None:
        in_hand.set()
        await asyncio.Event().wait()

    consumer = EventConsumer(sub, never_done, invisible_s=2.0, wait_s=1.0, concurrency=2)
    stop = asyncio.Event()
    loop = asyncio.create_task(consumer.run(stop))
    await asyncio.wait_for(in_hand.wait(), 20)
    stop.set()
    await loop  # the handler is cancelled; its message is not acked
    [again] = await receive_until(sub, 1, within_s=30.0, invisible_s=30.0)
    assert again.event.payload.user_id == "ann"
    await sub.ack(again)
    await sub.close()
