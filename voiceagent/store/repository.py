"""The store's operations, one short transaction each, returning immutable records."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from voiceagent.store.database import Database
from voiceagent.store.models import Call, Turn, User, utcnow
from voiceagent.store.records import CallRecord, NewTurn, Reference, TurnMetrics, TurnRecord, UserRecord


class NotFound(LookupError):
    pass


class CallEnded(RuntimeError):
    """A turn arrived for a call that has already hung up."""


def turn_record(turn: Turn) -> TurnRecord:
    return TurnRecord(
        id=turn.id,
        call_id=turn.call_id,
        index=turn.index,
        started_at=turn.started_at,
        ended_at=turn.ended_at,
        user_text=turn.user_text,
        agent_text=turn.agent_text,
        agent_text_heard=turn.agent_text_heard,
        interrupted=turn.interrupted,
        metrics=TurnMetrics.model_validate(turn),
        fault=turn.fault,
        initiator=turn.initiator,
        event_id=turn.event_id,
        sources=[Reference.model_validate(ref) for ref in turn.sources or ()],
    )


def _call_record(call: Call, with_turns: bool) -> CallRecord:
    return CallRecord(
        id=call.id,
        user_id=call.user_id,
        node_id=call.node_id,
        started_at=call.started_at,
        ended_at=call.ended_at,
        end_reason=call.end_reason,
        turns=[turn_record(t) for t in call.turns] if with_turns else [],
    )


class Store:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def touch_user(
        self,
        user_id: str,
        display_name: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> UserRecord:
        """Create the user on first sight, otherwise refresh last_seen_at (and name if given)."""
        if not user_id or len(user_id) > 64:
            raise ValueError("user id must be 1-64 characters")
        try:
            return await self._touch_user_once(user_id, display_name, attributes)
        except IntegrityError:  # another node inserted the same user between our read and write
            return await self._touch_user_once(user_id, display_name, attributes)

    async def _touch_user_once(
        self, user_id: str, display_name: str | None, attributes: dict[str, Any] | None
    ) -> UserRecord:
        async with self.database.sessions.begin() as session:
            user = await session.get(User, user_id)
            if user is None:
                user = User(id=user_id, display_name=display_name, attributes=attributes or {})
                session.add(user)
            else:
                user.last_seen_at = utcnow()
                if display_name is not None:
                    user.display_name = display_name
                if attributes:
                    user.attributes = {**user.attributes, **attributes}
            await session.flush()
            await session.refresh(user)
            return UserRecord.model_validate(user)

    async def start_call(self, user_id: str, node_id: str, call_id: str | None = None) -> CallRecord:
        async with self.database.sessions.begin() as session:
            if await session.get(User, user_id) is None:
                raise NotFound(f"user {user_id!r} does not exist")
            call = Call(id=call_id or uuid.uuid4().hex, user_id=user_id, node_id=node_id)
            session.add(call)
            await session.flush()
            return _call_record(call, with_turns=False)

    async def add_turn(self, call_id: str, turn: NewTurn) -> TurnRecord:
        async with self.database.sessions.begin() as session:
            call = await self._call_for_update(session, call_id)
            if call.ended_at is not None:
                raise CallEnded(f"call {call_id!r} ended at {call.ended_at.isoformat()}")
            last = await session.scalar(select(func.max(Turn.index)).where(Turn.call_id == call_id))
            row = Turn(
                call_id=call_id,
                index=(last or 0) + 1,
                started_at=turn.started_at,
                ended_at=turn.ended_at,
                user_text=turn.user_text,
                agent_text=turn.agent_text,
                agent_text_heard=turn.agent_text_heard,
                interrupted=turn.interrupted,
                fault=turn.fault,
                initiator=turn.initiator,
                event_id=turn.event_id,
                sources=[ref.model_dump(mode="json") for ref in turn.sources] or None,
                **turn.metrics.model_dump(),
            )
            session.add(row)
            await session.flush()
            return turn_record(row)

    async def end_call(self, call_id: str, reason: str) -> CallRecord:
        """Idempotent: ending an ended call keeps the first end time and reason."""
        async with self.database.sessions.begin() as session:
            call = await self._call_for_update(session, call_id)
            if call.ended_at is None:
                call.ended_at = utcnow()
                call.end_reason = reason[:64]
            await session.flush()
            return _call_record(call, with_turns=False)

    async def get_call(self, call_id: str) -> CallRecord:
        async with self.database.sessions() as session:
            call = await session.scalar(
                select(Call).where(Call.id == call_id).options(selectinload(Call.turns))
            )
            if call is None:
                raise NotFound(f"call {call_id!r} does not exist")
            return _call_record(call, with_turns=True)

    async def list_calls(
        self,
        *,
        active_only: bool = False,
        user_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[CallRecord]:
        query = select(Call).order_by(Call.started_at.desc(), Call.id).limit(limit).offset(offset)
        if active_only:
            query = query.where(Call.ended_at.is_(None))
        if user_id is not None:
            query = query.where(Call.user_id == user_id)
        async with self.database.sessions() as session:
            return [_call_record(c, with_turns=False) for c in await session.scalars(query)]

    @staticmethod
    async def _call_for_update(session: AsyncSession, call_id: str) -> Call:
        # FOR UPDATE serialises turn numbering across nodes on PostgreSQL; SQLite ignores it.
        call = await session.scalar(select(Call).where(Call.id == call_id).with_for_update())
        if call is None:
            raise NotFound(f"call {call_id!r} does not exist")
        return call
