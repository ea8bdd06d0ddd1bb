"""Signaling for calls (one POST with the offer, the answer back) and the call page."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from voiceagent.calls.session import EnginesLoading
from voiceagent.server.errors import parse_json_body

if TYPE_CHECKING:
    from voiceagent.calls.session import CallManager

WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "static"


class OfferRequest(BaseModel):
    sdp: str = Field(min_length=1)
    type: Literal["offer"]
    user_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@:-]+$")


class AnswerResponse(BaseModel):
    call_id: str
    sdp: str
    type: Literal["answer"] = "answer"


class ActiveCall(BaseModel):
    call_id: str
    user_id: str
    state: str


def calls_router(manager: CallManager, max_offer_bytes: int) -> APIRouter:
    router = APIRouter()

    @router.post(
        "/api/calls",
        response_model=AnswerResponse,
        status_code=201,
        tags=["calls"],
        summary="Start a call: send a WebRTC offer (ICE gathered), get the answer",
        responses={400: {}, 413: {}, 503: {"description": "call limit reached or models loading"}},
    )
    async def start_call(request: Request) -> AnswerResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_offer_bytes:
            raise HTTPException(413, f"offer larger than {max_offer_bytes} bytes")
        body = await request.body()
        if len(body) > max_offer_bytes:
            raise HTTPException(413, f"offer larger than {max_offer_bytes} bytes")
        offer = parse_json_body(OfferRequest, body, "offer request")
        from voiceagent.transport.webrtc import SignalingError

        try:
            session, answer = await manager.start(offer.sdp, offer.type, offer.user_id)
        except SignalingError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        except EnginesLoading as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from None
        return AnswerResponse(call_id=session.id, sdp=answer)

    @router.delete("/api/calls/{call_id}", status_code=204, tags=["calls"], summary="Hang up")
    async def hang_up(call_id: str) -> Response:
        if not await manager.hang_up(call_id):
            raise HTTPException(404, f"no live call {call_id!r}")
        return Response(status_code=204)

    @router.get("/api/calls", response_model=list[ActiveCall], tags=["calls"], summary="Live calls here")
    async def live_calls() -> list[ActiveCall]:
        return [
            ActiveCall(call_id=s.id, user_id=s.user_id, state=s.conversation.state.value)
            for s in manager.sessions.values()
        ]

    @router.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/call")

    @router.get("/call", include_in_schema=False)
    async def call_page() -> FileResponse:
        return FileResponse(WEB_DIR / "call.html", headers={"Cache-Control": "no-store"})

    return router
