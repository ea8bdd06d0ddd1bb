"""Typed event envelopes and the one way to turn bytes into an event (or a reason it is not one).

Every event travels as UTF-8 JSON: ``{"schema_version", "id", "idempotency_key", "type",
"created_at", "expires_at", "payload"}``. The ``type`` picks the payload model, so a consumer gets
either a fully validated event or an :class:`EventRejected` naming why, never a half-parsed dict.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

SCHEMA_VERSION: Literal[1] = 1
# RocketMQ accepts 4 MiB bodies; events are small commands, so anything this big is a bug upstream.
MAX_BODY_BYTES = 64 * 1024


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GreetPayload(_Model):
    """Say hello proactively, e.g. a returning user whose last call ended unresolved."""

    user_id: str = Field(min_length=1, max_length=64)
    reason: str = Field("", max_length=500)
    text: str | None = Field(None, max_length=1000, description="exact words; None lets the agent phrase it")
    locale: str = "en"


class AskPayload(_Model):
    """Ask the user a question their recent intent suggests."""

    user_id: str = Field(min_length=1, max_length=64)
    question: str = Field(min_length=1, max_length=1000)
    intent: str = Field("", max_length=200)
    locale: str = "en"


class KnowledgeChangedPayload(_Model):
    document_id: str = Field(min_length=1, max_length=256)
    change: Literal["added", "updated", "deleted"]
    source: str = Field("", max_length=2000, description="where to read the document from")
    checksum: str = Field("", max_length=128)


class JobQueuedPayload(_Model):
    """A wake-up for the workers of one kind: the job itself (and its state) is in the store."""

    job_id: str = Field(min_length=1, max_length=32)
    kind: str = Field(min_length=1, max_length=64)


class _Envelope(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    # Publishers set this to something stable (e.g. "greet:alice:2026-11-25") so a retried
    # publish and a redelivery are recognised as the same event.
    idempotency_key: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=128)
    created_at: UtcDatetime = Field(default_factory=utcnow)
    expires_at: UtcDatetime | None = None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or utcnow()) >= self.expires_at


class GreetEvent(_Envelope):
    type: Literal["outreach.greet"] = "outreach.greet"
    payload: GreetPayload


class AskEvent(_Envelope):
    type: Literal["outreach.ask"] = "outreach.ask"
    payload: AskPayload


class KnowledgeChangedEvent(_Envelope):
    type: Literal["knowledge.changed"] = "knowledge.changed"
    payload: KnowledgeChangedPayload


class JobQueuedEvent(_Envelope):
    type: Literal["job.queued"] = "job.queued"
    payload: JobQueuedPayload


AnyEvent = GreetEvent | AskEvent | KnowledgeChangedEvent | JobQueuedEvent
Event = Annotated[AnyEvent, Field(discriminator="type")]
EVENT_TYPES: tuple[str, ...] = ("outreach.greet", "outreach.ask", "knowledge.changed", "job.queued")
_EVENT = TypeAdapter[AnyEvent](Event)


class EventRejected(ValueError):
    """A message that is not a usable event; ``reason`` is a short machine-friendly code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def encode(event: AnyEvent) -> bytes:
    body = event.model_dump_json().encode()
    if len(body) > MAX_BODY_BYTES:
        raise EventRejected("oversized", f"{len(body)} bytes > {MAX_BODY_BYTES}")
    return body


def decode(body: bytes, now: datetime | None = None) -> AnyEvent:
    """Validate a message body; raise EventRejected with the first reason it cannot be used."""
    if len(body) > MAX_BODY_BYTES:
        raise EventRejected("oversized", f"{len(body)} bytes > {MAX_BODY_BYTES}")
    try:
        data: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventRejected("not_json", str(exc)) from None
    if not isinstance(data, dict):
        raise EventRejected("not_an_object", f"top level is {type(data).__name__}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise EventRejected("schema_version", f"got {version!r}, this node reads {SCHEMA_VERSION}")
    if data.get("type") not in EVENT_TYPES:
        raise EventRejected("unknown_type", f"{data.get('type')!r} is not one of {', '.join(EVENT_TYPES)}")
    try:
        event = _EVENT.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise EventRejected("invalid", f"{where}: {first['msg']} ({exc.error_count()} problem(s))") from None
    if event.expired(now):
        raise EventRejected("expired", f"expired at {event.expires_at:%Y-%m-%dT%H:%M:%SZ}")
    return event


def expiring_in(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)
