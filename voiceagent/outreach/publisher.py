"""Outreach decisions onto the bus: recorded in the ledger first, routed to the node holding the
user's call, published; the same decision (idempotency key) made twice is published once."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pydantic import BaseModel

from voiceagent.events import EventBus, PublishFailed
from voiceagent.outreach.ledger import OutreachEventT, OutreachLedger, Status
from voiceagent.outreach.registry import SessionRegistry
from voiceagent.outreach.routing import UNROUTED_TAG, node_tag

log = logging.getLogger(__name__)
BATCH = 500  # events per round of publish_many (SQL IN lists stay short)


class UnknownUser(LookupError):
    """Outreach for a user the store has never seen (they never called): nothing is published."""


class PublishResult(BaseModel):
    event_id: str
    status: str  # the event's status after this call
    duplicate: bool  # the decision was known: nothing new was published
    routed_to: str | None = None  # the node holding the user's call when published


class OutreachPublisher:
    def __init__(
        self, bus: EventBus, ledger: OutreachLedger, registry: SessionRegistry, node_id: str | None = None
    ) -> None:
        self.bus = bus
        self.ledger = ledger
        self.registry = registry
        self.node_id = node_id  # who decides (a scheduler, a node, an operator's CLI)

    async def send(self, event: OutreachEventT) -> str:
        return (await self.publish(event)).event_id

    async def send_many(self, events: Sequence[OutreachEventT]) -> list[str | Exception]:
        return [r.event_id if isinstance(r, PublishResult) else r for r in await self.publish_many(events)]

    async def publish(self, event: OutreachEventT) -> PublishResult:
        """Decide, route and publish; raise PublishFailed if the broker stayed down (the decision
        stays recorded as ``decided``: sending it again publishes it then, and a call the user
        starts meanwhile speaks it anyway)."""
        if not await self.ledger.user_exists(event.payload.user_id):
            raise UnknownUser(f"user {event.payload.user_id!r} has never called")
        record, created = await self.ledger.decide(event, self.node_id)
        if not created and record.status != Status.DECIDED:
            return PublishResult(event_id=record.id, status=record.status, duplicate=True)
        if not created:  # decided before, never reached the broker: publish the original
            event = type(event).model_validate(record.body)
        where = await self.registry.locate(event.payload.user_id)
        tag = node_tag(where.node_id) if where is not None else UNROUTED_TAG
        try:
            await self.bus.publish(event, tag=tag)
        except PublishFailed as exc:
            await self.ledger.mark(event.id, "publish_failed", node_id=self.node_id, detail=str(exc))
            raise
        await self.ledger.mark(event.id, Status.PUBLISHED, node_id=self.node_id, detail=tag)
        return PublishResult(
            event_id=event.id,
            status=Status.PUBLISHED,
            duplicate=False,
            routed_to=where.node_id if where is not None else None,
        )

    async def publish_many(self, events: Sequence[OutreachEventT]) -> list[PublishResult | Exception]:
        """:meth:`publish` for a batch (a scheduler's run): a few statements and one broker call
        per ``BATCH`` events and tag instead of five round trips per event. Each event gets its
        result, or the exception that stopped it (UnknownUser, PublishFailed)."""
        first_of_key: dict[str, int] = {}
        unique: list[OutreachEventT] = []
        for event in events:  # the same decision twice in one batch is one event
            if event.idempotency_key not in first_of_key:
                first_of_key[event.idempotency_key] = len(unique)
                unique.append(event)
        outcomes: list[PublishResult | Exception] = []
        for start in range(0, len(unique), BATCH):
            outcomes += await self._publish_batch(unique[start : start + BATCH])
        results: list[PublishResult | Exception] = []
        seen: set[str] = set()
        for event in events:
            outcome = outcomes[first_of_key[event.idempotency_key]]
            if event.idempotency_key in seen and isinstance(outcome, PublishResult):
                outcome = outcome.model_copy(update={"duplicate": True})
            seen.add(event.idempotency_key)
            results.append(outcome)
        return results

    async def _publish_batch(self, events: Sequence[OutreachEventT]) -> list[PublishResult | Exception]:
        results: list[PublishResult | Exception | None] = [None] * len(events)
        known = await self.ledger.existing_users({e.payload.user_id for e in events})
        wanted = [i for i, e in enumerate(events) if e.payload.user_id in known]
        for i, event in enumerate(events):
            if event.payload.user_id not in known:
                results[i] = UnknownUser(f"user {event.payload.user_id!r} has never called")
        decided = await self.ledger.decide_many([events[i] for i in wanted], self.node_id)
        to_send: dict[int, OutreachEventT] = {}
        for i, (record, created) in zip(wanted, decided, strict=True):
            if not created and record.status != Status.DECIDED:
                results[i] = PublishResult(event_id=record.id, status=record.status, duplicate=True)
            else:
                to_send[i] = events[i] if created else type(events[i]).model_validate(record.body)
        where = await self.registry.locate_many({e.payload.user_id for e in to_send.values()})
        by_tag: dict[str, list[int]] = {}
        for i, event in to_send.items():
            node = where.get(event.payload.user_id)
            by_tag.setdefault(node_tag(node) if node else UNROUTED_TAG, []).append(i)
        for tag, indexes in by_tag.items():
            ids = [to_send[i].id for i in indexes]
            try:
                await self.bus.publish_many([to_send[i] for i in indexes], tag=tag)
            except PublishFailed as exc:
                await self.ledger.mark_many(ids, "publish_failed", node_id=self.node_id, detail=str(exc))
                for i in indexes:
                    results[i] = exc
                continue
            await self.ledger.mark_many(ids, Status.PUBLISHED, node_id=self.node_id, detail=tag)
            for i in indexes:
                node = where.get(to_send[i].payload.user_id)
                results[i] = PublishResult(
                    event_id=to_send[i].id, status=Status.PUBLISHED, duplicate=False, routed_to=node
                )
        return [r for r in results if r is not None]

    async def reroute(self, event: OutreachEventT, to_node: str) -> None:
        """Hand an event to the node that holds the user's call now (same id and key)."""
        await self.bus.publish(event, tag=node_tag(to_node))
        await self.ledger.mark(event.id, "rerouted", node_id=self.node_id, detail=to_node)
