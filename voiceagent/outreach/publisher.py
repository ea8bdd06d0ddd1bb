"""Outreach decisions onto the bus: recorded in the ledger first, routed to the node holding the
user's call, published; the same decision (idempotency key) made twice is published once."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from voiceagent.events import EventBus, PublishFailed
from voiceagent.outreach.ledger import OutreachEventT, OutreachLedger, Status
from voiceagent.outreach.registry import SessionRegistry
from voiceagent.outreach.routing import UNROUTED_TAG, node_tag

log = logging.getLogger(__name__)


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

    async def publish(self, event: OutreachEventT) -> PublishResult:
        """Decide, route and publish; raise PublishFailed if the broker stayed down (the decision
        stays recorded as ``decided``: sending it again publishes it then, and a call the user
        starts meanwhile speaks it anyway)."""
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

    async def reroute(self, event: OutreachEventT, to_node: str) -> None:
        """Hand an event to the node that holds the user's call now (same id and key)."""
        await self.bus.publish(event, tag=node_tag(to_node))
        await self.ledger.mark(event.id, "rerouted", node_id=self.node_id, detail=to_node)
