"""Who is asking: FastAPI dependencies that admit a dashboard session or an API token.

Browsers send the session cookie by themselves, so a cookie alone never authorises a change:
POST/PUT/PATCH/DELETE also need the session's CSRF token in ``X-CSRF-Token``, and a WebSocket
opened with the cookie must come from this very origin. Bearer tokens are sent only on purpose
and need neither.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Request, WebSocket
from pydantic import BaseModel, ConfigDict
from starlette.requests import HTTPConnection

from voiceagent.auth.accounts import Role, find_token
from voiceagent.auth.audit import PRINCIPAL_KEY, AuditLog, client_address
from voiceagent.auth.limits import LoginLimiter
from voiceagent.auth.sessions import SESSION_COOKIE, SessionRecord, find_session
from voiceagent.auth.settings import AdminAuthSettings
from voiceagent.store.database import Database

__all__ = ["AdminAuth", "Identity", "Principal", "Role"]

log = logging.getLogger(__name__)

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
_DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}


class Principal(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["session", "token"]
    name: str  # the user name, or "token:<token name>"
    role: Role
    session_id: str | None = None  # the session row id (never the cookie value)


class Identity(BaseModel):
    """A principal and, for a cookie login, its session (for the CSRF token and expiry)."""

    model_config = ConfigDict(frozen=True)

    principal: Principal
    session: SessionRecord | None = None


def _unauthenticated() -> HTTPException:
    return HTTPException(
        401, "not signed in: log in, or send Authorization: Bearer <token>", {"WWW-Authenticate": "Bearer"}
    )


class AdminAuth:
    def __init__(self, database: Database, settings: AdminAuthSettings) -> None:
        self.database = database
        self.settings = settings
        self.audit = AuditLog(database)
        self.limiter = LoginLimiter(database, settings)

    async def identify(self, connection: HTTPConnection) -> Identity | None:
        """The bearer token if the request sends one (a bad one is not made good by a cookie),
        else the session cookie; None when neither is valid."""
        authorization = connection.headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() != "bearer":
                return None
            record = await find_token(self.database, token.strip())
            if record is None:
                return None
            return Identity(principal=Principal(kind="token", name=f"token:{record.name}", role=record.role))
        cookie = connection.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        session = await find_session(self.database, cookie, self.settings)
        if session is None:
            return None
        principal = Principal(kind="session", name=session.username, role=session.role, session_id=session.id)
        return Identity(principal=principal, session=session)

    async def authenticate(self, request: Request) -> Principal | None:
        identity = await self.identify(request)
        return None if identity is None else identity.principal

    async def authenticate_websocket(self, websocket: WebSocket) -> Principal | None:
        """As :meth:`authenticate`; a socket opened with the cookie must also come from a page of
        this origin (browsers send cookies on cross-site WebSockets, and CORS does not apply)."""
        identity = await self.identify(websocket)
        if identity is None:
            return None
        if identity.session is not None and not _same_origin(websocket):
            log.warning(
                "cross-origin admin WebSocket refused for %r from %s (Origin %r)",
                identity.principal.name,
                client_address(websocket),
                websocket.headers.get("origin", "")[:200],
            )
            return None
        return identity.principal

    async def admit(self, request: Request, role: Role) -> Identity:
        """The caller's identity if it may do ``request`` with ``role``: else 401 (no valid
        login, whatever the reason), or 403 (role too low, CSRF token missing or wrong)."""
        identity = await self.identify(request)
        if identity is None:
            raise _unauthenticated()
        if (
            identity.session is not None
            and request.method not in SAFE_METHODS
            and not _csrf_matches(request.headers.get(CSRF_HEADER), identity.session.csrf_token)
        ):
            raise HTTPException(403, "CSRF token missing or wrong")
        if not identity.principal.role.allows(role):
            raise HTTPException(403, f"needs the {role.value} role, not {identity.principal.role.value}")
        request.scope.setdefault("state", {})[PRINCIPAL_KEY] = identity.principal  # for the audit log
        return identity

    def require(self, role: Role) -> Callable[..., Awaitable[Principal]]:
        """A dependency admitting callers with at least ``role`` (see :meth:`admit`)."""

        async def dependency(request: Request) -> Principal:
            return (await self.admit(request, role)).principal

        return dependency

    def by_method(self) -> Callable[..., Awaitable[Principal]]:
        """A dependency for whole routers: reading needs a viewer, anything else an operator."""

        async def dependency(request: Request) -> Principal:
            role = Role.VIEWER if request.method in SAFE_METHODS else Role.OPERATOR
            return (await self.admit(request, role)).principal

        return dependency

    def router(self) -> APIRouter:
        from voiceagent.auth.api import session_router  # it builds on this module

        return session_router(self)


def _csrf_matches(sent: str | None, expected: str) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), expected.encode())


def _same_origin(websocket: WebSocket) -> bool:
    """The Origin header's host:port equals the Host header (default ports left out of both)."""
    origin, host = websocket.headers.get("origin"), websocket.headers.get("host")
    if not origin or not host:
        return False
    try:
        parts = urlsplit(origin)
        origin_port = parts.port
    except ValueError:
        return False
    if not parts.hostname or parts.scheme not in ("http", "https"):
        return False
    origin_host = parts.netloc.rpartition("@")[2].lower()
    if origin_port is not None and str(origin_port) == _DEFAULT_PORTS[parts.scheme]:
        origin_host = origin_host.rsplit(":", 1)[0]
    host = host.lower()
    default = _DEFAULT_PORTS.get(websocket.url.scheme)
    if default and host.endswith(f":{default}") and not host.endswith("]"):
        host = host.removesuffix(f":{default}")
    return origin_host == host
