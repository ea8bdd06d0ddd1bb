"""`/api/admin/…` (the dashboard's JSON API, in the OpenAPI docs), the live WebSocket, and the
pages under `/admin`, which read nothing but this API.

Every route here needs a signed-in user or an API token: reads need *viewer*, changes need
*operator* (and, from a browser session, the CSRF header). Operators' changes go to the audit log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, WebSocket
from fastapi.responses import FileResponse

from voiceagent.admin.live import LiveHub
from voiceagent.admin.queries import AdminQueries
from voiceagent.admin.schemas import (
    AuditEntry,
    CallDetail,
    CallSummary,
    Charts,
    IntentChange,
    IntentView,
    KnowledgeOverview,
    Overview,
    Page,
    UserDetail,
    UserSummary,
)
from voiceagent.auth.audit import describe_change
from voiceagent.auth.guard import AdminAuth, Principal
from voiceagent.knowledge.documents import DocumentStateName
from voiceagent.knowledge.sources.api import DOC_ID, delete_document
from voiceagent.knowledge.submissions import DocumentSubmitter, Submitted
from voiceagent.outreach.api import SEND_BODY, SEND_RESPONSES, send_from_request
from voiceagent.outreach.intent_store import IntentStore
from voiceagent.outreach.ledger import EventRecord, OutreachLedger, Status
from voiceagent.outreach.manual import USER_ID_PATTERN
from voiceagent.outreach.publisher import OutreachPublisher, PublishResult
from voiceagent.server.errors import parse_json_body
from voiceagent.store.repository import NotFound

PAGES_DIR = FilePath(__file__).resolve().parent.parent / "web" / "static" / "admin"
# The pages load only their own files: a transcript that says <script> stays text.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
Search = Annotated[str | None, Query(max_length=200, description="text anywhere in the transcript or ids")]
Limit = Annotated[int, Query(ge=1, le=200)]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]
UserId = Annotated[str | None, Query(min_length=1, max_length=64, pattern=USER_ID_PATTERN)]
CallId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Window = Annotated[float, Query(gt=0, le=24 * 90, description="hours")]


@dataclass(frozen=True)
class AdminServices:
    """What the dashboard reads and changes; each node hands in its own."""

    queries: AdminQueries
    ledger: OutreachLedger
    publisher: OutreachPublisher
    intents: IntentStore
    documents: DocumentSubmitter
    hub: LiveHub


def admin_router(
    auth: AdminAuth, services: AdminServices, guard: Callable[..., Awaitable[Principal]]
) -> APIRouter:
    """``guard`` is ``auth.by_method()``, the one the app uses for every guarded router."""
    api = APIRouter(prefix="/api/admin", tags=["admin"], dependencies=[Depends(guard)])
    queries = services.queries

    @api.get("/overview", response_model=Overview, summary="Live calls, latency, today's outreach")
    async def overview(window_h: Window = 24.0) -> Overview:
        return await queries.overview(window_h)

    @api.get("/calls", response_model=Page[CallSummary], summary="Calls, newest first, filtered")
    async def calls(
        q: Search = None,
        user_id: UserId = None,
        node_id: Annotated[str | None, Query(max_length=128)] = None,
        live: bool | None = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[CallSummary]:
        return await queries.calls(
            q=q, user_id=user_id, node_id=node_id, live=live, limit=limit, offset=offset
        )

    @api.get("/calls/{call_id}", response_model=CallDetail, summary="A call and its transcript")
    async def call(call_id: CallId) -> CallDetail:
        try:
            return await queries.call(call_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @api.get("/users", response_model=Page[UserSummary], summary="Users, most recently seen first")
    async def users(q: Search = None, limit: Limit = 50, offset: Offset = 0) -> Page[UserSummary]:
        return await queries.users(q=q, limit=limit, offset=offset)

    @api.get("/users/{user_id}", response_model=UserDetail, summary="A user, their intents and calls")
    async def user(user_id: Annotated[str, Path(max_length=64, pattern=USER_ID_PATTERN)]) -> UserDetail:
        try:
            return await queries.user(user_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @api.post(
        "/intents/{record_id}",
        response_model=IntentView,
        summary="Resolve, dismiss or reopen an intent (operator)",
        openapi_extra={
            "requestBody": {"content": {"application/json": {"schema": IntentChange.model_json_schema()}}}
        },
    )
    async def set_intent(record_id: Annotated[int, Path(ge=1, le=2**62)], request: Request) -> IntentView:
        change = parse_json_body(IntentChange, await _small_body(request), "intent change")
        try:
            await services.intents.set_status(record_id, change.status)
            view = await queries.intent(record_id)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None
        describe_change(request, f"intent.{change.status}", target=f"{view.user_id}/{view.intent}")
        return view

    @api.get("/outreach", response_model=Page[EventRecord], summary="Outreach events and their stages")
    async def outreach(
        status: Status | None = None,
        type: Literal["greet", "ask"] | None = None,
        user_id: UserId = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[EventRecord]:
        items, total = await services.ledger.history(
            user_id=user_id, status=status, type=type, limit=limit, offset=offset
        )
        return Page[EventRecord](items=items, total=total, limit=limit, offset=offset)

    @api.post(
        "/outreach",
        status_code=202,
        response_model=PublishResult,
        summary="Send a greet/ask (operator)",
        responses=SEND_RESPONSES,
        openapi_extra=SEND_BODY,
    )
    async def send(request: Request) -> PublishResult:
        return (await send_from_request(services.publisher, request))[1]

    @api.get("/knowledge", response_model=KnowledgeOverview, summary="Documents and their ingestion")
    async def knowledge(
        state: DocumentStateName | None = None, limit: Limit = 50, offset: Offset = 0
    ) -> KnowledgeOverview:
        return await queries.knowledge(state=state, limit=limit, offset=offset)

    @api.delete(
        "/knowledge/documents/{doc_id:path}",
        status_code=202,
        response_model=Submitted,
        summary="Delete a document (operator)",
    )
    async def delete(doc_id: Annotated[str, Path(pattern=DOC_ID)], request: Request) -> Submitted:
        return await delete_document(services.documents, doc_id, request)

    @api.get(
        "/charts", response_model=Charts, summary="Latency per stage, intents over time, outreach funnel"
    )
    async def charts(window_h: Window = 24.0) -> Charts:
        return await queries.charts(window_h)

    @api.get("/audit", response_model=Page[AuditEntry], summary="Who did what, newest first")
    async def audit(
        action: Annotated[
            str | None, Query(max_length=64, description="starts with: `login` finds `login.failed` too")
        ] = None,
        actor: Annotated[
            str | None, Query(max_length=128, description="a user, or `token:<name>`, or `cli`")
        ] = None,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> Page[AuditEntry]:
        items, total = await auth.audit.page(limit=limit, offset=offset, action=action, actor=actor)
        return Page[AuditEntry](items=items, total=total, limit=limit, offset=offset)

    router = APIRouter()
    router.include_router(api)

    @router.websocket("/api/admin/live")
    async def live(websocket: WebSocket) -> None:
        """Live updates (LiveUpdate JSON messages); the same sign-in as the API."""
        principal = await auth.authenticate_websocket(websocket)
        if principal is None:
            await websocket.close(1008, "not signed in")  # before accept: the handshake gets a 403
            return

        async def still_signed_in() -> bool:
            return await auth.authenticate_websocket(websocket) is not None

        await services.hub.serve(websocket, principal.name, still_signed_in)

    @router.get("/admin/login", include_in_schema=False)
    async def login_page() -> FileResponse:
        return FileResponse(PAGES_DIR / "login.html", headers=PAGE_HEADERS)

    @router.get("/admin", include_in_schema=False)
    @router.get("/admin/{_:path}", include_in_schema=False)
    async def dashboard_page() -> FileResponse:
        return FileResponse(PAGES_DIR / "index.html", headers=PAGE_HEADERS)

    return router


MAX_BODY_BYTES = 4096


async def _small_body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise HTTPException(413, f"body larger than {MAX_BODY_BYTES} bytes")
    return body
