"""Every admitted change is audited: the ASGI middleware behind the audit log's promise.

It wraps the whole app rather than each router, so that no route can be added without it. A
change is a request whose method is not a read; it is written when the guard admitted a principal
for it (anonymous requests — a caller starting a call — are not operators' actions) and the route
wrote no more specific entry itself. Refusals by the guard (401/403) never reach this point.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voiceagent.auth.audit import AUDITED_KEY, PRINCIPAL_KEY, AuditLog
from voiceagent.auth.guard import SAFE_METHODS


class AuditChanges:
    def __init__(self, app: ASGIApp, audit: AuditLog) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})  # shared with every Request of it
        written = False

        async def write(status: int) -> None:
            nonlocal written
            written = True
            principal = state.get(PRINCIPAL_KEY)
            if principal is None or state.get(AUDITED_KEY):
                return
            route = scope.get("route")
            client = scope.get("client")
            await self.audit.record(
                principal,
                f"{scope['method']} {getattr(route, 'path_format', None) or scope['path']}",
                target=scope["path"],
                detail=f"HTTP {status}",
                address=client[0] if client else None,
            )

        async def written_before_answering(message: Message) -> None:
            # Before the client hears the answer, so whoever reads the log next finds the entry.
            if message["type"] == "http.response.start" and not written:
                await write(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, written_before_answering)
        finally:
            if not written:  # the route raised before answering: the server answers 500
                await write(500)
