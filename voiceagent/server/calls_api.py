"""Signaling for calls (one POST with the offer, the answer back) and the call page.

Who is calling comes inside an ``identity_token`` the host application signed (auth/callers.py);
a bare ``user_id`` is believed only where ``security.callers.allow_unsigned`` says so. The token
is never logged: it is a credential until it expires.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import BaseModel, Field

from voiceagent.auth.callers import MAX_TOKEN_CHARS, CallerVerifier, IdentityRefused
from voiceagent.calls.session import EnginesLoading, Identity
from voiceagent.server.bodies import BodyTooLarge, read_limited
from voiceagent.server.errors import parse_json_body

if TYPE_CHECKING:
    from voiceagent.calls.session import CallManager

log = logging.getLogger(__name__)
WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "static"
UNSIGNED_REFUSED = "user_id must come inside a signed identity_token (security.callers)"


class OfferRequest(BaseModel):
    sdp: str = Field(min_length=1)
    type: Literal["offer"]
    user_id: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.@:-]+$")
    identity_token: str | None = Field(None, min_length=1, max_length=MAX_TOKEN_CHARS)


class AnswerResponse(BaseModel):
    call_id: str
    sdp: str
    type: Literal["answer"] = "answer"


class ActiveCall(BaseModel):
    call_id: str
    user_id: str
    identity: Identity
    state: str


def caller_of(offer: OfferRequest, verifier: CallerVerifier) -> tuple[str | None, Identity]:
    """Who the offer says is calling, and how that is known; HTTPException when it cannot be
    believed (401: an invalid token, or a bare user_id where those are refused)."""
    if offer.identity_token is not None:
        try:
            subject = verifier.verify(offer.identity_token)
        except IdentityRefused as exc:
            log.info("call refused: identity_token %s", exc.reason)
            raise HTTPException(401, f"identity_token refused: {exc.reason}") from None
        if offer.user_id is not None and offer.user_id != subject:
            raise HTTPException(400, "user_id is not the identity_token's subject")
        return subject, "signed"
    if offer.user_id is not None:
        if not verifier.allow_unsigned:
            raise HTTPException(401, UNSIGNED_REFUSED)
        return offer.user_id, "claimed"
    return None, "anonymous"


def calls_router(
    manager: CallManager,
    max_offer_bytes: int,
    verifier: CallerVerifier,
    viewer: Callable[..., Awaitable[object]],
) -> APIRouter:
    """``viewer`` guards what only operators may read (who is in a call): the dashboard's sign-in.
    Starting and hanging up a call are the caller's own (the call id is the caller's secret)."""
    router = APIRouter()

    @router.post(
        "/api/calls",
        response_model=AnswerResponse,
        status_code=201,
        tags=["calls"],
        summary="Start a call: send a WebRTC offer (ICE gathered), get the answer",
        responses={
            400: {},
            401: {"description": "identity_token refused, or a user_id without one (security.callers)"},
            413: {},
            503: {"description": "call limit reached or models loading"},
        },
    )
    async def start_call(request: Request) -> AnswerResponse:
        try:
            body = await read_limited(request, max_offer_bytes)
        except BodyTooLarge:
            raise HTTPException(413, f"offer larger than {max_offer_bytes} bytes") from None
        offer = parse_json_body(OfferRequest, body, "offer request")
        user_id, identity = caller_of(offer, verifier)
        from voiceagent.transport.webrtc import SignalingError

        try:
            session, answer = await manager.start(offer.sdp, offer.type, user_id, identity)
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

    @router.get(
        "/api/calls",
        response_model=list[ActiveCall],
        tags=["calls"],
        summary="Live calls here (signed-in viewers)",
        dependencies=[Depends(viewer)],
    )
    async def live_calls() -> list[ActiveCall]:
        return [
            ActiveCall(call_id=s.id, user_id=s.user_id, identity=s.identity, state=s.conversation.state.value)
            for s in manager.sessions.values()
        ]

    @router.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/call")

    @router.get("/call", include_in_schema=False)
    async def call_page() -> FileResponse:
        return FileResponse(WEB_DIR / "call.html", headers={"Cache-Control": "no-store"})

    return router
