"""The outreach ledger and registry on the real store (SQLite, and PostgreSQL where several nodes
share it): one claim wins, outcomes settle an event once, a dead node's claim and registry rows
lapse; and what each outcome of a prompt does to its event."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace

import pytest

from voiceagent.events import GreetEvent, GreetPayload
from voiceagent.events.envelope import utcnow
from voiceagent.outreach.delivery import OutreachDelivery, PromptNotHeard
from voiceagent.outreach.ledger import Claim, OutreachLedger, Status
from voiceagent.outreach.registry import SessionRegistry
from voiceagent.pipeline.speech import SpeechHandle, SpeechOutcome, SpeechResult
from voiceagent.store import Database


def greet(user: str = "ann", key: str = "greet:ann:1", **kw: object) -> GreetEvent:
    return GreetEvent(idempotency_key=key, payload=GreetPayload(user_id=user, text="Hello Ann."), **kw)  # type: ignore[arg-type]


async def test_the_same_decision_is_one_event(database: Database) -> None:
    ledger = OutreachLedger(database)
    first, created = await ledger.decide(greet())
    again, created_again = await ledger.decide(greet())  # same key, new event id
    assert created and not created_again and again.id == first.id


async def test_of_many_nodes_claiming_one_event_exactly_one_speaks_it(database: Database) -> None:
    event = greet()
    ledgers = [OutreachLedger(database) for _ in range(6)]  # as many nodes, one shared store
    claims = await asyncio.gather(
        *(ledger.claim(event, f"node-{n}", f"call-{n}", lease_s=30) for n, ledger in enumerate(ledgers))
    )
    assert sorted(claims) == sorted([Claim.CLAIMED] + [Claim.BUSY] * 5)
    winner = claims.index(Claim.CLAIMED)
    await ledgers[winner].release(event.id, f"node-{winner}", Status.HEARD)
    assert await ledgers[0].claim(event, "node-9", "call-9", lease_s=30) == Claim.FINISHED


async def test_a_dead_nodes_claim_lapses_and_the_event_is_spoken_elsewhere(database: Database) -> None:
    ledger, event = OutreachLedger(database), greet()
    assert await ledger.claim(event, "node-b", "call-1", lease_s=30) == Claim.CLAIMED
    assert [r.id for r in await ledger.undelivered_for("ann")] == [event.id]  # held, not finished
    later = utcnow() + timedelta(seconds=31)  # node B died: nobody renews
    assert await ledger.claim(event, "node-a", "call-2", lease_s=30, now=later) == Claim.CLAIMED
    # B's late outcome cannot overwrite A's claim.
    await ledger.release(event.id, "node-b", Status.PENDING)
    record = await ledger.get(event.id)
    assert record is not None and record.claimed_by == "node-a" and record.status == Status.ROUTED


async def test_an_expired_event_is_never_claimed(database: Database) -> None:
    ledger = OutreachLedger(database)
    event = greet(expires_at=utcnow() + timedelta(seconds=5))
    await ledger.decide(event)
    assert await ledger.claim(event, "n", "c", 30, now=utcnow() + timedelta(seconds=6)) == Claim.EXPIRED
    assert (await ledger.get(event.id)).status == Status.EXPIRED  # type: ignore[union-attr]


async def test_history_pages_newest_first_with_stages(database: Database) -> None:
    ledger = OutreachLedger(database)
    for n in range(5):
        await ledger.decide(greet(key=f"k{n}"))
    await ledger.decide(greet(user="bob", key="kb"))
    page, total = await ledger.history(user_id="ann", limit=2, offset=0)
    rest, _ = await ledger.history(user_id="ann", limit=10, offset=2)
    assert total == 5 and len(page) == 2 and len(rest) == 3
    assert {r.id for r in page}.isdisjoint({r.id for r in rest})
    assert all(r.user_id == "ann" and [s.stage for s in r.stages] == ["decided"] for r in page + rest)


async def test_the_registry_forgets_a_node_that_stops_heartbeating(database: Database) -> None:
    registry = SessionRegistry(database, stale_after_s=0.5)
    await registry.register("call-a", "ann", "node-a")
    await registry.register("call-b", "bob", "node-b")
    assert (await registry.locate("ann")).node_id == "node-a"  # type: ignore[union-attr]
    await asyncio.sleep(0.7)
    await registry.heartbeat("node-a")  # node B died
    assert await registry.locate("bob") is None
    assert (await registry.locate("ann")) is not None
    assert await registry.sweep() == 1


class _Session:
    """A live call whose conversation settles every prompt with one result."""

    def __init__(self, result: SpeechResult) -> None:
        self.id, self.user_id, self.result = "call-1", "ann", result
        self.conversation = SimpleNamespace(say=self.say)

    def say(self, text: str | None, **options: object) -> SpeechHandle:
        handle = SpeechHandle(
            text=text, instructions=None, priority=0, allow_interruptions=True, expires_at_s=None,
            give_up_at_s=1e9, replaces=None, event_id=str(options["event_id"]),
        )  # fmt: skip
        if self.result.outcome != SpeechOutcome.DROPPED:
            handle.mark_started()
        handle.settle(self.result)
        return handle


@pytest.mark.parametrize(
    ("result", "status", "redelivered"),
    [
        (SpeechResult(outcome=SpeechOutcome.PLAYED, heard="Hello Ann."), Status.HEARD, False),
        (SpeechResult(outcome=SpeechOutcome.INTERRUPTED, heard="Hello"), Status.INTERRUPTED, False),
        (SpeechResult(outcome=SpeechOutcome.DROPPED, reason="expired"), Status.EXPIRED, False),
        (SpeechResult(outcome=SpeechOutcome.DROPPED, reason="replaced"), Status.SUPERSEDED, False),
        (SpeechResult(outcome=SpeechOutcome.DROPPED, reason="call_ended"), Status.PENDING, True),
        (SpeechResult(outcome=SpeechOutcome.DROPPED, reason="no_safe_point"), Status.PENDING, True),
        (SpeechResult(outcome=SpeechOutcome.DROPPED, reason="failed"), Status.PENDING, True),
    ],
)
async def test_each_outcome_of_a_prompt_settles_its_event(
    database: Database, result: SpeechResult, status: Status, redelivered: bool
) -> None:
    ledger = OutreachLedger(database)
    delivery = OutreachDelivery(
        calls=SimpleNamespace(session_of_user=lambda _: None),  # type: ignore[arg-type]
        ledger=ledger,
        registry=SessionRegistry(database, 10),
        publisher=None,  # type: ignore[arg-type]
        node_id="node-a",
        claim_s=30,
    )
    event = greet()
    if redelivered:  # not heard: back to pending, and the message is left for redelivery
        with pytest.raises(PromptNotHeard):
            await delivery.speak(event, _Session(result))  # type: ignore[arg-type]
    else:
        await delivery.speak(event, _Session(result))  # type: ignore[arg-type]
    record = await ledger.get(event.id)
    assert record is not None and record.status == status and record.claimed_by is None
    # Whatever the outcome, a second delivery never speaks a settled prompt again.
    again = await ledger.claim(event, "node-b", "call-2", 30)
    assert again == (Claim.CLAIMED if status == Status.PENDING else Claim.FINISHED)


async def test_a_node_faster_than_the_publishers_bookkeeping_keeps_its_outcome(database: Database) -> None:
    """The broker hands the event to a node (pending: no call) before the publisher has written
    ``published``: the late write is logged as a stage and does not undo the node's outcome."""
    ledger, event = OutreachLedger(database), greet()
    await ledger.decide(event)
    await ledger.make_pending(event, "node-a")
    await ledger.mark_many([event.id], Status.PUBLISHED, node_id="publisher", detail="unrouted")
    assert not await ledger.mark(event.id, Status.PUBLISHED, node_id="publisher")
    record = await ledger.get(event.id)
    assert record is not None and record.status == Status.PENDING
    assert [s.stage for s in record.stages] == ["decided", "pending", "published", "published"]
