"""`POST /api/outreach` and `GET /api/outreach`: a bad body is a 400 naming each bad field and
publishes nothing; a good one is recorded, published and paged through with its stages."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.events.conftest import event_settings
from voiceagent.config import StoreSettings
from voiceagent.events import EventBus, PublishFailed
from voiceagent.events.factory import create_transport
from voiceagent.outreach.api import outreach_router
from voiceagent.outreach.ledger import OutreachLedger
from voiceagent.outreach.manual import OutreachRequest
from voiceagent.outreach.publisher import OutreachPublisher, PublishResult, UnknownUser
from voiceagent.outreach.registry import SessionRegistry
from voiceagent.store import Database, Store


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, OutreachPublisher]]:
    database = Database(StoreSettings(url=f"sqlite+aiosqlite:///{tmp_path}/va.db"))
    await database.migrate()
    settings = event_settings("inprocess")
    transport = create_transport(settings)
    await transport.start()
    for returning in ("ann", "bob"):
        await Store(database).touch_user(returning)
    ledger = OutreachLedger(database)
    publisher = OutreachPublisher(EventBus(transport, settings), ledger, SessionRegistry(database, 10), "api")
    app = FastAPI()
    app.include_router(outreach_router(publisher, ledger))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        yield client, publisher
    await transport.close()
    await database.close()


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"user_id": "ann", "type": "ask"}, "an ask needs text"),
        ({"user_id": "ann", "type": "greet"}, "a greet needs text (exact words) or a reason"),
        ({"user_id": "ann", "type": "shout", "text": "hi"}, "type: Input should be 'greet' or 'ask'"),
        ({"user_id": "ann smith", "type": "ask", "text": "hi"}, "user_id: String should match pattern"),
        (
            {"user_id": "ann", "type": "ask", "text": "hi", "expires_in_s": -1},
            "expires_in_s: Input should be",
        ),
        ({"user_id": "ann", "type": "ask", "text": "x" * 1001}, "text: String should have at most 1000"),
        ({"user_id": "ann", "type": "ask", "text": "hi", "urgent": True}, "urgent: Extra inputs"),
    ],
)
async def test_a_bad_request_names_the_field_and_publishes_nothing(
    api: tuple[httpx.AsyncClient, OutreachPublisher], body: dict[str, object], says: str
) -> None:
    client, _ = api
    response = await client.post("/api/outreach", json=body)
    assert response.status_code == 400 and says in response.json()["detail"]
    assert (await client.get("/api/outreach")).json()["total"] == 0


async def test_not_json_and_oversized_bodies_are_refused(
    api: tuple[httpx.AsyncClient, OutreachPublisher],
) -> None:
    client, _ = api
    not_json = await client.post("/api/outreach", content=b"{user_id: ann")
    assert not_json.status_code == 400 and "JSON" in not_json.json()["detail"]
    huge = await client.post("/api/outreach", content=b"x" * 20_000)
    assert huge.status_code == 413


async def test_sent_events_are_paged_newest_first_with_their_stages(
    api: tuple[httpx.AsyncClient, OutreachPublisher],
) -> None:
    client, _ = api
    sent = []
    for n in range(3):
        response = await client.post(
            "/api/outreach", json={"user_id": "ann", "type": "ask", "text": f"Q{n}?"}
        )
        assert response.status_code == 202
        sent.append(response.json()["event_id"])
    await client.post("/api/outreach", json={"user_id": "bob", "type": "greet", "reason": "back"})
    page = (await client.get("/api/outreach", params={"user_id": "ann", "limit": 2})).json()
    rest = (await client.get("/api/outreach", params={"user_id": "ann", "limit": 2, "offset": 2})).json()
    assert page["total"] == 3 and [e["id"] for e in page["items"] + rest["items"]] == sent[::-1]
    assert [s["stage"] for s in page["items"][0]["stages"]] == ["decided", "published"]
    assert (await client.get(f"/api/outreach/{sent[0]}")).json()["body"]["payload"]["question"] == "Q0?"
    assert (await client.get("/api/outreach/nope")).status_code == 404
    assert (await client.get("/api/outreach", params={"limit": 0})).status_code == 422


async def test_an_unreachable_broker_is_a_503_and_the_decision_is_kept(
    api: tuple[httpx.AsyncClient, OutreachPublisher], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, publisher = api

    async def down(*_: object, **__: object) -> str:
        raise PublishFailed("broker unreachable after 6 attempt(s)")

    monkeypatch.setattr(publisher.bus, "publish", down)
    body = {"user_id": "ann", "type": "ask", "text": "Still there?", "idempotency_key": "k1"}
    response = await client.post("/api/outreach", json=body)
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    [kept] = (await client.get("/api/outreach")).json()["items"]
    assert kept["status"] == "decided" and [s["stage"] for s in kept["stages"]] == [
        "decided",
        "publish_failed",
    ]
    monkeypatch.undo()  # the broker is back: sending the same decision again publishes it
    again = await client.post("/api/outreach", json=body)
    assert (
        again.status_code == 202 and again.json()["event_id"] == kept["id"] and not again.json()["duplicate"]
    )


async def test_a_user_who_never_called_is_a_404(api: tuple[httpx.AsyncClient, OutreachPublisher]) -> None:
    client, _ = api
    response = await client.post("/api/outreach", json={"user_id": "ghost", "type": "ask", "text": "Hi?"})
    assert response.status_code == 404 and "'ghost' has never called" in response.json()["detail"]
    assert (await client.get("/api/outreach")).json()["total"] == 0


async def test_a_batch_is_published_with_one_result_per_decision(
    api: tuple[httpx.AsyncClient, OutreachPublisher],
) -> None:
    client, publisher = api
    first = await client.post(
        "/api/outreach", json={"user_id": "ann", "type": "ask", "text": "Q?", "idempotency_key": "known"}
    )
    batch = [
        OutreachRequest(user_id=user, type="ask", text="Q?", idempotency_key=key).to_event()
        for user, key in [("ann", "known"), ("ann", "k1"), ("ghost", "k2"), ("bob", "k3"), ("bob", "k3")]
    ]
    results = await publisher.publish_many(batch)
    assert isinstance(results[0], PublishResult) and results[0].duplicate
    assert results[0].event_id == first.json()["event_id"]
    assert isinstance(results[2], UnknownUser)
    fresh = [r for r in (results[1], results[3]) if isinstance(r, PublishResult) and not r.duplicate]
    assert len(fresh) == 2
    # the same key twice in one batch is one event
    assert isinstance(results[4], PublishResult) and results[4].event_id == results[3].event_id  # type: ignore[union-attr]
    page = (await client.get("/api/outreach")).json()
    assert page["total"] == 3  # known, k1, k3
    assert all([s["stage"] for s in e["stages"]] == ["decided", "published"] for e in page["items"])
