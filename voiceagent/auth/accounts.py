"""Admin users and API tokens: one short transaction per operation, pydantic records out.

Secrets never reach the store in the clear: passwords as argon2id hashes, tokens as SHA-256 (a
token is 32 random bytes, so a fast hash is enough and lets a lookup be one indexed read).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from voiceagent.auth.passwords import check_policy, hash_password, needs_rehash, verify_or_dummy
from voiceagent.store.database import Database
from voiceagent.store.models import AdminSession, AdminUser, ApiToken, utcnow
from voiceagent.store.records import UtcDatetime

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.@-]+$")
MAX_NAME_LENGTH = 64
TOKEN_PREFIX = "va_"
# last_used_at / last_seen_at are written at most this often, not once per request.
TOUCH_INTERVAL = timedelta(minutes=1)


class Role(StrEnum):
    VIEWER = "viewer"
    OPERATOR = "operator"  # everything a viewer may, and changes

    def allows(self, needed: Role) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 1, Role.OPERATOR: 2}


class AccountError(ValueError):
    """A refused account or token operation; the message is one line, safe to print."""


class _Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class AdminUserRecord(_Record):
    id: int
    username: str
    role: Role
    created_at: UtcDatetime
    updated_at: UtcDatetime
    disabled: bool


class TokenRecord(_Record):
    id: int
    name: str
    role: Role
    created_at: UtcDatetime
    created_by: str
    last_used_at: UtcDatetime | None
    revoked_at: UtcDatetime | None


def digest(secret: str) -> str:
    """SHA-256 hex: how session cookies and API tokens are stored and looked up."""
    return hashlib.sha256(secret.encode()).hexdigest()


def check_name(name: str, what: str = "user name") -> str:
    if not name or len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
        raise AccountError(
            f"bad {what} {name[:MAX_NAME_LENGTH]!r}: 1-{MAX_NAME_LENGTH} of A-Z a-z 0-9 _ . @ -"
        )
    return name


# -- users -----------------------------------------------------------------------------------------


async def create_user(
    database: Database, username: str, password: str, role: Role | str, *, min_length: int = 10
) -> None:
    check_name(username)
    role = Role(role)
    check_policy(password, min_length)
    password_hash = await asyncio.to_thread(hash_password, password)
    try:
        async with database.sessions.begin() as session:
            session.add(AdminUser(username=username, password_hash=password_hash, role=role.value))
    except IntegrityError:
        raise AccountError(f"admin user {username!r} already exists") from None


async def get_user(database: Database, username: str) -> AdminUserRecord | None:
    async with database.sessions() as session:
        user = await session.scalar(select(AdminUser).where(AdminUser.username == username))
        return None if user is None else AdminUserRecord.model_validate(user)


async def list_users(database: Database) -> list[AdminUserRecord]:
    async with database.sessions() as session:
        users = await session.scalars(select(AdminUser).order_by(AdminUser.username))
        return [AdminUserRecord.model_validate(u) for u in users]


async def remove_user(database: Database, username: str) -> None:
    """Remove the user; their sessions go with them (ON DELETE CASCADE)."""
    async with database.sessions.begin() as session:
        result = await session.execute(delete(AdminUser).where(AdminUser.username == username))
        if not getattr(result, "rowcount", 0):
            raise AccountError(f"no admin user {username!r}")


async def set_password(database: Database, username: str, password: str, *, min_length: int = 10) -> int:
    """Change the password and end the user's sessions (whoever knew the old one is logged out);
    returns how many sessions ended."""
    check_policy(password, min_length)
    password_hash = await asyncio.to_thread(hash_password, password)
    async with database.sessions.begin() as session:
        user = await _user_for_update(session, username)
        user.password_hash = password_hash
        user.updated_at = utcnow()
        return await _revoke_sessions(session, user.id)


async def set_role(database: Database, username: str, role: Role | str) -> int:
    """Change the role and end the user's sessions, so the new role applies at once; returns how
    many sessions ended."""
    role = Role(role)
    async with database.sessions.begin() as session:
        user = await _user_for_update(session, username)
        user.role = role.value
        user.updated_at = utcnow()
        return await _revoke_sessions(session, user.id)


async def set_disabled(database: Database, username: str, disabled: bool) -> int:
    """Disable (or enable again) a user without removing their history: a disabled user cannot log
    in and their sessions end now; returns how many sessions ended. Enabling ends sessions too: a
    login that passed its check as the user was being disabled may have opened one since."""
    async with database.sessions.begin() as session:
        user = await _user_for_update(session, username)
        user.disabled = disabled
        user.updated_at = utcnow()
        return await _revoke_sessions(session, user.id)


async def revoke_sessions(database: Database, username: str) -> int:
    """End all of a user's sessions; returns how many were live."""
    async with database.sessions.begin() as session:
        user = await _user_for_update(session, username)
        return await _revoke_sessions(session, user.id)


