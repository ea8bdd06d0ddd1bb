"""Which node holds which user's live call, in the shared store, kept true by heartbeats.

A node registers each call as it starts and removes it as it ends; every ``heartbeat_s`` it
refreshes all its rows in one statement (and reports when each caller last spoke, for the
check-in rule). A node that dies stops refreshing: after ``stale_after_s`` its rows no longer
count, and the next sweep deletes them. Publishers and nodes ask :meth:`locate` where to route.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select, update

from voiceagent.events.envelope import utcnow
from voiceagent.store.database import Database
from voiceagent.store.models import LiveSession
from voiceagent.store.records import UtcDatetime


class LiveSessionRecord(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    call_id: str
    user_id: str
    node_id: str
    started_at: UtcDatetime
    heartbeat_at: UtcDatetime
    last_activity_at: UtcDatetime


class SessionRegistry:
    def __init__(self, database: Database, stale_after_s: float) -> None:
        self.database = database
        self.stale_after_s = stale_after_s

    def _fresh_since(self, now: datetime | None = None) -> datetime:
        return (now or utcnow()) - timedelta(seconds=self.stale_after_s)

    async def register(self, call_id: str, user_id: str, node_id: str) -> None:
        now = utcnow()
        async with self.database.sessions.begin() as session:
            await session.merge(
                LiveSession(
                    call_id=call_id,
                    user_id=user_id,
                    node_id=node_id,
                    started_at=now,
                    heartbeat_at=now,
                    last_activity_at=now,
                )
            )

    async def unregister(self, call_id: str) -> None:
        async with self.database.sessions.begin() as session:
            await session.execute(delete(LiveSession).where(LiveSession.call_id == call_id))

    async def heartbeat(self, node_id: str, activity: Mapping[str, datetime] | None = None) -> None:
        """Refresh this node's calls (one statement), plus when each caller last spoke."""
        now = utcnow()
        async with self.database.sessions.begin() as session:
            await session.execute(
                update(LiveSession).where(LiveSession.node_id == node_id).values(heartbeat_at=now)
            )
            for call_id, at in (activity or {}).items():
                await session.execute(
                    update(LiveSession).where(LiveSession.call_id == call_id).values(last_activity_at=at)
                )

    async def forget_node(self, node_id: str) -> int:
        """A node starting up holds no calls yet: whatever its previous life registered is gone."""
        async with self.database.sessions.begin() as session:
            result = await session.execute(delete(LiveSession).where(LiveSession.node_id == node_id))
            return int(getattr(result, "rowcount", 0) or 0)

    async def sweep(self) -> int:
        """Delete rows of nodes that stopped heartbeating."""
        async with self.database.sessions.begin() as session:
            result = await session.execute(
                delete(LiveSession).where(LiveSession.heartbeat_at < self._fresh_since())
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def locate(self, user_id: str) -> LiveSessionRecord | None:
        """The user's newest live call on a node that is still heartbeating, if any."""
        query = (
            select(LiveSession)
            .where(LiveSession.user_id == user_id, LiveSession.heartbeat_at >= self._fresh_since())
            .order_by(LiveSession.started_at.desc())
            .limit(1)
        )
        async with self.database.sessions() as session:
            row = await session.scalar(query)
            return None if row is None else LiveSessionRecord.model_validate(row)

    async def locate_many(self, user_ids: Collection[str]) -> dict[str, str]:
        """User → the node holding their newest live call, for the users who have one."""
        query = (
            select(LiveSession.user_id, LiveSession.node_id)
            .where(LiveSession.user_id.in_(list(user_ids)), LiveSession.heartbeat_at >= self._fresh_since())
            .order_by(LiveSession.started_at)
        )
        async with self.database.sessions() as session:
            return {user: node for user, node in await session.execute(query)}  # newest wins

    async def live(self, node_id: str | None = None) -> list[LiveSessionRecord]:
        query = select(LiveSession).where(LiveSession.heartbeat_at >= self._fresh_since())
        if node_id is not None:
            query = query.where(LiveSession.node_id == node_id)
        async with self.database.sessions() as session:
            return [LiveSessionRecord.model_validate(r) for r in await session.scalars(query)]
