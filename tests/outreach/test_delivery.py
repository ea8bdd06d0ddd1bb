"""Outreach events to spoken prompts on one node: the event is acked only once the prompt was
heard to the end; a prompt that was not (the caller hung up mid-way, or is not in a call here)
leaves it for redelivery, and the redelivered event is spoken in the user's next call.
In-process bus, fake engines, real aiortc callers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.calls.caller import dial
from tests.events.conftest import event_settings
from voiceagent.calls.session import CallManager
from voiceagent.events import AskEvent, AskPayload, EventBus, EventConsumer, GreetEvent, GreetPayload
from voiceagent.events.factory import create_transport
from voiceagent.outreach.delivery import OutreachDelivery

pytestmark = pytest.mark.integration  # real aiortc peers and real time

NEWS = "Hi Ann. Your order shipped this morning and arrives on Friday."


@pytest.fixture
async def outreach(manager: CallManager) -> AsyncIterator[tuple[EventBus, EventConsumer]]:
    settings = event_settings("inprocess")
    transport = create_transport(settings)
    await transport.start()
    bus = EventBus(transport, settings)
    subscription = await bus.subscribe("rtc-node-1", ["outreach"])
    consumer = EventConsumer(
        subscription, OutreachDelivery(manager), invisible_s=2.0, wait_s=0.5, concurrency=8, max_attempts=20
    )
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run(stop))
    yield bus, consumer
    stop.set()
    await running
    await subscription.close()
    await transport.close()


async def until(condition: object, within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):  # generous: only a lost event takes this long
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_a_greeting_is_spoken_in_the_users_call_and_acked_once_heard(
    manager: CallManager, outreach: tuple[EventBus, EventConsumer]
) -> None:
    bus, consumer = outreach
    ann, bob = await dial(manager, user_id="ann"), await dial(manager, user_id="bob")
    event = GreetEvent(payload=GreetPayload(user_id="ann", text=NEWS))
    await bus.publish(event)

    turn = await ann.wait_event("turn", 0, initiator="agent")
    assert (turn["agent_text"], turn["agent_text_heard"], turn["event_id"]) == (NEWS, NEWS, event.id)
    await until(lambda: consumer.stats.handled == 1)  # acked after the prompt played out
    assert not [e for e in bob.events if e.get("kind") == "agent_text"]  # only Ann's call spoke
    # Ann answers; that is an ordinary turn of the same call.
    since = ann.ask()
    answer = await ann.wait_event("turn", since)
    assert answer["initiator"] == "user" and answer["agent_text"]
    for caller in (ann, bob):
        await caller.hang_up()


async def test_one_waiting_prompt_does_not_hold_up_another_users(
    manager: CallManager, outreach: tuple[EventBus, EventConsumer]
) -> None:
    bus, consumer = outreach
    ann, bob = await dial(manager, user_id="ann"), await dial(manager, user_id="bob")
    since = ann.ask()
    await ann.wait_event("transcript", since, final=True)  # her reply is in flight: Ann's prompt waits
    await bus.publish(AskEvent(payload=AskPayload(user_id="ann", question="Did your jacket arrive?")))
    await bus.publish(AskEvent(payload=AskPayload(user_id="bob", question="Is the booking still on?")))

    bobs = await bob.wait_event("turn", 0, initiator="agent")
    anns = await ann.wait_event("turn", 0, initiator="agent")
    assert (bobs["agent_text"], anns["agent_text"]) == ("Is the booking still on?", "Did your jacket arrive?")
    reply_to_ann = next(e for e in ann.events if e.get("kind") == "turn" and e["initiator"] == "user")
    assert ann.events.index(reply_to_ann) < ann.events.index(anns)  # after her reply, not over it
    await until(lambda: consumer.stats.handled == 2)
    for caller in (ann, bob):
        await caller.hang_up()


async def test_a_prompt_cut_off_by_a_hang_up_is_redelivered_to_the_users_next_call(
    manager: CallManager, outreach: tuple[EventBus, EventConsumer]
) -> None:
    bus, consumer = outreach
    ann = await dial(manager, user_id="ann")
    event = GreetEvent(payload=GreetPayload(user_id="ann", text=NEWS))
    await bus.publish(event)
    await ann.wait_event("agent_text", 0)
    await manager.hang_up(ann.call_id)  # mid-prompt: not heard to the end, so not acked
    await ann.hang_up()
    await until(lambda: consumer.stats.failures >= 1)
    assert consumer.stats.handled == 0

    again = await dial(manager, user_id="ann")  # the event comes back and is spoken here
    turn = await again.wait_event("turn", 0, initiator="agent", within_s=30.0)
    assert (turn["agent_text_heard"], turn["event_id"]) == (NEWS, event.id)
    await until(lambda: consumer.stats.handled == 1)
    await again.hang_up()