async def check_login(database: Database, username: str, password: str) -> AdminUserRecord | None:
    """The user when the password is right and the account enabled, else None, in about the same
    time whether or not the user exists. Upgrades the stored hash when the defaults got stronger."""
    async with database.sessions() as session:
        user = await session.scalar(select(AdminUser).where(AdminUser.username == username))
        stored = None if user is None else user.password_hash
        record = None if user is None else AdminUserRecord.model_validate(user)
    if not await asyncio.to_thread(verify_or_dummy, stored, password) or record is None:
        return None
    if record.disabled:
        return None
    if stored is not None and needs_rehash(stored):
        rehashed = await asyncio.to_thread(hash_password, password)
        async with database.sessions.begin() as session:
            await session.execute(
                update(AdminUser)
                .where(AdminUser.id == record.id, AdminUser.password_hash == stored)
                .values(password_hash=rehashed)
            )
    return record


async def _user_for_update(session: AsyncSession, username: str) -> AdminUser:
    user = await session.scalar(select(AdminUser).where(AdminUser.username == username).with_for_update())
    if user is None:
        raise AccountError(f"no admin user {username!r}")
    return user


async def _revoke_sessions(session: AsyncSession, user_id: int) -> int:
    result = await session.execute(
        update(AdminSession)
        .where(AdminSession.user_id == user_id, AdminSession.revoked_at.is_(None))
        .where(AdminSession.expires_at > utcnow())
        .values(revoked_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- API tokens --------------------------------------------------------------------------------------


async def create_token(database: Database, name: str, role: Role | str, created_by: str = "cli") -> str:
    """A new token, returned once: only its SHA-256 is kept."""
    check_name(name, "token name")
    role = Role(role)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    try:
        async with database.sessions.begin() as session:
            session.add(
                ApiToken(
                    name=name,
                    active_name=name,
                    token_hash=digest(token),
                    role=role.value,
                    created_by=created_by[:128],
                )
            )
    except IntegrityError:
        raise AccountError(f"a token named {name!r} exists; revoke it first") from None
    return token


async def list_tokens(database: Database, *, include_revoked: bool = False) -> list[TokenRecord]:
    query = select(ApiToken).order_by(ApiToken.name, ApiToken.id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    async with database.sessions() as session:
        return [TokenRecord.model_validate(t) for t in await session.scalars(query)]


async def revoke_token(database: Database, name: str) -> None:
    async with database.sessions.begin() as session:
        result = await session.execute(
            update(ApiToken).where(ApiToken.active_name == name).values(revoked_at=utcnow(), active_name=None)
        )
        if not getattr(result, "rowcount", 0):
            raise AccountError(f"no live token named {name!r}")


async def find_token(database: Database, token: str) -> TokenRecord | None:
    """The live token with this value, its use noted (at most once a minute); else None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 100:
        return None
    async with database.sessions() as session:
        row = await session.scalar(select(ApiToken).where(ApiToken.token_hash == digest(token)))
        record = None if row is None else TokenRecord.model_validate(row)
    if record is None or record.revoked_at is not None:
        return None
    now = utcnow()
    if _stale(record.last_used_at, now, TOUCH_INTERVAL):
        async with database.sessions.begin() as session:
            await session.execute(update(ApiToken).where(ApiToken.id == record.id).values(last_used_at=now))
    return record


def _stale(moment: datetime | None, now: datetime, interval: timedelta) -> bool:
    return moment is None or now - moment >= interval
