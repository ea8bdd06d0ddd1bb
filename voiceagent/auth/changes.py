"""Every admitted change is audited: the ASGI middleware behind the audit log's promise.

It wraps the whole app rather than each router, so that no route can be added without it. A
change is a request whose method is not a read; it is written when the guard admitted a principal
for it (anonymous requests — a caller starting a call — are not operators' actions), as the route
described it (``describe_change``) or else as its method, route and status. Refusals by the guard
(401/403) admit nobody, so they are not written here (failed logins are, by the login route).
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voiceagent.auth.audit import CHANGE_KEY, PRINCIPAL_KEY, AuditLog
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
            if principal is None:
                return
            described = state.get(CHANGE_KEY)
            if described is not None:
                action, target, detail = described
                if status >= 400:  # described, then refused: say so
                    detail = f"{detail or ''} (HTTP {status})".lstrip()
            else:
                action, target, detail = (
                    f"{scope['method']} {_route_name(scope)}",
                    scope["path"],
                    f"HTTP {status}",
                )
            client = scope.get("client")
            await self.audit.record(
                principal, action, target=target, detail=detail, address=client[0] if client else None
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


def _route_name(scope: Scope) -> str:
    """The route's template (``/api/jobs/{job_id}``) when it names the whole path, else the path
    itself (a router included under a prefix keeps that prefix out of its template)."""
    route = scope.get("route")
    template, regex = getattr(route, "path_format", None), getattr(route, "path_regex", None)
    if isinstance(template, str) and regex is not None and regex.match(scope["path"]):
        return template
    return str(scope["path"])
