"""The life of every outreach event, in the shared store: the one place that knows whether a
prompt was already spoken, by whom, and what became of it.

RocketMQ delivers at least once, to whichever node a message is routed to, and a node can die
mid-prompt. So the broker decides nothing about *whether* to speak: before a node speaks an event
it **claims** it here (one row per idempotency key, a lease renewed while the prompt waits or
plays). A second delivery of the same decision (a duplicate publish, a redelivery after a crash,
a pending prompt picked up at call start) finds it claimed or finished and is not spoken again.
A dead node's claim simply lapses, and the event is spoken in the user's next call.

Stages (each stored with time and node): decided → published → routed → spoken → heard → acked,
or pending (no live call: spoken when the user next calls), interrupted (the caller spoke over
it: they heard part, and answered), expired, superseded, failed; ``duplicate`` and ``rerouted``
record deliveries that did not speak.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from voiceagent.events import AskEvent, GreetEvent
from voiceagent.events.envelope import utcnow
from voiceagent.store.database import Database
from voiceagent.store.models import OutreachEvent, OutreachStage, User
from voiceagent.store.records import UtcDatetime

OutreachEventT = GreetEvent | AskEvent


class Status(StrEnum):
    DECIDED = "decided"
    PUBLISHED = "published"
    ROUTED = "routed"
    PENDING = "pending"
    SPOKEN = "spoken"
    HEARD = "heard"
    ACKED = "acked"
    INTERRUPTED = "interrupted"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"
    FAILED = "failed"


# Stages that are only log lines: they never change an event's status.
LogOnly = Literal["duplicate", "rerouted", "publish_failed"]
# Once here an event is never spoken again (HEARD: its ack may still be on its way).
FINISHED = frozenset(
    {Status.HEARD, Status.ACKED, Status.INTERRUPTED, Status.EXPIRED, Status.SUPERSEDED, Status.FAILED}
)
# Not finished and not necessarily on the broker's way to a node: what a call start picks up.
UNDELIVERED = (Status.DECIDED, Status.PUBLISHED, Status.ROUTED, Status.PENDING, Status.SPOKEN)


class Claim(StrEnum):
    CLAIMED = "claimed"  # yours: speak it, then settle it
    FINISHED = "finished"  # already spoken (or expired, superseded...): do not speak, ack
    BUSY = "busy"  # another node holds a live claim: leave it to that node
    EXPIRED = "expired"  # too late to speak: marked expired


class StageRecord(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    stage: str
    at: UtcDatetime
    node_id: str | None
    detail: str | None


class EventRecord(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: str
    idempotency_key: str
    type: str
    user_id: str
    status: Status
    created_at: UtcDatetime
    updated_at: UtcDatetime
    expires_at: UtcDatetime | None
    claimed_by: str | None
    call_id: str | None
    detail: str | None
    body: dict[str, Any]
    stages: list[StageRecord] = []


class OutreachLedger:
    def __init__(self, database: Database) -> None:
        self.database = database

    # -- deciding and publishing -------------------------------------------------------------

    async def decide(self, event: OutreachEventT, node_id: str | None = None) -> tuple[EventRecord, bool]:
        """Record a decision; with its idempotency key already known, return that event instead
        (``False``): the same decision made twice is one event."""
        existing = await self.by_key(event.idempotency_key)
        if existing is not None:
            return existing, False
        try:
            async with self.database.sessions.begin() as session:
                row = self._row(event, Status.DECIDED)
                session.add(row)
                session.add(OutreachStage(event_id=row.id, stage=Status.DECIDED, node_id=node_id))
                await session.flush()
                return _record(row), True
        except IntegrityError:  # another publisher decided the same thing a moment ago
            raced = await self.by_key(event.idempotency_key)
            if raced is None:
                raise
            return raced, False

    async def decide_many(
        self, events: Sequence[OutreachEventT], node_id: str | None = None
    ) -> list[tuple[EventRecord, bool]]:
        """:meth:`decide` for a batch in one transaction (a scheduler's run decides thousands);
        a race with another publisher falls back to one by one."""
        keys = [e.idempotency_key for e in events]
        try:
            async with self.database.sessions.begin() as session:
                query = select(OutreachEvent).where(OutreachEvent.idempotency_key.in_(keys))
                known = {row.idempotency_key: _record(row) for row in await session.scalars(query)}
                results: list[tuple[EventRecord, bool]] = []
                for event in events:
                    if event.idempotency_key in known:
                        results.append((known[event.idempotency_key], False))
                        continue
                    row = self._row(event, Status.DECIDED)
                    session.add(row)
                    session.add(OutreachStage(event_id=row.id, stage=Status.DECIDED, node_id=node_id))
                    known[event.idempotency_key] = record = _record(row)
                    results.append((record, True))
                await session.flush()
                return results
        except IntegrityError:
            return [await self.decide(event, node_id) for event in events]

    async def mark_many(
        self, event_ids: Sequence[str], stage: Status | LogOnly, *, node_id: str | None, detail: str | None
    ) -> None:
        """:meth:`mark` for a batch, in one transaction."""
        if not event_ids:
            return
        async with self.database.sessions.begin() as session:
            why = _cut(detail)
            stages = [OutreachStage(event_id=i, stage=stage, node_id=node_id, detail=why) for i in event_ids]
            session.add_all(stages)
            if stage in Status.__members__.values():
                await session.execute(
                    update(OutreachEvent)
                    .where(OutreachEvent.id.in_(event_ids), OutreachEvent.status.in_(_may_become(stage)))
                    .values(status=stage, updated_at=utcnow())
                )

    async def mark(
        self,
        event_id: str,
        stage: Status | LogOnly,
        *,
        node_id: str | None = None,
        detail: str | None = None,
    ) -> bool:
        """Append a stage; a status stage also becomes the event's status where it may (never
        over a finished one; see ``_may_become``). Returns whether the status changed."""
        async with self.database.sessions.begin() as session:
            row = await _locked(session, OutreachEvent.id == event_id)
            if row is None:
                return False
            session.add(OutreachStage(event_id=event_id, stage=stage, node_id=node_id, detail=_cut(detail)))
            if stage not in Status.__members__.values():
                return False
            if row.status not in _may_become(stage):
                return False
            row.status, row.updated_at = stage, utcnow()
            if detail is not None:
                row.detail = _cut(detail)
            return True

    # -- delivering ----------------------------------------------------------------------------

    async def claim(
        self, event: OutreachEventT, node_id: str, call_id: str, lease_s: float, now: datetime | None = None
    ) -> Claim:
        """Take the event for speaking in ``call_id``: the one step that makes a prompt spoken
        once across nodes. Serialised per event (row lock on PostgreSQL, the write lock on
        SQLite). An event this ledger never saw (published by someone else) is adopted."""
        now = now or utcnow()
        for attempt in range(2):
            try:
                async with self.database.sessions.begin() as session:
                    row = await _locked(session, OutreachEvent.idempotency_key == event.idempotency_key)
                    if row is None:
                        row = self._row(event, Status.PUBLISHED)
                        session.add(row)
                        session.add(OutreachStage(event_id=row.id, stage="published", detail="adopted"))
                    if row.status in FINISHED:
                        session.add(OutreachStage(event_id=row.id, stage="duplicate", node_id=node_id))
                        return Claim.FINISHED
                    if row.claimed_by and row.claimed_until and _utc(row.claimed_until) > now:
                        return Claim.BUSY  # being spoken (or waiting to be), here or elsewhere
                    if row.expires_at is not None and _utc(row.expires_at) <= now:
                        row.status, row.updated_at, row.claimed_by = Status.EXPIRED, now, None
                        session.add(OutreachStage(event_id=row.id, stage=Status.EXPIRED, node_id=node_id))
                        return Claim.EXPIRED
                    row.status, row.updated_at, row.call_id = Status.ROUTED, now, call_id
                    row.claimed_by, row.claimed_until = node_id, now + timedelta(seconds=lease_s)
                    session.add(
                        OutreachStage(event_id=row.id, stage=Status.ROUTED, node_id=node_id, detail=call_id)
                    )
                    return Claim.CLAIMED
            except IntegrityError:  # two nodes adopted the same unknown event at once
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    async def make_pending(self, event: OutreachEventT, node_id: str) -> str:
        """No live call for the user: the event waits in the ledger for their next call (adopted
        if this ledger never saw it). Returns the status it has now."""
        async with self.database.sessions.begin() as session:
            row = await _locked(session, OutreachEvent.idempotency_key == event.idempotency_key)
            if row is None:
                row = self._row(event, Status.PENDING)
                session.add(row)
            elif row.status in FINISHED or (row.claimed_until and _utc(row.claimed_until) > utcnow()):
                return row.status  # spoken already, or being spoken somewhere
            row.status, row.updated_at = Status.PENDING, utcnow()
            session.add(OutreachStage(event_id=row.id, stage=Status.PENDING, node_id=node_id))
            return row.status

    async def acked(self, event_id: str, node_id: str) -> None:
        """The broker message of a heard event was acked: the end of its life."""
        async with self.database.sessions.begin() as session:
            row = await _locked(session, OutreachEvent.id == event_id)
            if row is not None and row.status == Status.HEARD:
                row.status, row.updated_at = Status.ACKED, utcnow()
                session.add(OutreachStage(event_id=event_id, stage=Status.ACKED, node_id=node_id))

    async def renew(self, event_id: str, node_id: str, lease_s: float) -> bool:
        """Keep holding an event while its prompt waits or plays; False if it is no longer ours."""
        async with self.database.sessions.begin() as session:
            result = await session.execute(
                update(OutreachEvent)
                .where(OutreachEvent.id == event_id, OutreachEvent.claimed_by == node_id)
                .values(claimed_until=utcnow() + timedelta(seconds=lease_s))
            )
            return bool(getattr(result, "rowcount", 0))

    async def release(
        self,
        event_id: str,
        node_id: str,
        status: Status,
        detail: str | None = None,
        call_id: str | None = None,
    ) -> None:
        """Settle a claim: heard, interrupted, expired, superseded — or back to pending."""
        async with self.database.sessions.begin() as session:
            row = await _locked(session, OutreachEvent.id == event_id)
            if row is None:
                return
            session.add(OutreachStage(event_id=event_id, stage=status, node_id=node_id, detail=_cut(detail)))
            if row.claimed_by not in (None, node_id) or row.status in FINISHED - {Status.HEARD}:
                return  # someone else holds it now (our lease lapsed): their outcome wins
            row.status, row.updated_at, row.claimed_by, row.claimed_until = status, utcnow(), None, None
            if call_id is not None:
                row.call_id = call_id
            if detail is not None:
                row.detail = _cut(detail)

    # -- reading -------------------------------------------------------------------------------

    async def user_exists(self, user_id: str) -> bool:
        async with self.database.sessions() as session:
            return await session.get(User, user_id) is not None

    async def existing_users(self, user_ids: Collection[str]) -> set[str]:
        async with self.database.sessions() as session:
            return set(await session.scalars(select(User.id).where(User.id.in_(list(user_ids)))))

    async def by_key(self, key: str) -> EventRecord | None:
        async with self.database.sessions() as session:
            row = await session.scalar(select(OutreachEvent).where(OutreachEvent.idempotency_key == key))
            return None if row is None else _record(row)

    async def get(self, event_id: str, with_stages: bool = True) -> EventRecord | None:
        query = select(OutreachEvent).where(OutreachEvent.id == event_id)
        if with_stages:
            query = query.options(selectinload(OutreachEvent.stages))
        async with self.database.sessions() as session:
            row = await session.scalar(query)
            return None if row is None else _record(row, with_stages)

    async def undelivered_for(self, user_id: str, now: datetime | None = None) -> list[EventRecord]:
        """What a call starting for ``user_id`` should speak first: events not finished nor
        expired, oldest first. Some may be held by a claim (another delivery, or a node that died
        mid-prompt and whose lease has yet to lapse): the caller waits for the claim to settle."""
        now = now or utcnow()
        query = (
            select(OutreachEvent)
            .where(
                OutreachEvent.user_id == user_id,
                OutreachEvent.status.in_([s.value for s in UNDELIVERED]),
                or_(OutreachEvent.expires_at.is_(None), OutreachEvent.expires_at > now),
            )
            .order_by(OutreachEvent.created_at, OutreachEvent.id)
            .limit(20)
        )
        async with self.database.sessions() as session:
            return [_record(row) for row in await session.scalars(query)]

    async def stranded_for(
        self, user_ids: Collection[str], in_flight_since: datetime, now: datetime | None = None
    ) -> list[EventRecord]:
        """Events for these users (in live calls) that no delivery is working on: pending (no call
        was known when they arrived), held by a lapsed claim (a dead node's), or published before
        ``in_flight_since`` and still not taken (their message sits with a node that died)."""
        now = now or utcnow()
        lapsed = or_(OutreachEvent.claimed_until.is_(None), OutreachEvent.claimed_until < now)
        query = (
            select(OutreachEvent)
            .where(
                OutreachEvent.user_id.in_(list(user_ids)),
                or_(OutreachEvent.expires_at.is_(None), OutreachEvent.expires_at > now),
                or_(
                    OutreachEvent.status == Status.PENDING,
                    and_(OutreachEvent.status.in_([Status.ROUTED, Status.SPOKEN]), lapsed),
                    and_(
                        OutreachEvent.status.in_([Status.DECIDED, Status.PUBLISHED]),
                        OutreachEvent.updated_at < in_flight_since,
                    ),
                ),
            )
            .order_by(OutreachEvent.created_at, OutreachEvent.id)
            .limit(200)
        )
        async with self.database.sessions() as session:
            return [_record(row) for row in await session.scalars(query)]

    async def history(
        self,
        *,
        user_id: str | None = None,
        status: str | None = None,
        type: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[EventRecord], int]:
        """Newest first, each with its stages; and the total matching (for pagination)."""
        conditions = []
        if user_id is not None:
            conditions.append(OutreachEvent.user_id == user_id)
        if type is not None:
            conditions.append(OutreachEvent.type == type)
        if status is not None:
            conditions.append(OutreachEvent.status == status)
        query = (
            select(OutreachEvent)
            .where(*conditions)
            .order_by(OutreachEvent.created_at.desc(), OutreachEvent.id)
            .limit(limit)
            .offset(offset)
            .options(selectinload(OutreachEvent.stages))
        )
        async with self.database.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(OutreachEvent).where(*conditions))
            rows = await session.scalars(query)
            return [_record(row, with_stages=True) for row in rows], int(total or 0)

    @staticmethod
    def _row(event: OutreachEventT, status: Status) -> OutreachEvent:
        now = utcnow()
        return OutreachEvent(
            id=event.id,
            idempotency_key=event.idempotency_key,
            type=event.type,
            user_id=event.payload.user_id,
            body=event.model_dump(mode="json"),
            status=status,
            created_at=now,
            updated_at=now,
            expires_at=event.expires_at,
        )


async def _locked(session: AsyncSession, condition: Any) -> OutreachEvent | None:
    # FOR UPDATE serialises claims across nodes on PostgreSQL; SQLite's BEGIN IMMEDIATE already does.
    return await session.scalar(select(OutreachEvent).where(condition).with_for_update())


def _record(row: OutreachEvent, with_stages: bool = False) -> EventRecord:
    record = EventRecord.model_validate(
        {c: getattr(row, c) for c in EventRecord.model_fields if c != "stages"}
        | {"stages": [StageRecord.model_validate(s) for s in row.stages] if with_stages else []}
    )
    return record


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes even for timezone=True columns; all we store is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _may_become(stage: Status | str) -> list[str]:
    """The statuses an event may move to ``stage`` from. ``published`` only follows ``decided``:
    a node can take the message (routed, pending, even heard) before the publisher has written
    that it was published."""
    if stage == Status.PUBLISHED:
        return [Status.DECIDED]
    return [s for s in Status if s not in FINISHED]


def _cut(detail: str | None) -> str | None:
    return None if detail is None else detail[:300]
