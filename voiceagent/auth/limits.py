"""The login rate limit, counted in the shared store so that every node counts together.

An attempt is written as a failure *before* its password is checked, in the same transaction
that counted the earlier ones: guesses sent all at once cannot all pass the count while the
slow hash runs. A success then deletes the account's failures, its own row with them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select

from voiceagent.auth.settings import AdminAuthSettings
from voiceagent.store.database import Database
from voiceagent.store.models import LoginFailure, utcnow


class LoginLimiter:
    def __init__(self, database: Database, settings: AdminAuthSettings) -> None:
        self.database = database
        self.settings = settings

    async def attempt(self, account: str, address: str) -> int | None:
        """Count an attempt for ``account`` from ``address`` and return None, or, when either has
        had its fill of failures within the window, count nothing and return the seconds until
        it may try again (for ``Retry-After``)."""
        account, address = account[:64], address[:64]
        now = utcnow()
        window = timedelta(seconds=self.settings.login_window_s)
        async with self.database.sessions.begin() as session:
            await session.execute(delete(LoginFailure).where(LoginFailure.at < now - window))
            recent = select(LoginFailure.at).where(LoginFailure.at >= now - window).order_by(LoginFailure.at)
            by_account = list(await session.scalars(recent.where(LoginFailure.account == account)))
            by_address = list(await session.scalars(recent.where(LoginFailure.address == address)))
            wait = max(
                _wait(by_account, self.settings.login_max_failures_per_account, window, now),
                _wait(by_address, self.settings.login_max_failures_per_address, window, now),
            )
            if wait > 0:
                return max(1, math.ceil(wait))
            session.add(LoginFailure(account=account, address=address, at=now))
        return None

    async def succeeded(self, account: str) -> None:
        async with self.database.sessions.begin() as session:
            await session.execute(delete(LoginFailure).where(LoginFailure.account == account[:64]))


def _wait(failures: list[datetime], limit: int, window: timedelta, now: datetime) -> float:
    """Seconds until fewer than ``limit`` of ``failures`` (oldest first) are inside the window."""
    if len(failures) < limit:
        return 0.0
    oldest = failures[len(failures) - limit]
    if oldest.tzinfo is None:  # SQLite hands back naive values; they are UTC
        oldest = oldest.replace(tzinfo=UTC)
    leaves = oldest + window
    return max((leaves - now).total_seconds(), 0.001)
