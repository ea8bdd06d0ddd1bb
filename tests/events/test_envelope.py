"""Envelopes: what decodes, and the reason code for everything that does not."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from voiceagent.events import (
    AskEvent,
    AskPayload,
    EventRejected,
    GreetEvent,
    GreetPayload,
    KnowledgeChangedEvent,
)
from voiceagent.events.envelope import MAX_BODY_BYTES, decode, encode


def test_round_trip_keeps_every_field() -> None:
    event = GreetEvent(
        idempotency_key="greet:alice:2026-11-25",
        expires_at=datetime(2099, 1, 1, tzinfo=UTC),
        payload=GreetPayload(user_id="alice", reason="left mid-booking", text="Hi again!", locale="en"),
    )
    assert decode(encode(event)) == event


def test_type_selects_the_payload_model() -> None:
    body = json.dumps(
        {
            "schema_version": 1,
            "type": "knowledge.changed",
            "payload": {"document_id": "faq/1", "change": "added"},
        }
    ).encode()
    event = decode(body)
    assert isinstance(event, KnowledgeChangedEvent) and event.payload.change == "added"
    assert event.id and event.idempotency_key and event.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe", "not_json"),
        (b"[1, 2]", "not_an_object"),
        (b'{"schema_version": 2, "type": "outreach.greet", "payload": {}}', "schema_version"),
        (b'{"type": "outreach.greet", "payload": {}}', "schema_version"),
        (b'{"schema_version": 1, "type": "billing.charge", "payload": {}}', "unknown_type"),
        (b'{"schema_version": 1, "type": "outreach.ask", "payload": {"user_id": "u"}}', "invalid"),
        (b'{"schema_version": 1, "type": "outreach.greet", "payload": {"user_id": "u"}, "x": 1}', "invalid"),
        (b" " * (MAX_BODY_BYTES + 1), "oversized"),
    ],
)
def test_unusable_bodies_are_rejected_with_a_reason(body: bytes, reason: str) -> None:
    with pytest.raises(EventRejected) as err:
        decode(body)
    assert err.value.reason == reason and err.value.detail


def test_expired_events_are_rejected_on_receipt() -> None:
    event = GreetEvent(payload=GreetPayload(user_id="u"), expires_at=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(EventRejected, match="expired"):
        decode(encode(event))
    assert decode(encode(event), now=datetime.now(UTC) - timedelta(seconds=5)) == event


def test_oversized_event_is_refused_before_publishing() -> None:
    event = AskEvent(payload=AskPayload.model_construct(user_id="u", question="x" * MAX_BODY_BYTES))
    with pytest.raises(EventRejected, match="oversized"):
        encode(event)


def test_payloads_are_validated_at_construction() -> None:
    with pytest.raises(ValidationError):
        GreetPayload(user_id="")
    with pytest.raises(ValidationError):
        GreetPayload(user_id="u", unexpected=1)  # type: ignore[call-arg]
