"""`POST /api/outreach` (an operator's greet/ask) and `GET /api/outreach` (each event's life)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from voiceagent.auth.audit import describe_change
from voiceagent.events import PublishFailed
from voiceagent.outreach.ledger import EventRecord, OutreachLedger, Status
from voiceagent.outreach.manual import USER_ID_PATTERN, OutreachRequest
from voiceagent.outreach.publisher import OutreachPublisher, PublishResult, UnknownUser
from voiceagent.server.errors import parse_json_body

MAX_BODY_BYTES = 16 * 1024


SEND_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "the body names each bad field"},
    404: {"description": "the user has never called"},
    413: {"description": "body too large"},
    503: {"description": "the broker is unreachable; nothing was published"},
}
SEND_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": OutreachRequest.model_json_schema()}},
    }
}


async def send_from_request(
    publisher: OutreachPublisher, request: Request
) -> tuple[OutreachRequest, PublishResult]:
    """An operator's greet/ask from an HTTP body, published; refusals as HTTP errors."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
    outreach = parse_json_body(OutreachRequest, body, "outreach request")
    describe_change(request, f"outreach.{outreach.type}", target=outreach.user_id)
    try:
        result = await publisher.publish(outreach.to_event())
    except UnknownUser as exc:
        raise HTTPException(404, str(exc)) from None
    except PublishFailed as exc:
        raise HTTPException(503, f"not published: {exc}", headers={"Retry-After": "5"}) from None
    describe_change(request, f"outreach.{outreach.type}", target=outreach.user_id, detail=result.event_id)
    return outreach, result


class EventPage(BaseModel):
    items: list[EventRecord]
    total: int
    limit: int
    offset: int


def outreach_router(publisher: OutreachPublisher, ledger: OutreachLedger) -> APIRouter:
    router = APIRouter(tags=["outreach"])

    @router.post(
        "/api/outreach",
        status_code=202,
        response_model=PublishResult,
        summary="Send a greet/ask to a user: spoken in their live call, or when they next call",
        responses=SEND_RESPONSES,
        openapi_extra=SEND_BODY,
    )
    async def send(request: Request) -> PublishResult:
        return (await send_from_request(publisher, request))[1]

    @router.get("/api/outreach", response_model=EventPage, summary="Outreach events, newest first")
    async def history(
        user_id: str | None = Query(None, min_length=1, max_length=64, pattern=USER_ID_PATTERN),
        status: Status | None = None,
        limit: int = Query(50, ge=1, le=500),
        offset: int = Query(0, ge=0),
    ) -> EventPage:
        items, total = await ledger.history(user_id=user_id, status=status, limit=limit, offset=offset)
        return EventPage(items=items, total=total, limit=limit, offset=offset)

    @router.get(
        "/api/outreach/{event_id}",
        response_model=EventRecord,
        summary="One event and its life",
        responses={404: {}},
    )
    async def one(event_id: str) -> EventRecord | JSONResponse:
        record = await ledger.get(event_id)
        if record is None:
            raise HTTPException(404, f"no outreach event {event_id!r}")
        return record

    return router
