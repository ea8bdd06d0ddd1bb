"""Outreach events become spoken prompts in this node's live calls, settled only once heard.

The handler returns (so the consumer acks the event) only when the prompt was played to the end.
Anything else raises, which leaves the message unacked for the broker to redeliver — to this node
or another — while the consumer's lease keeps it hidden for as long as the prompt waits or plays:
- the user has no live call here: :class:`NotInCall`;
- the prompt was interrupted, or dropped (the call ended, no safe moment came, its words could
  not be produced): :class:`PromptNotHeard`.
An expired event never reaches here: decoding refuses it (dead-lettered as ``expired``).

This is the first cut: the registry of which node holds which call, pending prompts spoken at the
start of a user's next call, and dedup in the shared store come with the rest of outreach.
"""

from __future__ import annotations

import logging

from voiceagent.calls.session import CallManager
from voiceagent.events import AskEvent, GreetEvent
from voiceagent.events.envelope import utcnow
from voiceagent.events.eventbus import AnyEvent
from voiceagent.pipeline.speech import SpeechHandle, SpeechResult

log = logging.getLogger(__name__)

GREET_INSTRUCTIONS = "Greet the user, who is back, in one short sentence. Context: {reason}"


class NotInCall(RuntimeError):
    """No live call for the event's user on this node."""


class PromptNotHeard(RuntimeError):
    def __init__(self, event_id: str, result: SpeechResult) -> None:
        why = f" ({result.reason})" if result.reason else ""
        super().__init__(f"prompt for event {event_id} not heard: {result.outcome}{why}")
        self.result = result


class OutreachDelivery:
    """An EventConsumer handler for ``outreach.greet`` / ``outreach.ask``."""

    def __init__(self, calls: CallManager) -> None:
        self.calls = calls

    async def __call__(self, event: AnyEvent) -> None:
        if not isinstance(event, GreetEvent | AskEvent):
            return  # not outreach: nothing for this handler to do
        user_id = event.payload.user_id
        session = self.calls.session_of_user(user_id)
        if session is None:
            raise NotInCall(f"user {user_id!r} has no live call on this node")
        expires_in_s = None
        if event.expires_at is not None:
            expires_in_s = max(0.0, (event.expires_at - utcnow()).total_seconds())

        def say(text: str | None = None, instructions: str | None = None) -> SpeechHandle:
            # A newer event of the same kind for the same user replaces one still waiting.
            return session.conversation.say(
                text,
                instructions=instructions,
                event_id=event.id,
                expires_in_s=expires_in_s,
                replaces=f"{event.type}:{user_id}",
            )

        if isinstance(event, AskEvent):
            handle = say(event.payload.question)
        elif event.payload.text:
            handle = say(event.payload.text)
        else:
            handle = say(instructions=GREET_INSTRUCTIONS.format(reason=event.payload.reason or "none given"))
        result = await handle
        if not result.heard_to_the_end:
            raise PromptNotHeard(event.id, result)
        log.info("outreach %s heard by %s in call %s", event.id, user_id, session.id)
