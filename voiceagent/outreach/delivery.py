"""Outreach events become spoken prompts in this node's live calls, spoken once across nodes and
settled only once heard.

Whatever path an event takes to a call — its node's tag, the shared router group, a redelivery,
or the user's next call picking it up from the ledger — it is spoken only after this node
*claims* it in the shared ledger, so a duplicate is never spoken twice. Outcomes:
- heard to the end → ``heard`` (the consumer then acks: ``acked``);
- the caller spoke over it → ``interrupted``: they heard part of it and answered, which ends it
  (repeating a prompt the caller already cut into would be worse than not);
- expired, or replaced by a newer prompt of its kind → ``expired`` / ``superseded``;
- anything else (the call ended, no safe moment came, its words could not be produced) → back to
  ``pending`` in the ledger, and :class:`PromptNotHeard` leaves the message unacked: the broker
  redelivers it (routed again), and the user's next call picks it up from the ledger meanwhile;
- the user has no call here → routed to the node that holds it, or made ``pending``;
- the user does not exist (never called) → dead-lettered as ``unknown_user``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from voiceagent.events import AskEvent, EventUnusable, GreetEvent, RetryLater
from voiceagent.events.envelope import utcnow
from voiceagent.events.eventbus import AnyEvent
from voiceagent.outreach.ledger import Claim, OutreachEventT, OutreachLedger, Status
from voiceagent.outreach.publisher import OutreachPublisher
from voiceagent.outreach.registry import SessionRegistry
from voiceagent.pipeline.conversation import Conversation
from voiceagent.pipeline.speech import SpeechHandle, SpeechOutcome, SpeechResult

log = logging.getLogger(__name__)

GREET_INSTRUCTIONS = "Greet the user, who is back, in one short sentence. Context: {reason}"
_DROPPED_AS = {"expired": Status.EXPIRED, "replaced": Status.SUPERSEDED}


class LiveCall(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def user_id(self) -> str: ...

    @property
    def conversation(self) -> Conversation: ...


class LiveCalls(Protocol):
    def session_of_user(self, user_id: str) -> LiveCall | None: ...


class ClaimedElsewhere(RetryLater):
    """Another delivery of this event holds it (waiting or playing): this one waits its turn."""


class PromptNotHeard(RetryLater):
    def __init__(self, event_id: str, result: SpeechResult) -> None:
        why = f" ({result.reason})" if result.reason else ""
        super().__init__(f"prompt for event {event_id} not heard: {result.outcome}{why}")
        self.result = result


class OutreachDelivery:
    """An EventConsumer handler for ``outreach.greet`` / ``outreach.ask`` on one node."""

    def __init__(
        self,
        *,
        calls: LiveCalls,
        ledger: OutreachLedger,
        registry: SessionRegistry,
        publisher: OutreachPublisher,
        node_id: str,
        claim_s: float,
    ) -> None:
        self.calls = calls
        self.ledger = ledger
        self.registry = registry
        self.publisher = publisher
        self.node_id = node_id
        self.claim_s = claim_s
        # Decisions (idempotency keys) this node is saying now, whichever path brought them (its
        # consumers, a call's opening, the heartbeat's sweep) and under whichever event id: a
        # second path waits here without asking the store, even if a slow store let this node's
        # own claim lapse meanwhile.
        self.in_progress: set[str] = set()

    async def __call__(self, event: AnyEvent) -> None:
        if not isinstance(event, GreetEvent | AskEvent):
            return  # not outreach: nothing for this handler to do
        session = self.calls.session_of_user(event.payload.user_id)
        if session is None:
            await self._not_here(event)
            return
        await self.speak(event, session)

    async def acked(self, event: AnyEvent) -> None:
        """The consumer acked the message of an event (heard, or settled otherwise)."""
        await self.ledger.acked(event.id, self.node_id)

    async def _not_here(self, event: OutreachEventT) -> None:
        where = await self.registry.locate(event.payload.user_id)
        if where is not None and where.node_id != self.node_id:
            await self.publisher.reroute(event, where.node_id)
            return
        if not await self.ledger.user_exists(event.payload.user_id):
            raise EventUnusable("unknown_user", f"user {event.payload.user_id!r} has never called")
        claim = await self.ledger.make_pending(event, self.node_id)
        log.info("outreach %s for %s: no live call, %s", event.id, event.payload.user_id, claim)

    async def speak(self, event: OutreachEventT, session: LiveCall) -> SpeechResult | None:
        """Claim the event and say it in ``session``; None when it was not ours to say."""
        key = event.idempotency_key
        if key in self.in_progress:
            raise ClaimedElsewhere(f"event {event.id} ({key}) is being said on this node")
        self.in_progress.add(key)
        try:
            return await self._claim_and_say(event, session)
        finally:
            self.in_progress.discard(key)

    async def _claim_and_say(self, event: OutreachEventT, session: LiveCall) -> SpeechResult | None:
        claim = await self.ledger.claim(event, self.node_id, session.id, self.claim_s)
        if claim == Claim.BUSY:
            raise ClaimedElsewhere(f"event {event.id} is held by another delivery")
        if claim != Claim.CLAIMED:
            log.info("outreach %s not spoken: %s", event.id, claim)
            return None
        renewing = asyncio.create_task(self._keep_claim(event.id))
        try:
            handle = self._say(event, session.conversation)
            if await handle.wait_started():
                await self.ledger.mark(event.id, Status.SPOKEN, node_id=self.node_id, detail=session.id)
            result = await handle
        except BaseException:
            renewing.cancel()
            with contextlib.suppress(Exception):  # best effort: the lease lapses anyway
                release = self.ledger.release(event.id, self.node_id, Status.PENDING, "node stopping")
                await asyncio.shield(release)
            raise
        renewing.cancel()
        await self._settle(event, session, result)
        return result

    async def _settle(self, event: OutreachEventT, session: LiveCall, result: SpeechResult) -> None:
        if result.outcome == SpeechOutcome.PLAYED:
            await self.ledger.release(event.id, self.node_id, Status.HEARD, call_id=session.id)
            log.info("outreach %s heard by %s in call %s", event.id, event.payload.user_id, session.id)
        elif result.outcome == SpeechOutcome.INTERRUPTED:
            await self.ledger.release(event.id, self.node_id, Status.INTERRUPTED, f"heard: {result.heard}")
        elif result.reason in _DROPPED_AS:
            await self.ledger.release(event.id, self.node_id, _DROPPED_AS[result.reason])
        else:
            await self.ledger.release(event.id, self.node_id, Status.PENDING, f"not heard: {result.reason}")
            raise PromptNotHeard(event.id, result)

    async def _keep_claim(self, event_id: str) -> None:
        while True:
            await asyncio.sleep(self.claim_s / 3)
            try:
                if not await self.ledger.renew(event_id, self.node_id, self.claim_s):
                    log.warning("outreach %s: claim lost while speaking", event_id)
            except Exception as exc:  # the store blinking: the lease has two more chances
                log.warning("outreach %s: could not renew claim: %s", event_id, exc)

    def _say(self, event: OutreachEventT, conversation: Conversation) -> SpeechHandle:
        expires_in_s = None
        if event.expires_at is not None:
            expires_in_s = max(0.0, (event.expires_at - utcnow()).total_seconds())
        text, instructions = None, None
        if isinstance(event, AskEvent):
            text = event.payload.question
        elif event.payload.text:
            text = event.payload.text
        else:
            instructions = GREET_INSTRUCTIONS.format(reason=event.payload.reason or "none given")
        return conversation.say(
            text,
            instructions=instructions,
            event_id=event.id,
            expires_in_s=expires_in_s,
            # A newer event of the same kind for the same user replaces one still waiting.
            replaces=f"{event.type}:{event.payload.user_id}",
        )
