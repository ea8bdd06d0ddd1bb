"""The dashboard's reads of the shared store: every node answers the same, whichever holds a call.

Aggregates that SQL says well (counts, filters, pages) run in the database; percentiles and
histograms run here over a bounded sample of recent turns, the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, case, exists, func, or_, select
from sqlalchemy.sql import ColumnElement

from voiceagent.admin.schemas import (
    STAGES,
    AfterCallSummary,
    CallDetail,
    CallSummary,
    Charts,
    EvidenceTurn,
    FunnelStep,
    IntentSeries,
    IntentView,
    KnowledgeOverview,
    LatencyHistogram,
    NodeCalls,
    Overview,
    Page,
    StageLatency,
    TurnView,
    UserDetail,
    UserSummary,
)
from voiceagent.events.envelope import utcnow
from voiceagent.knowledge.documents import DocumentState
from voiceagent.store.database import Database
from voiceagent.store.models import (
    Call,
    IntentRecord,
    KnowledgeDocument,
    LiveSession,
    OutreachEvent,
    OutreachStage,
    Turn,
    User,
)
from voiceagent.store.models import CallSummary as StoredCallSummary
from voiceagent.store.repository import NotFound, turn_record

SAMPLE_TURNS = 5000  # turns read for percentiles and histograms: recent enough, bounded
LATENCY_EDGES_S = [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0]
FUNNEL = ("decided", "published", "routed", "spoken", "heard", "acked")
FUNNEL_ENDS = ("interrupted", "expired", "superseded", "failed")
MAX_EVIDENCE_SHOWN = 20


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def like_pattern(text: str) -> str:
    """``text`` as a LIKE pattern matching it anywhere, its own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def histogram(values: Sequence[float], edges: Sequence[float]) -> list[int]:
    counts = [0] * len(edges)
    for value in values:
        slot = 0
        for i, edge in enumerate(edges):
            if value >= edge:
                slot = i
        counts[slot] += 1
    return counts


