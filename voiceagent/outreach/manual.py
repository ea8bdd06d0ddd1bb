"""An operator's outreach, by hand: one request model for `POST /api/outreach` and
`voiceagent outreach send`, validated the same way, turned into the same event."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from voiceagent.events import AskEvent, AskPayload, GreetEvent, GreetPayload
from voiceagent.events.envelope import expiring_in

USER_ID_PATTERN = r"^[A-Za-z0-9_.@:-]+$"  # the same ids a caller may claim (server/calls_api.py)


class OutreachRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=64, pattern=USER_ID_PATTERN)
    type: Literal["greet", "ask"]
    text: str | None = Field(
        None, min_length=1, max_length=1000, description="greet: the exact words; ask: the question"
    )
    reason: str = Field("", max_length=500, description="greet without text: what the agent greets about")
    intent: str = Field("", max_length=200)
    locale: str = Field("en", max_length=16)
    expires_in_s: float = Field(3600.0, gt=0, le=30 * 86400, description="never spoken after this")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=128, description="the same key twice is one event (default: new)"
    )

    @model_validator(mode="after")
    def _what_to_say(self) -> OutreachRequest:
        if self.type == "ask" and not self.text:
            raise ValueError("an ask needs text: the question")
        if self.type == "greet" and not (self.text or self.reason):
            raise ValueError("a greet needs text (exact words) or a reason (the agent phrases it)")
        return self

    def to_event(self) -> GreetEvent | AskEvent:
        key = self.idempotency_key or f"manual:{uuid.uuid4().hex}"
        expires_at = expiring_in(self.expires_in_s)
        if self.type == "ask":
            assert self.text is not None  # checked above
            ask = AskPayload(user_id=self.user_id, question=self.text, intent=self.intent, locale=self.locale)
            return AskEvent(idempotency_key=key, expires_at=expires_at, payload=ask)
        greet = GreetPayload(user_id=self.user_id, reason=self.reason, text=self.text, locale=self.locale)
        return GreetEvent(idempotency_key=key, expires_at=expires_at, payload=greet)
