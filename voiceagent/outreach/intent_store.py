"""Stored intents: one row per user and intent, refreshed as analysis finds it again.

Upsert rules (``IntentStore.record``):
- a new (user, intent) row opens with the finding;
- an open row merges the finding's evidence (turn ids, the latest ``MAX_EVIDENCE`` kept) and takes
  its confidence and analyzer (the latest finding is the current view);
- a resolved or dismissed row reopens only for evidence from turns that *started after* its
  status last changed: a turn analysed late (said before the operator closed it) must not undo
  the operator's decision, while the user asking again afterwards is a new request, whichever way
  the row was closed. Evidence that does not reopen it is ignored (the row keeps what the
  operator saw). Turn times, not ids, decide, because ids say nothing about when the row closed.

Like the core store: one short transaction per operation, pydantic records out, plain ORM so the
same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from voiceagent.outreach.analysis.base import IntentFinding, Utterance
from voiceagent.store.database import Database
from voiceagent.store.models import Call, IntentRecord, Turn, User, utcnow
from voiceagent.store.records import UtcDatetime
from voiceagent.store.repository import NotFound

log = logging.getLogger(__name__)
_T = TypeVar("_T", str, int)

STATUSES = ("open", "resolved", "dismissed")
MAX_EVIDENCE = 20  # turn ids kept per record: enough to show why, bounded so a chatty user cannot grow a row
_IN_CHUNK = 500  # ids per IN (...) clause, far below SQLite's and asyncpg's parameter limits
MAX_USER_IDS = 10_000  # open_intents(user_ids): one IN clause, still well within both limits (32k)


class StoredIntent(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: int
    user_id: str
    intent: str
    confidence: float
    evidence: list[int]
    analyzer: str
    status: str
    detected_at: UtcDatetime
    updated_at: UtcDatetime


class IntentStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def record(self, findings: Sequence[IntentFinding]) -> list[StoredIntent]:
        """Upsert findings (rules in the module docstring); returns the rows this changed.
        Findings for users that do not exist (deleted since they spoke) are skipped."""
        if not findings:
            return []
        try:
            return await self._record_once(findings)
        except IntegrityError:  # another writer inserted the same (user, intent) between read and write
            return await self._record_once(findings)

    async def _record_once(self, findings: Sequence[IntentFinding]) -> list[StoredIntent]:
        async with self.database.sessions.begin() as session:
            users = {f.user_id for f in findings}
            known = await _existing_users(session, users)
            for user_id in sorted(users - known):
                log.info("intent store: user %r no longer exists; its findings are skipped", user_id)
            rows = await _rows_for(session, {(f.user_id, f.intent) for f in findings if f.user_id in known})
            closed = {key for key, row in rows.items() if row.status != "open"}
            turn_times = await _turn_times(
                session, {t for f in findings if (f.user_id, f.intent) in closed for t in f.evidence}
            )
            changed: dict[tuple[str, str], IntentRecord] = {}
            for finding in findings:
                if finding.user_id not in known:
                    continue
                key = (finding.user_id, finding.intent)
                row = rows.get(key)
                now = utcnow()
                if row is None:
                    row = IntentRecord(
                        user_id=finding.user_id,
                        intent=finding.intent,
                        confidence=finding.confidence,
                        evidence=_bounded(finding.evidence),
                        analyzer=finding.analyzer,
                        status="open",
                        detected_at=now,
                        updated_at=now,
                    )
                    session.add(row)
                    rows[key] = row
                elif row.status == "open" or _reopens(row, finding, turn_times):
                    row.status = "open"
                    row.evidence = _bounded([*row.evidence, *finding.evidence])
                    row.confidence = finding.confidence
                    row.analyzer = finding.analyzer
                    row.updated_at = now
                else:
                    continue
                changed[key] = row
            await session.flush()
            return [StoredIntent.model_validate(row) for row in changed.values()]

    async def for_user(self, user_id: str) -> list[StoredIntent]:
        """Every record of a user, whatever its status, most recently updated first."""
        query = (
            select(IntentRecord)
            .where(IntentRecord.user_id == user_id)
            .order_by(IntentRecord.updated_at.desc(), IntentRecord.id.desc())
        )
        async with self.database.sessions() as session:
            return [StoredIntent.model_validate(row) for row in await session.scalars(query)]

    async def open_intents(
        self, user_ids: Iterable[str] | None = None, limit: int = 100, offset: int = 0
    ) -> list[StoredIntent]:
        """Open records (of ``user_ids`` if given), most recently updated first, paged."""
        if limit < 1 or offset < 0:
            raise ValueError(f"limit must be at least 1 and offset at least 0 (got {limit}, {offset})")
        query = select(IntentRecord).where(IntentRecord.status == "open")
        if user_ids is not None:
            wanted = sorted(set(user_ids))
            if not wanted:
                return []
            if len(wanted) > MAX_USER_IDS:
                raise ValueError(f"at most {MAX_USER_IDS} user ids per call (got {len(wanted)})")
            query = query.where(IntentRecord.user_id.in_(wanted))
        query = (
            query.order_by(IntentRecord.updated_at.desc(), IntentRecord.id.desc()).limit(limit).offset(offset)
        )
        async with self.database.sessions() as session:
            return [StoredIntent.model_validate(row) for row in await session.scalars(query)]

    async def set_status(self, record_id: int, status: str) -> StoredIntent:
        """Open, resolve or dismiss a record. Setting the status it already has changes nothing
        (so repeating "resolve" does not move the time that later evidence is compared with)."""
        if status not in STATUSES:
            raise ValueError(f"unknown intent status {status!r}: choose {', '.join(STATUSES)}")
        async with self.database.sessions.begin() as session:
            row = await session.scalar(
                select(IntentRecord).where(IntentRecord.id == record_id).with_for_update()
            )
            if row is None:
                raise NotFound(f"intent record {record_id} does not exist")
            if row.status != status:
                row.status = status
                row.updated_at = utcnow()
                await session.flush()
            return StoredIntent.model_validate(row)


async def user_turns_after(database: Database, after_turn_id: int, limit: int) -> list[Utterance]:
    """What users said in turns with id > ``after_turn_id``, oldest first, at most ``limit``:
    the analysis job's incremental read. Agent-initiated turns and empty texts are left out, so
    the next watermark is the last returned id (skipped rows in between need no analysis).

    On PostgreSQL ids come from a sequence and a slow transaction can commit a lower id after a
    higher one was read; a caller that must not miss such a turn reads a little behind the newest.
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    query = (
        select(Turn.id, Call.user_id, Turn.user_text)
        .join(Call, Call.id == Turn.call_id)
        .where(Turn.id > after_turn_id, Turn.initiator == "user", func.trim(Turn.user_text) != "")
        .order_by(Turn.id)
        .limit(limit)
    )
    async with database.sessions() as session:
        rows = (await session.execute(query)).all()
    return [Utterance(turn_id=turn_id, user_id=user_id, text=text.strip()) for turn_id, user_id, text in rows]


