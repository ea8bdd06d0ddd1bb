"""The rules that turn what the store knows into outreach decisions (events), and nothing else:
no I/O, the clock passed in, so the same inputs always give the same events and keys.

Idempotency keys are what make the scheduler safe to run again and again: the publisher sends a
key once, however many runs (or schedulers) decide it.

- ``greet:{user}:{intent}:{date the intent record was last updated}`` — one prompt per open
  intent; found again on a later day (fresh evidence), it may be spoken again.
- ``checkin:{call_id}`` — one check-in per call, however long the silence lasts.

Greet or ask: a user who is not in a call gets the intent's ``greet`` template, a
:class:`GreetEvent` spoken when they come back. A user in a live call right now (a registry row
with a fresh heartbeat) gets its ``ask`` template instead, an :class:`AskEvent`: "welcome back"
said mid-call is wrong, a follow-up question is natural. Both forms share the greet key, so an
intent gets one prompt whichever form was decided first.

Missing variables: templates are filled from the user's ``display_name`` (``{name}``, falling back
to the user id) and ``attributes`` (empty values count as missing). If the preferred template
needs a variable the user lacks, the other template of the intent is tried (and the event takes
its form); if both lack one, the decision is skipped and logged with the TemplateError, never
sent half-filled. A later run retries it, so adding the attribute is enough.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from voiceagent.config import OutreachRules
from voiceagent.events.envelope import AskEvent, AskPayload, GreetEvent, GreetPayload
from voiceagent.outreach.intents import Intent, Intents, TemplateError

log = logging.getLogger(__name__)

KEY_MAX = 128  # the envelope's idempotency_key limit
CHECKIN_INTENT = "checkin"

OutreachDecision = GreetEvent | AskEvent


class OpenIntent(Protocol):
    """What the rule reads of an intent record (IntentStore.open_intents rows)."""

    @property
    def user_id(self) -> str: ...
    @property
    def intent(self) -> str: ...
    @property
    def confidence(self) -> float: ...
    @property
    def updated_at(self) -> datetime: ...


@dataclass(frozen=True)
class UserView:
    id: str
    display_name: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LiveCall:
    call_id: str
    user_id: str
    heartbeat_at: datetime
    last_activity_at: datetime


@dataclass(frozen=True)
class Skip:
    """A decision the rule declined to make, and why (counted in the run's stats)."""

    reason: Literal["unknown_intent", "template"]
    detail: str


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def bounded_key(prefix: str, *parts: str) -> str:
    """``prefix:part:part``, or ``prefix:#<sha256>`` when that would exceed the envelope limit."""
    key = ":".join((prefix, *parts))
    if len(key) <= KEY_MAX:
        return key
    return f"{prefix}:#{hashlib.sha256(key.encode()).hexdigest()}"


def greet_key(user_id: str, intent: str, updated_at: datetime) -> str:
    return bounded_key("greet", user_id, intent, _utc(updated_at).date().isoformat())


def checkin_key(call_id: str) -> str:
    return bounded_key("checkin", call_id)


def template_values(user_id: str, user: UserView | None) -> dict[str, Any]:
    """``{name}`` and the user's attributes; None, blank and nested values count as missing."""
    attributes = dict(user.attributes) if user is not None else {}
    values = {
        key: value
        for key, value in attributes.items()
        if isinstance(value, str | int | float) and not isinstance(value, bool) and str(value).strip()
    }
    display = (user.display_name or "").strip() if user is not None else ""
    values["name"] = display or values.get("name") or user_id
    return values


def decide_returning(
    record: OpenIntent,
    intents: Intents,
    user: UserView | None,
    *,
    in_call: bool,
    rules: OutreachRules,
    now: datetime,
) -> OutreachDecision | Skip:
    """The prompt for one open intent: a greeting for later, or a question during a live call."""
    try:
        intent = intents.get(record.intent)
    except KeyError:
        return Skip("unknown_intent", f"intent {record.intent!r} is not in the intents file")
    values = template_values(record.user_id, user)
    order: tuple[Literal["greet", "ask"], ...] = ("ask", "greet") if in_call else ("greet", "ask")
    errors: list[str] = []
    for form in order:
        try:
            text = intent.render(form, **values)
            return _event(form, record, intent, text, rules, now)
        except (TemplateError, ValidationError) as exc:
            errors.append(str(exc).splitlines()[0])
    detail = f"user {record.user_id}: " + "; ".join(errors)
    log.debug("no prompt for open intent %s: %s", record.intent, detail)  # the job logs a summary
    return Skip("template", detail)


def _event(
    form: Literal["greet", "ask"],
    record: OpenIntent,
    intent: Intent,
    text: str,
    rules: OutreachRules,
    now: datetime,
) -> OutreachDecision:
    common: dict[str, Any] = {
        "idempotency_key": greet_key(record.user_id, record.intent, record.updated_at),
        "created_at": now,
        "expires_at": now + timedelta(seconds=rules.greet_expires_s),
    }
    if form == "ask":
        return AskEvent(
            payload=AskPayload(user_id=record.user_id, question=text, intent=intent.name), **common
        )
    reason = f"open intent {intent.name} (confidence {record.confidence:.2f}): {intent.description}"
    return GreetEvent(payload=GreetPayload(user_id=record.user_id, reason=reason[:500], text=text), **common)


def is_fresh(call: LiveCall, *, stale_after_s: float, now: datetime) -> bool:
    """The node holding the call still heartbeats (a dead node's rows linger until swept)."""
    return now - _utc(call.heartbeat_at) < timedelta(seconds=stale_after_s)


def decide_checkins(
    calls: Iterable[LiveCall], *, rules: OutreachRules, stale_after_s: float, now: datetime
) -> list[AskEvent]:
    """One check-in for each live call silent for ``checkin_after_silence_s`` or longer."""
    silence = timedelta(seconds=rules.checkin_after_silence_s)
    return [
        AskEvent(
            payload=AskPayload(user_id=call.user_id, question=rules.checkin_text, intent=CHECKIN_INTENT),
            idempotency_key=checkin_key(call.call_id),
            created_at=now,
            expires_at=now + timedelta(seconds=rules.checkin_expires_s),
        )
        for call in calls
        if is_fresh(call, stale_after_s=stale_after_s, now=now)
        and now - _utc(call.last_activity_at) >= silence
    ]
