"""The session API: log in (a cookie and a CSRF token back), see the current login, log out."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from voiceagent.auth.accounts import Role, check_login
from voiceagent.auth.audit import client_address, describe_change
from voiceagent.auth.guard import AdminAuth, Principal
from voiceagent.auth.passwords import MAX_PASSWORD_LENGTH, dummy_hash
from voiceagent.auth.sessions import SESSION_COOKIE, SIGNED_IN_COOKIE, open_session, revoke_session
from voiceagent.server.bodies import BodyTooLarge, read_limited
from voiceagent.server.errors import parse_json_body
from voiceagent.store.records import UtcDatetime

log = logging.getLogger(__name__)

MAX_LOGIN_BYTES = 4096


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD_LENGTH)

    @field_validator("username")
    @classmethod
    def _printable(cls, username: str) -> str:
        # No user has such a name, and PostgreSQL cannot even compare text holding NUL.
        if any(ord(c) < 32 or ord(c) == 127 for c in username):
            raise ValueError("must not contain control characters")
        return username


class SessionInfo(BaseModel):
    username: str  # or "token:<name>" for an API token
    role: Role
    csrf_token: str  # send it as X-CSRF-Token on every change; "" for an API token
    expires_at: UtcDatetime | None  # the absolute end of the login; None for an API token


async def _read_login(request: Request) -> LoginRequest:
    """The credentials, read no further than the size limit. JSON only: a cross-site HTML form
    cannot send ``application/json``, so it cannot log a victim into the attacker's account."""
    try:
        body = await read_limited(request, MAX_LOGIN_BYTES)
    except BodyTooLarge:
        raise HTTPException(413, f"login request larger than {MAX_LOGIN_BYTES} bytes") from None
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise HTTPException(415, "send the login as application/json")
    return parse_json_body(LoginRequest, body, "login request")


def session_router(auth: AdminAuth) -> APIRouter:
    settings = auth.settings
    dummy_hash()  # made now, so the first unknown user's login takes no longer than the rest
    router = APIRouter(prefix="/api/admin", tags=["admin"])

    def secure(request: Request) -> bool:
        return settings.cookie_secure == "always" or (
            settings.cookie_secure == "auto" and request.url.scheme == "https"
        )

    login_body: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": LoginRequest.model_json_schema()}},
        }
    }

    @router.post(
        "/session",
        response_model=SessionInfo,
        summary="Log in: sets the va_session cookie; returns the CSRF token for changes",
        responses={
            400: {},
            401: {"description": "wrong user name or password"},
            413: {},
            415: {},
            429: {"description": "too many failed logins; see Retry-After"},
        },
        openapi_extra=login_body,
    )
    async def login(request: Request, response: Response) -> SessionInfo:
        credentials = await _read_login(request)
        account, address = credentials.username[:64], client_address(request)
        wait = await auth.limiter.attempt(account, address)
        if wait is not None:
            log.warning("admin login for %r from %s refused: too many failures", account, address)
            await auth.audit.record(None, "login.limited", actor=account, address=address)
            raise HTTPException(
                429, f"too many failed logins: try again in {wait} s", headers={"Retry-After": str(wait)}
            )
        user = await check_login(auth.database, credentials.username, credentials.password)
        if user is None:
            log.warning("failed admin login for %r from %s", account, address)
            await auth.audit.record(None, "login.failed", actor=account, address=address)
            raise HTTPException(401, "wrong user name or password")
        await auth.limiter.succeeded(account)
        cookie, session = await open_session(
            auth.database, user, settings, address=address, user_agent=request.headers.get("user-agent")
        )
        principal = Principal(kind="session", name=user.username, role=user.role, session_id=session.id)
        await auth.audit.record(principal, "login", address=address)
        log.info("admin %r logged in from %s", user.username, address)
        for name, value, httponly in ((SESSION_COOKIE, cookie, True), (SIGNED_IN_COOKIE, "1", False)):
            response.set_cookie(
                name,
                value,
                max_age=math.ceil(settings.session_ttl_s),
                path="/",
                secure=secure(request),
                httponly=httponly,
                samesite="strict",
            )
        return SessionInfo(
            username=user.username,
            role=user.role,
            csrf_token=session.csrf_token,
            expires_at=session.expires_at,
        )

    @router.get("/session", response_model=SessionInfo, summary="The current login", responses={401: {}})
    async def current(request: Request) -> SessionInfo:
        identity = await auth.admit(request, Role.VIEWER)
        principal, session = identity.principal, identity.session
        if session is None:
            return SessionInfo(username=principal.name, role=principal.role, csrf_token="", expires_at=None)
        return SessionInfo(
            username=principal.name,
            role=principal.role,
            csrf_token=session.csrf_token,
            expires_at=session.expires_at,
        )

    @router.delete(
        "/session",
        status_code=204,
        summary="Log out (needs X-CSRF-Token)",
        responses={400: {"description": "an API token has no session"}, 401: {}, 403: {}},
    )
    async def logout(request: Request) -> Response:
        identity = await auth.admit(request, Role.VIEWER)
        if identity.session is None:
            raise HTTPException(
                400, "an API token has no session: revoke it with `voiceagent admin token revoke`"
            )
        await revoke_session(auth.database, identity.session.id)
        describe_change(request, "logout")
        response = Response(status_code=204)
        for name, httponly in ((SESSION_COOKIE, True), (SIGNED_IN_COOKIE, False)):
            response.delete_cookie(
                name, path="/", secure=secure(request), httponly=httponly, samesite="strict"
            )
        return response

    return router
