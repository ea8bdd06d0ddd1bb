"""Outreach on one server node: its calls in the shared registry, the events meant for them from
the broker, and what is pending for a caller spoken as their call begins.

The node reads two consumer groups: its own (tag ``node-<id>``: events a publisher routed here)
and the shared router group (tag ``unrouted``: events for users no node was known to hold, each
taken by one node, which routes it on or makes it pending). Neither deduplicates in process: the
shared ledger's claim does, across nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from pydantic import TypeAdapter

from voiceagent.calls.session import CallManager, CallSession
from voiceagent.config import OutreachSettings
from voiceagent.events import AskEvent, EventBus, EventConsumer, GreetEvent
from voiceagent.events.envelope import utcnow
from voiceagent.outreach.delivery import ClaimedElsewhere, OutreachDelivery, PromptNotHeard
from voiceagent.outreach.identity import CallerTrust
from voiceagent.outreach.ledger import EventRecord, OutreachEventT, OutreachLedger
from voiceagent.outreach.publisher import OutreachPublisher
from voiceagent.outreach.registry import SessionRegistry
from voiceagent.outreach.routing import ROUTER_GROUP, UNROUTED_TAG, node_group, node_tag
from voiceagent.store import Database

log = logging.getLogger(__name__)
_EVENT = TypeAdapter[GreetEvent | AskEvent](GreetEvent | AskEvent)
SWEEP_EVERY = 6  # heartbeats between sweeps of dead nodes' registry rows
SUBSCRIBE_RETRY_S = 2.0


class OutreachNode:
    def __init__(
        self,
        *,
        calls: CallManager,
        bus: EventBus,
        database: Database,
        settings: OutreachSettings,
        node_id: str,
        trust: CallerTrust,
    ) -> None:
        self.calls = calls
        self.bus = bus
        self.settings = settings
        self.node_id = node_id
        self.trust = trust
        self.registry = SessionRegistry(database, settings.stale_after_s)
        self.ledger = OutreachLedger(database)
        self.publisher = OutreachPublisher(bus, self.ledger, self.registry, node_id)
        self.delivery = OutreachDelivery(
            calls=BelievedCalls(calls, trust),
            ledger=self.ledger,
            registry=self.registry,
            publisher=self.publisher,
            node_id=node_id,
            claim_s=settings.claim_s,
        )
        self.consumers: list[EventConsumer] = []
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._openings: dict[str, set[asyncio.Task[Any]]] = {}  # call id → pending prompts being said
        self._registered: set[str] = set()
        self._saying: set[str] = set()  # events this node is trying to say from the ledger
        calls.listeners.append(self)

    async def start(self) -> None:
        if not self.settings.enabled:
            return
        try:
            await self.registry.forget_node(self.node_id)  # calls of this node's previous life
        except Exception as exc:
            log.warning("outreach: could not clear this node's old registry rows: %s", exc)
        self._spawn(self._consume(node_group(self.node_id), node_tag(self.node_id)), "outreach-node")
        self._spawn(self._consume(ROUTER_GROUP, UNROUTED_TAG), "outreach-router")
        self._spawn(self._heartbeats(), "outreach-heartbeat")

    async def stop(self) -> None:
        self._stop.set()
        for task in list(self._tasks):
            if task.get_name() == "outreach-heartbeat" or task.get_name().startswith("opening-"):
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the broker ------------------------------------------------------------------------------

    async def _consume(self, group: str, tag: str) -> None:
        subscription = await self.bus.subscribe_until_stopped(
            group, ["outreach"], tag, self._stop, SUBSCRIBE_RETRY_S
        )
        if subscription is None:
            return
        consumer = EventConsumer(
            subscription,
            self.delivery,
            dedup=False,  # the ledger's claim deduplicates, across nodes
            max_attempts=self.settings.max_attempts,
            invisible_s=self.settings.invisible_s,
            wait_s=2.0,
            concurrency=self.settings.concurrency,
            on_acked=self.delivery.acked,
        )
        self.consumers.append(consumer)
        try:
            await consumer.run(self._stop)
        finally:
            with contextlib.suppress(Exception):
                await subscription.close()

    # -- the registry ----------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            beats += 1
            try:
                for session in list(self.calls.sessions.values()):
                    if session.id not in self._registered:  # the store was down when it started
                        await self._register(session)
                activity = {s.id: s.last_activity_at for s in self.calls.sessions.values()}
                await self.registry.heartbeat(self.node_id, activity)
                await self._say_stranded()
                if beats % SWEEP_EVERY == 0:
                    await self.registry.sweep()
            except Exception as exc:
                log.warning("outreach: registry heartbeat failed: %s: %s", type(exc).__name__, exc)

    async def _say_stranded(self) -> None:
        """Pending events for callers who are in a call here now: the event arrived while no call
        was known for them (the registry lagging, a call starting that very moment), or its
        delivery died with a node. Said at the next safe point, like any prompt."""
        sessions: dict[str, CallSession] = {}
        for session in self.calls.sessions.values():  # the newest call of each trusted caller
            if self.trust.trusts(session) and session.id in self._registered:
                known = sessions.get(session.user_id)
                if known is None or known.started_at < session.started_at:
                    sessions[session.user_id] = session
        if not sessions:
            return
        in_flight_since = utcnow() - timedelta(seconds=2 * self.settings.invisible_s)
        for record in await self.ledger.stranded_for(sessions, in_flight_since):
            if record.id not in self._saying:
                self._say_later(record, sessions[record.user_id])

    def _say_later(self, record: EventRecord, session: CallSession) -> None:
        event = _EVENT.validate_python(record.body)
        openings = self._openings.setdefault(session.id, set())
        task = self._spawn(self._say_pending(event, session), f"opening-{session.id}-{event.id}")
        openings.add(task)
        task.add_done_callback(openings.discard)

    async def _register(self, session: CallSession) -> None:
        await self.registry.register(session.id, session.user_id, self.node_id)
        self._registered.add(session.id)

    # -- calls starting and ending ---------------------------------------------------------------

    def call_started(self, session: CallSession) -> None:
        if not self.settings.enabled:
            return
        self._spawn(self._open(session), f"opening-{session.id}")

    def call_ended(self, session: CallSession) -> None:
        for task in self._openings.pop(session.id, set()):
            task.cancel()
        self._registered.discard(session.id)
        self._spawn(self._unregister(session.id), f"unregister-{session.id}")

    async def _unregister(self, call_id: str) -> None:
        try:
            await self.registry.unregister(call_id)
        except Exception as exc:  # the row goes stale and is swept
            log.warning("outreach: could not unregister call %s: %s", call_id, exc)

    async def _open(self, session: CallSession) -> None:
        """Register the call, then speak what is pending for a trusted caller: the agent speaks
        first."""
        try:
            await self._register(session)
        except Exception as exc:
            log.warning("outreach: call %s not registered yet: %s", session.id, exc)
        if not self.trust.trusts(session):
            if session.identity != "anonymous":
                who = f"{session.identity} user {session.user_id!r}"
                log.info("call %s: %s not told what is pending for them", session.id, who)
            return
        try:
            pending = await self.ledger.undelivered_for(session.user_id)
        except Exception as exc:
            log.warning("outreach: pending prompts for %s unknown: %s", session.user_id, exc)
            return
        for record in pending:
            if record.id not in self._saying:
                self._say_later(record, session)

    async def _say_pending(self, event: OutreachEventT, session: CallSession) -> None:
        self._saying.add(event.id)
        try:
            await self._keep_trying(event, session)
        finally:
            self._saying.discard(event.id)

    async def _keep_trying(self, event: OutreachEventT, session: CallSession) -> None:
        while session.id in self.calls.sessions:
            try:
                await self.delivery.speak(event, session)
                return
            except ClaimedElsewhere:
                # Held by another delivery, or by a node that died mid-prompt: its lease lapses.
                await asyncio.sleep(self.settings.claim_s / 3)
            except PromptNotHeard:
                return  # back to pending, and its message to redelivery
            except Exception as exc:
                log.warning("outreach: pending %s for %s: %s: %s", event.id, session.user_id,
                            type(exc).__name__, exc)  # fmt: skip
                await asyncio.sleep(self.settings.claim_s / 3)


class BelievedCalls:
    """Delivery's view of this node's calls: an event for a user is spoken only in a call whose
    caller may hear it (identity.py), never in one that merely claims their id."""

    def __init__(self, calls: CallManager, trust: CallerTrust) -> None:
        self.calls = calls
        self.trust = trust

    def session_of_user(self, user_id: str) -> CallSession | None:
        """This node's newest call of ``user_id`` that may hear events for them."""
        theirs = [s for s in self.calls.sessions.values() if s.user_id == user_id and self.trust.may_hear(s)]
        return max(theirs, key=lambda s: s.started_at) if theirs else None