def _bounded(turn_ids: Iterable[int]) -> list[int]:
    return sorted(set(turn_ids))[-MAX_EVIDENCE:]


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _reopens(row: IntentRecord, finding: IntentFinding, turn_times: dict[int, datetime]) -> bool:
    closed_at = _utc(row.updated_at)
    return any(turn_times.get(t, closed_at) > closed_at for t in finding.evidence)


def _chunks(values: Iterable[_T]) -> list[list[_T]]:
    ordered = sorted(values)
    return [ordered[i : i + _IN_CHUNK] for i in range(0, len(ordered), _IN_CHUNK)]


async def _existing_users(session: AsyncSession, user_ids: set[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(user_ids):
        found.update(await session.scalars(select(User.id).where(User.id.in_(chunk))))
    return found


async def _rows_for(session: AsyncSession, keys: set[tuple[str, str]]) -> dict[tuple[str, str], IntentRecord]:
    """The existing rows for (user, intent) pairs, locked on PostgreSQL until the transaction ends
    (in one order, user then intent, so two concurrent writers cannot deadlock on each other)."""
    rows: dict[tuple[str, str], IntentRecord] = {}
    intents = sorted({intent for _, intent in keys})
    for chunk in _chunks({user for user, _ in keys}):
        query = (
            select(IntentRecord)
            .where(IntentRecord.user_id.in_(chunk), IntentRecord.intent.in_(intents))
            .order_by(IntentRecord.user_id, IntentRecord.intent)
            .with_for_update()
        )
        for row in await session.scalars(query):
            if (row.user_id, row.intent) in keys:
                rows[(row.user_id, row.intent)] = row
    return rows


async def _turn_times(session: AsyncSession, turn_ids: set[int]) -> dict[int, datetime]:
    times: dict[int, datetime] = {}
    for chunk in _chunks(turn_ids):
        for turn_id, started_at in await session.execute(
            select(Turn.id, Turn.started_at).where(Turn.id.in_(chunk))
        ):
            times[turn_id] = _utc(started_at)
    return times
