"""Dashboard sessions: a random cookie value in the browser, only its SHA-256 in the store.

A session is valid while not revoked, before its absolute expiry (created + ``session_ttl_s``)
and while used at least every ``session_idle_s``; its user must exist and be enabled, checked on
every request, so removing or disabling a user ends their sessions at once.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select, update

from voiceagent.auth.accounts import TOUCH_INTERVAL, AdminUserRecord, Role, digest
from voiceagent.auth.settings import AdminAuthSettings
from voiceagent.store.database import Database
from voiceagent.store.models import AdminSession, AdminUser, utcnow
from voiceagent.store.records import UtcDatetime

SESSION_COOKIE = "va_session"
# Set beside the session cookie, readable by the pages' scripts and holding no secret: without it
# a page goes straight to the login instead of asking the API and logging a 401 in the console.
SIGNED_IN_COOKIE = "va_signed_in"
_MAX_COOKIE_LENGTH = 100  # ours are 43 characters; anything far longer is not worth a lookup


class SessionRecord(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str  # the SHA-256 of the cookie value, never the value itself
    user_id: int
    username: str
    role: Role
    csrf_token: str
    created_at: UtcDatetime
    last_seen_at: UtcDatetime
    expires_at: UtcDatetime


async def open_session(
    database: Database,
    user: AdminUserRecord,
    settings: AdminAuthSettings,
    *,
    address: str | None,
    user_agent: str | None,
) -> tuple[str, SessionRecord]:
    """A new session for ``user``: the cookie value (to hand to the browser, once) and the record.
    Sessions past their expiry are swept here, so the table stays the size of the live ones."""
    cookie = secrets.token_urlsafe(32)
    now = utcnow()
    row = AdminSession(
        id=digest(cookie),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=settings.session_ttl_s),
        address=address[:64] if address else None,
        user_agent=user_agent[:200] if user_agent else None,
    )
    async with database.sessions.begin() as session:
        await session.execute(delete(AdminSession).where(AdminSession.expires_at < now))
        session.add(row)
    record = SessionRecord(
        id=row.id,
        user_id=user.id,
        username=user.username,
        role=user.role,
        csrf_token=row.csrf_token,
        created_at=now,
        last_seen_at=now,
        expires_at=row.expires_at,
    )
    return cookie, record


async def find_session(database: Database, cookie: str, settings: AdminAuthSettings) -> SessionRecord | None:
    """The valid session this cookie value opens, else None (unknown, forged, revoked, expired,
    idle, or its user disabled: all alike). Notes the use, at most once a minute."""
    if not cookie or len(cookie) > _MAX_COOKIE_LENGTH:
        return None
    async with database.sessions() as session:
        found = (
            await session.execute(
                select(AdminSession, AdminUser)
                .join(AdminUser, AdminSession.user_id == AdminUser.id)
                .where(AdminSession.id == digest(cookie))
            )
        ).first()
        if found is None:
            return None
        row, user = found
        if row.revoked_at is not None or user.disabled:
            return None
        record = SessionRecord(
            id=row.id,
            user_id=user.id,
            username=user.username,
            role=Role(user.role),
            csrf_token=row.csrf_token,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            expires_at=row.expires_at,
        )
    now = utcnow()
    idle = timedelta(seconds=settings.session_idle_s)
    if now >= record.expires_at or now - record.last_seen_at >= idle:
        return None
    # Once a minute, or more often when the idle limit is that short, so a session in use
    # never idles out between two writes.
    if now - record.last_seen_at >= min(TOUCH_INTERVAL, idle / 4):
        async with database.sessions.begin() as session:
            await session.execute(
                update(AdminSession).where(AdminSession.id == record.id).values(last_seen_at=now)
            )
    return record


async def revoke_session(database: Database, session_id: str) -> None:
    async with database.sessions.begin() as session:
        await session.execute(
            update(AdminSession)
            .where(AdminSession.id == session_id, AdminSession.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
