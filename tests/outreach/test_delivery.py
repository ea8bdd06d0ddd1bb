"""Outreach events to spoken prompts on one node (in-process bus, SQLite ledger, fake engines,
real aiortc callers): spoken once, only in the right call, acked once heard; a prompt that was not
heard, or an event for a user with no call, waits in the ledger and opens the user's next call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest

from tests.calls.caller import Caller, dial
from tests.events.conftest import event_settings
from tests.outreach.stages import assert_delivered_once
from tests.transport.client import SpeechSource, place_call
from voiceagent.calls.session import CallManager
from voiceagent.config import OutreachSettings
from voiceagent.events import AskEvent, AskPayload, EventBus, GreetEvent, GreetPayload
from voiceagent.events.envelope import expiring_in, utcnow
from voiceagent.events.factory import create_transport
from voiceagent.outreach.identity import IdentityTrust
from voiceagent.outreach.ledger import EventRecord, Status
from voiceagent.outreach.node import OutreachNode
from voiceagent.outreach.publisher import UnknownUser
from voiceagent.testing.fakes import FlakyStore

pytestmark = pytest.mark.integration  # real aiortc peers and real time

NEWS = "Hi Ann. Your order shipped this morning and arrives on Friday."
SETTINGS = OutreachSettings(heartbeat_s=0.5, stale_after_s=3.0, claim_s=3.0, invisible_s=2.0, max_attempts=50)


async def start_node(
    manager: CallManager, store: FlakyStore, settings: OutreachSettings, allow_unsigned: bool = True
) -> OutreachNode:
    events = event_settings("inprocess")
    transport = create_transport(events)
    await transport.start()
    node = OutreachNode(
        calls=manager,
        bus=EventBus(transport, events),
        database=store.store.database,
        settings=settings,
        node_id="test-node",
        trust=IdentityTrust(allow_unsigned),
    )
    await node.start()
    return node


@pytest.fixture
async def node(manager: CallManager, store: FlakyStore) -> AsyncIterator[OutreachNode]:
    for returning in ("ann", "bob"):  # users who called before
        await store.store.touch_user(returning)
    node = await start_node(manager, store, SETTINGS)
    yield node
    await manager.close_all()
    await node.stop()
    await node.bus.transport.close()


async def until(condition: Callable[[], object], within_s: float = 20.0) -> None:
    async with asyncio.timeout(within_s):  # generous: only a lost event takes this long
        while not condition():
            await asyncio.sleep(0.05)


async def status_of(node: OutreachNode, event_id: str, wanted: Status, within_s: float = 20.0) -> EventRecord:
    async with asyncio.timeout(within_s):
        while True:
            record = await node.ledger.get(event_id)
            if record is not None and record.status == wanted:
                return record
            await asyncio.sleep(0.05)


def prompts(caller: Caller) -> list[dict[str, object]]:
    return [e for e in caller.events if e.get("kind") == "turn" and e.get("initiator") == "agent"]


async def test_a_greeting_is_spoken_in_the_users_call_and_acked_once_heard(
    manager: CallManager, node: OutreachNode
) -> None:
    ann, bob = await dial(manager, user_id="ann"), await dial(manager, user_id="bob")
    await until(lambda: len(node._registered) == 2)
    event = GreetEvent(payload=GreetPayload(user_id="ann", text=NEWS))
    result = await node.publisher.publish(event)
    assert result.routed_to == "test-node"  # the registry placed Ann's call

    turn = await ann.wait_event("turn", 0, initiator="agent")
    assert (turn["agent_text"], turn["agent_text_heard"], turn["event_id"]) == (NEWS, NEWS, event.id)
    record = await status_of(node, event.id, Status.ACKED)
    stages = [s.stage for s in record.stages]
    assert_delivered_once(stages)
    assert record.call_id == ann.call_id
    assert not [e for e in bob.events if e.get("kind") == "agent_text"]  # only Ann's call spoke
    # Ann answers; that is an ordinary turn of the same call.
    since = ann.ask()
    answer = await ann.wait_event("turn", since)
    assert answer["initiator"] == "user" and answer["agent_text"]
    for caller in (ann, bob):
        await caller.hang_up()


async def test_one_waiting_prompt_does_not_hold_up_another_users(
    manager: CallManager, node: OutreachNode
) -> None:
    ann, bob = await dial(manager, user_id="ann"), await dial(manager, user_id="bob")
    since = ann.ask()
    await ann.wait_event("transcript", since, final=True)  # her reply is in flight: Ann's prompt waits
    await node.publisher.publish(
        AskEvent(payload=AskPayload(user_id="ann", question="Did your jacket arrive?"))
    )
    await node.publisher.publish(
        AskEvent(payload=AskPayload(user_id="bob", question="Is the booking still on?"))
    )

    bobs = await bob.wait_event("turn", 0, initiator="agent")
    anns = await ann.wait_event("turn", 0, initiator="agent")
    assert (bobs["agent_text"], anns["agent_text"]) == ("Is the booking still on?", "Did your jacket arrive?")
    reply_to_ann = next(e for e in ann.events if e.get("kind") == "turn" and e["initiator"] == "user")
    assert ann.events.index(reply_to_ann) < ann.events.index(anns)  # after her reply, not over it
    for caller in (ann, bob):
        await caller.hang_up()


async def test_an_event_for_a_user_not_in_a_call_opens_their_next_call(
    manager: CallManager, node: OutreachNode
) -> None:
    event = GreetEvent(payload=GreetPayload(user_id="ann", text=NEWS), expires_at=expiring_in(600))
    await node.publisher.publish(event)
    await status_of(node, event.id, Status.PENDING)  # routed by the router group: no call anywhere

    ann = await dial(manager, user_id="ann")  # she says nothing: the agent speaks first
    turn = await ann.wait_event("turn", 0, initiator="agent")
    assert (turn["agent_text_heard"], turn["event_id"], turn["index"]) == (NEWS, event.id, 1)
    assert not [e for e in ann.events if e.get("kind") == "transcript"]
    await status_of(node, event.id, Status.HEARD)
    await ann.hang_up()


async def test_a_prompt_cut_off_by_a_hang_up_is_spoken_in_the_users_next_call(
    manager: CallManager, node: OutreachNode
) -> None:
    ann = await dial(manager, user_id="ann")
    await until(lambda: ann.call_id in node._registered)
    event = GreetEvent(payload=GreetPayload(user_id="ann", text=NEWS))
    await node.publisher.publish(event)
    await ann.wait_event("agent_text", 0)
    await manager.hang_up(ann.call_id)  # mid-prompt: not heard to the end
    await ann.hang_up()
    record = await status_of(node, event.id, Status.PENDING)
    assert "not heard: call_ended" in (record.detail or "")

    again = await dial(manager, user_id="ann")
    turn = await again.wait_event("turn", 0, initiator="agent", within_s=30.0)
    assert (turn["agent_text_heard"], turn["event_id"]) == (NEWS, event.id)
    await status_of(node, event.id, Status.HEARD)
    await asyncio.sleep(SETTINGS.invisible_s * 2)  # the redelivered message finds it heard
    assert len(prompts(again)) == 1
    await again.hang_up()


async def test_the_same_decision_published_twice_is_spoken_once(
    manager: CallManager, node: OutreachNode
) -> None:
    ann = await dial(manager, user_id="ann")
    await until(lambda: ann.call_id in node._registered)
    first = AskEvent(
        idempotency_key="ask:ann:jacket", payload=AskPayload(user_id="ann", question="Jacket ok?")
    )
    second = first.model_copy(update={"id": "another-id"})  # a retried publish: same key, new id
    assert (await node.publisher.publish(first)).duplicate is False
    assert (await node.publisher.publish(second)).duplicate is True  # the publisher knows the key
    await node.bus.publish(second, tag="unrouted")  # and a copy straight onto the bus
    await node.bus.publish(first, tag="unrouted")
    await status_of(node, first.id, Status.ACKED)
    await asyncio.sleep(SETTINGS.invisible_s * 2)
    assert [t["agent_text"] for t in prompts(ann)] == ["Jacket ok?"]
    record = await node.ledger.get(first.id)
    assert record is not None and "duplicate" in [s.stage for s in record.stages]
    await ann.hang_up()


async def test_an_event_that_expires_while_pending_is_never_spoken(
    manager: CallManager, node: OutreachNode
) -> None:
    expires_at = utcnow() + timedelta(seconds=5)  # time enough to be routed on a busy machine
    event = GreetEvent(payload=GreetPayload(user_id="ann", text=NEWS), expires_at=expires_at)
    await node.publisher.publish(event)
    await status_of(node, event.id, Status.PENDING)
    await asyncio.sleep((expires_at - utcnow()).total_seconds() + 0.2)
    ann = await dial(manager, user_id="ann")
    await asyncio.sleep(SETTINGS.invisible_s)  # time for any opening prompt to have started
    assert not prompts(ann) and not [e for e in ann.events if e.get("kind") == "agent_text"]
    assert await node.ledger.undelivered_for("ann") == []
    await ann.hang_up()


async def dial_signed(manager: CallManager, user_id: str) -> Caller:
    """A caller whose id came in a signed token (what POST /api/calls makes of a valid one)."""
    mic = SpeechSource()

    async def direct(sdp: str) -> tuple[str, str]:
        session, answer = await manager.start(sdp, "offer", user_id, identity="signed")
        return session.id, answer

    return Caller(await place_call(direct, mic), mic)


async def test_an_untrusted_caller_is_not_told_someone_elses_pending_prompt(
    manager: CallManager, store: FlakyStore
) -> None:
    await store.store.touch_user("ann")
    node = await start_node(manager, store, SETTINGS, allow_unsigned=False)
    try:
        event = GreetEvent(payload=GreetPayload(user_id="ann", text=NEWS))
        await node.publisher.publish(event)
        await status_of(node, event.id, Status.PENDING)
        claimed = await dial(manager, user_id="ann")  # her id, unsigned: not believed here
        await asyncio.sleep(SETTINGS.invisible_s)
        assert not prompts(claimed)
        assert (await node.ledger.get(event.id)).status == Status.PENDING  # type: ignore[union-attr]
        # Nor is an event published while the claimed call is live spoken in it.
        live = AskEvent(payload=AskPayload(user_id="ann", question="Is the booking still on?"))
        await node.publisher.publish(live)
        await status_of(node, live.id, Status.PENDING)
        assert not prompts(claimed)
        await claimed.hang_up()

        ann = await dial_signed(manager, "ann")  # the host app vouches for her: she hears both
        turn = await ann.wait_event("turn", 0, initiator="agent")
        assert turn["event_id"] in (event.id, live.id)
        await status_of(node, event.id, Status.HEARD)
        await status_of(node, live.id, Status.HEARD)
        await ann.hang_up()
    finally:
        await manager.close_all()
        await node.stop()
        await node.bus.transport.close()


async def test_an_event_for_a_user_who_never_called_is_dead_lettered(node: OutreachNode) -> None:
    letters = await node.bus.subscribe("dead-letter-reader", ["dead_letter"])
    ghost = AskEvent(payload=AskPayload(user_id="ghost", question="Hello?"))
    with pytest.raises(UnknownUser):  # the publisher refuses it...
        await node.publisher.publish(ghost)
    await node.bus.publish(ghost, tag="unrouted")  # ...and a node that receives one dead-letters it
    async with asyncio.timeout(20):
        while not (received := await letters.receive(wait_s=0.5)):
            pass
    [letter] = received
    assert letter.event.id == ghost.id
    assert letter.message.properties["va_dlq_reason"] == "unknown_user"
    assert await node.ledger.get(ghost.id) is None  # nothing recorded, nothing pending
    await letters.close()


async def test_an_event_made_pending_while_the_user_was_calling_is_spoken_in_that_call(
    manager: CallManager, node: OutreachNode
) -> None:
    """The router found no call (the registry lagged, or the call was starting at that moment):
    the event went pending. The node holding the call finds it at its next heartbeat."""
    ann = await dial(manager, user_id="ann")
    await until(lambda: ann.call_id in node._registered)
    await asyncio.sleep(SETTINGS.heartbeat_s * 2)  # well past the call's start: nothing pending then
    event = AskEvent(payload=AskPayload(user_id="ann", question="Shall I book the table for two?"))
    await node.ledger.make_pending(event, "a-router-that-saw-no-call")
    turn = await ann.wait_event("turn", 0, initiator="agent")
    assert (turn["agent_text_heard"], turn["event_id"]) == ("Shall I book the table for two?", event.id)
    await status_of(node, event.id, Status.HEARD)
    await ann.hang_up()