class AdminQueries:
    def __init__(self, database: Database, stale_after_s: float) -> None:
        self.database = database
        self.stale_after_s = stale_after_s

    # -- live calls (the session registry every node heartbeats) -------------------------------

    def _fresh(self) -> ColumnElement[bool]:
        return LiveSession.heartbeat_at >= utcnow() - timedelta(seconds=self.stale_after_s)

    async def live_calls(self) -> dict[str, str]:
        """Call id → node, for calls on nodes that are still heartbeating."""
        async with self.database.sessions() as session:
            rows = await session.execute(
                select(LiveSession.call_id, LiveSession.node_id).where(self._fresh())
            )
            return {call_id: node_id for call_id, node_id in rows}

    # -- overview --------------------------------------------------------------------------------

    async def overview(self, window_h: float = 24.0) -> Overview:
        now = utcnow()
        today = now.replace(hour=0, minute=0, second=0, microsecond=0)
        live = await self.live_calls()
        per_node = Counter(live.values())
        samples = await self._stage_samples(now - timedelta(hours=window_h))
        async with self.database.sessions() as session:
            calls_today = await session.scalar(select(func.count()).where(Call.started_at >= today))
            turns_today = await session.scalar(select(func.count()).where(Turn.started_at >= today))
            outreach = await session.execute(
                select(OutreachEvent.status, func.count())
                .where(OutreachEvent.created_at >= today)
                .group_by(OutreachEvent.status)
            )
            open_intents = await session.scalar(
                select(func.count()).select_from(IntentRecord).where(IntentRecord.status == "open")
            )
            documents = await session.execute(
                select(KnowledgeDocument.state, func.count()).group_by(KnowledgeDocument.state)
            )
            return Overview(
                live_calls=len(live),
                nodes=[NodeCalls(node_id=n, live_calls=c) for n, c in sorted(per_node.items())],
                window_h=window_h,
                latency=[
                    StageLatency(
                        stage=stage,
                        p50_s=percentile(samples[stage], 50),
                        p95_s=percentile(samples[stage], 95),
                        count=len(samples[stage]),
                    )
                    for stage in STAGES
                ],
                calls_today=int(calls_today or 0),
                turns_today=int(turns_today or 0),
                outreach_today={status: int(n) for status, n in outreach},
                open_intents=int(open_intents or 0),
                documents={state: int(n) for state, n in documents},
                generated_at=now,
            )

    async def _stage_samples(self, since: datetime) -> dict[str, list[float]]:
        columns = [getattr(Turn, f"{stage}_s") for stage in STAGES]
        query = select(*columns).where(Turn.started_at >= since).order_by(Turn.id.desc()).limit(SAMPLE_TURNS)
        samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
        async with self.database.sessions() as session:
            for row in await session.execute(query):
                for stage, value in zip(STAGES, row, strict=True):
                    if value is not None:
                        samples[stage].append(float(value))
        return samples

    # -- calls -----------------------------------------------------------------------------------

    async def calls(
        self,
        *,
        q: str | None = None,
        user_id: str | None = None,
        node_id: str | None = None,
        live: bool | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[CallSummary]:
        conditions: list[ColumnElement[bool]] = []
        if user_id:
            conditions.append(Call.user_id == user_id)
        if node_id:
            conditions.append(Call.node_id == node_id)
        if q:
            pattern = like_pattern(q)
            said = exists().where(
                Turn.call_id == Call.id,
                or_(
                    Turn.user_text.ilike(pattern, escape="\\"),
                    Turn.agent_text.ilike(pattern, escape="\\"),
                ),
            )
            conditions.append(or_(Call.user_id.ilike(pattern, escape="\\"), Call.id == q, said))
        live_ids = await self.live_calls()
        if live is True:
            conditions.append(Call.id.in_(list(live_ids)))
        elif live is False:
            conditions.append(Call.id.not_in(list(live_ids)))
        query = select(Call).where(*conditions).order_by(Call.started_at.desc(), Call.id)
        async with self.database.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(Call).where(*conditions))
            rows = list(await session.scalars(query.limit(limit).offset(offset)))
        items = await self.call_summaries([r.id for r in rows], live_ids)
        return Page[CallSummary](items=items, total=int(total or 0), limit=limit, offset=offset)

    async def call_summaries(
        self, call_ids: Sequence[str], live_ids: Collection[str] | None = None
    ) -> list[CallSummary]:
        """Summaries in the order of ``call_ids`` (unknown ids left out)."""
        if not call_ids:
            return []
        if live_ids is None:
            live_ids = await self.live_calls()
        counts = (
            select(
                Turn.call_id,
                func.count().label("turns"),
                func.sum(case((Turn.interrupted, 1), else_=0)).label("barge_ins"),
                func.sum(case((Turn.initiator == "agent", 1), else_=0)).label("prompts"),
                func.max(case((and_(Turn.initiator == "user", Turn.user_text != ""), Turn.id))).label("said"),
            )
            .where(Turn.call_id.in_(list(call_ids)))
            .group_by(Turn.call_id)
        )
        async with self.database.sessions() as session:
            calls = {c.id: c for c in await session.scalars(select(Call).where(Call.id.in_(list(call_ids))))}
            stats = {row.call_id: row for row in await session.execute(counts)}
            said_ids = [row.said for row in stats.values() if row.said is not None]
            texts = dict(
                (await session.execute(select(Turn.id, Turn.user_text).where(Turn.id.in_(said_ids)))).all()
            )
        summaries = []
        for call_id in call_ids:
            call = calls.get(call_id)
            if call is None:
                continue
            row = stats.get(call_id)
            summaries.append(
                CallSummary(
                    id=call.id,
                    user_id=call.user_id,
                    node_id=call.node_id,
                    started_at=call.started_at,
                    ended_at=call.ended_at,
                    end_reason=call.end_reason,
                    live=call.id in live_ids and call.ended_at is None,
                    turns=int(row.turns) if row else 0,
                    barge_ins=int(row.barge_ins or 0) if row else 0,
                    prompts=int(row.prompts or 0) if row else 0,
                    last_user_text=(texts.get(row.said, "") if row and row.said else "")[:200],
                )
            )
        return summaries

    async def call(self, call_id: str) -> CallDetail:
        found = await self.call_summaries([call_id])
        if not found:
            raise NotFound(f"no call {call_id!r}")
        summary = found[0]
        async with self.database.sessions() as session:
            turns = await session.scalars(select(Turn).where(Turn.call_id == call_id).order_by(Turn.index))
            transcript = [self.turn_view(t) for t in turns]
            after_call = await session.get(StoredCallSummary, call_id)
            recap = None if after_call is None else AfterCallSummary.model_validate(after_call)
        return CallDetail(**summary.model_dump(), transcript=transcript, after_call=recap)

    @staticmethod
    def turn_view(row: Turn) -> TurnView:
        return TurnView.model_validate(turn_record(row).model_dump())

    async def turns_after(self, floor_id: int, limit: int = 500) -> list[TurnView]:
        async with self.database.sessions() as session:
            rows = await session.scalars(
                select(Turn).where(Turn.id > floor_id).order_by(Turn.id).limit(limit)
            )
            return [self.turn_view(t) for t in rows]

    async def max_ids(self) -> tuple[int, int]:
        """The newest turn id and outreach stage id: where a fresh feed starts reading."""
        async with self.database.sessions() as session:
            turn = await session.scalar(select(func.max(Turn.id)))
            stage = await session.scalar(select(func.max(OutreachStage.id)))
            return int(turn or 0), int(stage or 0)

    # -- users and intents -------------------------------------------------------------------------

    async def users(self, *, q: str | None = None, limit: int = 50, offset: int = 0) -> Page[UserSummary]:
        conditions: list[ColumnElement[bool]] = []
        if q:
            pattern = like_pattern(q)
            conditions.append(
                or_(
                    User.id.ilike(pattern, escape="\\"),
                    User.display_name.ilike(pattern, escape="\\"),
                    exists().where(
                        IntentRecord.user_id == User.id, IntentRecord.intent.ilike(pattern, escape="\\")
                    ),
                )
            )
        query = (
            select(User)
            .where(*conditions)
            .order_by(User.last_seen_at.desc(), User.id)
            .limit(limit)
            .offset(offset)
        )
        async with self.database.sessions() as session:
            total = await session.scalar(select(func.count()).select_from(User).where(*conditions))
            users = list(await session.scalars(query))
        items = await self._user_summaries(users)
        return Page[UserSummary](items=items, total=int(total or 0), limit=limit, offset=offset)

    async def _user_summaries(self, users: Sequence[User]) -> list[UserSummary]:
        ids = [u.id for u in users]
        if not ids:
            return []
        live_users = set()
        async with self.database.sessions() as session:
            calls = dict(
                (
                    await session.execute(
                        select(Call.user_id, func.count()).where(Call.user_id.in_(ids)).group_by(Call.user_id)
                    )
                ).all()
            )
            intents: dict[str, list[str]] = defaultdict(list)
            for user_id, intent in await session.execute(
                select(IntentRecord.user_id, IntentRecord.intent)
                .where(IntentRecord.user_id.in_(ids), IntentRecord.status == "open")
                .order_by(IntentRecord.updated_at.desc())
            ):
                intents[user_id].append(intent)
            live_users = set(
                await session.scalars(
                    select(LiveSession.user_id).where(LiveSession.user_id.in_(ids), self._fresh())
                )
            )
        return [
            UserSummary(
                id=u.id,
                display_name=u.display_name,
                created_at=u.created_at,
                last_seen_at=u.last_seen_at,
                calls=int(calls.get(u.id, 0)),
                live=u.id in live_users,
                open_intents=intents.get(u.id, []),
            )
            for u in users
        ]

    async def user(self, user_id: str) -> UserDetail:
        async with self.database.sessions() as session:
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound(f"no user {user_id!r}")
            records = list(
                await session.scalars(
                    select(IntentRecord)
                    .where(IntentRecord.user_id == user_id)
                    .order_by(IntentRecord.updated_at.desc(), IntentRecord.id.desc())
                )
            )
            recent = list(
                await session.scalars(
                    select(Call.id).where(Call.user_id == user_id).order_by(Call.started_at.desc()).limit(20)
                )
            )
        [summary] = await self._user_summaries([user])
        return UserDetail(
            **summary.model_dump(),
            attributes=user.attributes or {},
            intents=await self.intent_views(records),
            recent_calls=await self.call_summaries(recent),
        )

    async def intent_views(self, records: Sequence[IntentRecord]) -> list[IntentView]:
        turn_ids = {t for r in records for t in (r.evidence or [])[-MAX_EVIDENCE_SHOWN:]}
        evidence: dict[int, EvidenceTurn] = {}
        if turn_ids:
            async with self.database.sessions() as session:
                rows = await session.execute(
                    select(Turn.id, Turn.call_id, Turn.index, Turn.user_text, Turn.started_at).where(
                        Turn.id.in_(sorted(turn_ids))
                    )
                )
                for turn_id, call_id, index, text, started_at in rows:
                    evidence[turn_id] = EvidenceTurn(
                        turn_id=turn_id, call_id=call_id, index=index, user_text=text, started_at=started_at
                    )
        return [
            IntentView(
                id=r.id,
                user_id=r.user_id,
                intent=r.intent,
                confidence=r.confidence,
                status=r.status,  # checked by the store's STATUSES
                analyzer=r.analyzer,
                detected_at=r.detected_at,
                updated_at=r.updated_at,
                evidence=[evidence[t] for t in sorted(r.evidence or []) if t in evidence],
            )
            for r in records
        ]

    async def intent(self, record_id: int) -> IntentView:
        async with self.database.sessions() as session:
            row = await session.get(IntentRecord, record_id)
        if row is None:
            raise NotFound(f"no intent record {record_id}")
        [view] = await self.intent_views([row])
        return view

    async def intents_changed_since(self, since: datetime) -> list[IntentView]:
        async with self.database.sessions() as session:
            rows = list(
                await session.scalars(
                    select(IntentRecord)
                    .where(IntentRecord.updated_at >= since)
                    .order_by(IntentRecord.id)
                    .limit(500)
                )
            )
        return await self.intent_views(rows)

    # -- knowledge --------------------------------------------------------------------------------------

    async def knowledge(
        self, *, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> KnowledgeOverview:
        conditions = [KnowledgeDocument.state == state] if state else []
        query = (
            select(KnowledgeDocument)
            .where(*conditions)
            .order_by(KnowledgeDocument.updated_at.desc(), KnowledgeDocument.doc_id)
        )
        async with self.database.sessions() as session:
            total = await session.scalar(
                select(func.count()).select_from(KnowledgeDocument).where(*conditions)
            )
            rows = await session.scalars(query.limit(limit).offset(offset))
            items = [DocumentState.model_validate(r) for r in rows]
            states = dict(
                (
                    await session.execute(
                        select(KnowledgeDocument.state, func.count()).group_by(KnowledgeDocument.state)
                    )
                ).all()
            )
            last = await session.scalar(
                select(KnowledgeDocument).order_by(KnowledgeDocument.updated_at.desc()).limit(1)
            )
        return KnowledgeOverview(
            documents=Page[DocumentState](items=items, total=int(total or 0), limit=limit, offset=offset),
            states={k: int(v) for k, v in states.items()},
            last_ingestion=None if last is None else DocumentState.model_validate(last),
        )

    async def documents_changed_since(self, since: datetime) -> list[DocumentState]:
        async with self.database.sessions() as session:
            rows = await session.scalars(
                select(KnowledgeDocument)
                .where(KnowledgeDocument.updated_at >= since)
                .order_by(KnowledgeDocument.updated_at)
                .limit(500)
            )
            return [DocumentState.model_validate(r) for r in rows]

    # -- outreach -------------------------------------------------------------------------------------

    async def stages_after(
        self, floor_id: int, limit: int = 500
    ) -> list[tuple[OutreachStage, OutreachEvent]]:
        query = (
            select(OutreachStage, OutreachEvent)
            .join(OutreachEvent, OutreachEvent.id == OutreachStage.event_id)
            .where(OutreachStage.id > floor_id)
            .order_by(OutreachStage.id)
            .limit(limit)
        )
        async with self.database.sessions() as session:
            return [(stage, event) for stage, event in (await session.execute(query)).all()]

    # -- charts ------------------------------------------------------------------------------------------

    async def charts(self, window_h: float = 24.0) -> Charts:
        now = utcnow()
        since = now - timedelta(hours=window_h)
        samples = await self._stage_samples(since)
        hourly = window_h <= 72
        step = timedelta(hours=1) if hourly else timedelta(days=1)
        start = since.replace(minute=0, second=0, microsecond=0)
        if not hourly:
            start = start.replace(hour=0)
        buckets: list[datetime] = []
        while start <= now:
            buckets.append(start)
            start += step
        series: dict[str, list[int]] = {}
        async with self.database.sessions() as session:
            for intent, detected_at in await session.execute(
                select(IntentRecord.intent, IntentRecord.detected_at).where(IntentRecord.detected_at >= since)
            ):
                slot = int((_utc(detected_at) - buckets[0]) / step)
                counts = series.setdefault(intent, [0] * len(buckets))
                if 0 <= slot < len(buckets):
                    counts[slot] += 1
            reached = dict(
                (
                    await session.execute(
                        select(OutreachStage.stage, func.count(func.distinct(OutreachStage.event_id)))
                        .join(OutreachEvent, OutreachEvent.id == OutreachStage.event_id)
                        .where(OutreachEvent.created_at >= since)
                        .group_by(OutreachStage.stage)
                    )
                ).all()
            )
        return Charts(
            window_h=window_h,
            latency=LatencyHistogram(
                edges_s=LATENCY_EDGES_S,
                stages={stage: histogram(samples[stage], LATENCY_EDGES_S) for stage in STAGES},
            ),
            intents=IntentSeries(buckets=buckets, series=series),
            funnel=[FunnelStep(stage=s, events=int(reached.get(s, 0))) for s in (*FUNNEL, *FUNNEL_ENDS)],
        )
