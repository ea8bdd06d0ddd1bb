"""The scheduler's two jobs, each returning the counts recorded on its run row.

``analysis`` reads the user turns after the ``intent-analysis`` watermark in batches, runs every
analyzer over each batch, records the confident findings, and only then advances the watermark:
a run that dies mid-batch leaves the batch to the next run (recording is idempotent: a finding
merges into its user's intent record). A batch an analyzer could not analyse (its
``last_failures``) holds the watermark just before its earliest turn and fails the run, after the
rest is recorded. On PostgreSQL only turns that ended a minute ago are read, so a turn whose id
commits late is not skipped. Then it applies the greet rule to *all* open intents,
not just those changed in this run, leaning on the idempotency keys: that heals by itself (a
failed publish, a template variable added to a user later, a crashed run are all retried next
run) at the cost of reading every open intent each run. An intent already sent by this process
costs 0.05-0.08 ms (this process remembers the keys it sent, the publisher is not asked); the
rest go to the publisher a page at a time (``send_many``): ~0.8 ms a new decision, ledger writes
included (bench ``outreach_scale``: 48,000 greetings in 40 s, SQLite, in-process bus).

``checkin`` asks each live call silent for ``checkin_after_silence_s`` whether the caller is
still there, once per call.

Publishing goes through :class:`Publisher`; a failed send is counted and the job goes on with
the others, then fails the run (``JobFailed``, stats kept) so the slot shows as failed. The other
engineers' analysis pieces are reached through the small protocols below.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select

from voiceagent.config import OutreachSettings
from voiceagent.events.envelope import AskEvent, GreetEvent, utcnow
from voiceagent.outreach.intents import Intents
from voiceagent.outreach.rules import (
    LiveCall,
    OpenIntent,
    Skip,
    UserView,
    checkin_key,
    decide_checkins,
    decide_returning,
)
from voiceagent.outreach.runs import Watermarks
from voiceagent.outreach.scheduler import JobFailed, JobFn
from voiceagent.store.database import Database
from voiceagent.store.models import LiveSession, Turn, User

log = logging.getLogger(__name__)

ANALYSIS_WATERMARK = "intent-analysis"
OPEN_INTENTS_PAGE = 500
TURN_SETTLE_S = 60.0
_SENT_KEYS_MAX = 200_000


class Publisher(Protocol):
    """OutreachPublisher: records, routes and publishes; a known key returns the first event's id."""

    async def send(self, event: GreetEvent | AskEvent) -> str: ...

    async def send_many(self, events: Sequence[GreetEvent | AskEvent]) -> list[str | Exception]:
        """Each event's id, or the exception that stopped it: a run publishes thousands at once."""
        ...


class Utterance(Protocol):
    @property
    def turn_id(self) -> int: ...
    @property
    def user_id(self) -> str: ...
    @property
    def text(self) -> str: ...


class Finding(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def confidence(self) -> float: ...


class BatchFailure(Protocol):
    @property
    def turn_ids(self) -> Sequence[int]: ...
    @property
    def error(self) -> str: ...


class Analyzer(Protocol):
    """IntentAnalyzer: a batch it could not analyse is listed in ``last_failures``, not raised."""

    @property
    def last_failures(self) -> Sequence[BatchFailure]: ...

    async def analyze(self, utterances: list[Any], min_confidence: float = ...) -> Sequence[Finding]: ...


class IntentStoreLike(Protocol):
    async def record(self, findings: list[Any]) -> Any: ...

    async def open_intents(
        self, user_ids: Collection[str] | None = None, limit: int = ..., offset: int = ...
    ) -> Sequence[OpenIntent]: ...


class ReadTurns(Protocol):
    """``user_turns_after``: user turns with id > ``after_turn_id``, oldest first."""

    async def __call__(self, database: Database, after_turn_id: int, limit: int) -> Sequence[Utterance]: ...


@dataclass
class _SentKeys:
    """Keys this process already sent: repeated decisions skip the publisher's round trip."""

    limit: int = _SENT_KEYS_MAX
    keys: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def add(self, key: str) -> None:
        self.keys[key] = None
        self.keys.move_to_end(key)
        while len(self.keys) > self.limit:
            self.keys.popitem(last=False)

    def keep_only(self, wanted: Callable[[str], bool]) -> None:
        for key in [k for k in self.keys if not wanted(k)]:
            del self.keys[key]


class _Sender:
    """Sends decisions, counting what happened; remembers the first failure for the run's detail."""

    def __init__(self, publisher: Publisher, sent: _SentKeys, stats: dict[str, Any]) -> None:
        self.publisher = publisher
        self.sent = sent
        self.stats = stats
        self.first_error: str | None = None

    async def send(self, decisions: Sequence[tuple[GreetEvent | AskEvent, str]]) -> None:
        """Publish ``(event, counter)`` decisions in one batch; ``counter`` names the stat."""
        fresh = []
        for event, counter in decisions:
            if event.idempotency_key in self.sent:
                self.stats["already_sent"] += 1
            else:
                fresh.append((event, counter))
        if not fresh:
            return
        outcomes = await self.publisher.send_many([event for event, _ in fresh])
        for (event, counter), outcome in zip(fresh, outcomes, strict=True):
            if isinstance(outcome, Exception):
                self.stats["publish_failed"] += 1
                self.first_error = self.first_error or f"{type(outcome).__name__}: {outcome}"
                log.warning("outreach %s for %s not published: %s", counter, event.payload.user_id, outcome)
                continue
            self.sent.add(event.idempotency_key)
            self.stats["duplicates" if outcome != event.id else counter] += 1

    def raise_if_failed(self, job: str) -> None:
        failed = self.stats["publish_failed"]
        if failed:
            raise JobFailed(f"{job}: {failed} publish(es) failed; first: {self.first_error}", self.stats)


class AnalysisJob:
    def __init__(
        self,
        database: Database,
        settings: OutreachSettings,
        *,
        analyzers: Sequence[Analyzer],
        intent_store: IntentStoreLike,
        read_turns: ReadTurns,
        publisher: Publisher,
        intents: Intents,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.settings = settings
        self.analyzers = list(analyzers)
        self.intent_store = intent_store
        self.read_turns = read_turns
        self.publisher = publisher
        self.intents = intents
        self.clock = clock
        self.watermarks = Watermarks(database)
        self._sent = _SentKeys()

    async def __call__(self, slot: datetime) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "turns": 0,
            "batches": 0,
            "findings": 0,
            "recorded": 0,
            "watermark": 0,
            "analysis_failures": 0,
            "open_intents": 0,
            "greets": 0,
            "asks": 0,
            "duplicates": 0,
            "already_sent": 0,
            "skipped_template": 0,
            "skipped_unknown_intent": 0,
            "publish_failed": 0,
        }
        try:
            analysis_errors = await self._analyse(stats)
        except Exception as exc:
            raise JobFailed(f"analysis: {type(exc).__name__}: {exc}", stats) from exc
        if self.settings.rules.greet_returning:
            sender = _Sender(self.publisher, self._sent, stats)
            await self._greet(sender, stats)
            sender.raise_if_failed("greet")
        if analysis_errors:
            raise JobFailed(
                f"analysis: {len(analysis_errors)} batch(es) failed, watermark held at {stats['watermark']}; "
                f"first: {analysis_errors[0]}",
                stats,
            )
        return stats

    async def _analyse(self, stats: dict[str, Any]) -> list[str]:
        """Analyse batch after batch; return the analyzers' batch failures (the watermark stops
        just before the earliest failed turn, so the next run retries from there)."""
        analysis = self.settings.analysis
        mark = await self.watermarks.get(ANALYSIS_WATERMARK)
        stats["watermark"] = mark
        if not self.analyzers:  # no backend configured: leave the turns for one that will be
            return []
        settled = await self._settled_turn_id()
        while True:
            read = list(await self.read_turns(self.database, after_turn_id=mark, limit=analysis.batch_turns))
            batch = [u for u in read if settled is None or u.turn_id <= settled]
            if not batch:
                return []
            findings: list[Any] = []
            errors: list[str] = []
            hold: int | None = None
            for analyzer in self.analyzers:
                findings.extend(await analyzer.analyze(batch, min_confidence=analysis.min_confidence))
                for failure in analyzer.last_failures:
                    errors.append(f"{getattr(analyzer, 'name', type(analyzer).__name__)}: {failure.error}")
                    if failure.turn_ids:
                        first = min(failure.turn_ids)
                        hold = first if hold is None else min(hold, first)
            kept = [f for f in findings if f.confidence >= analysis.min_confidence]
            if kept:
                await self.intent_store.record(kept)
            # Only now: a crash before this line re-reads the batch, never loses it.
            last = max(u.turn_id for u in batch) if hold is None else hold - 1
            mark = await self.watermarks.advance(ANALYSIS_WATERMARK, last)
            stats["turns"] += len(batch)
            stats["batches"] += 1
            stats["findings"] += len(findings)
            stats["recorded"] += len(kept)
            stats["watermark"] = mark
            if errors:
                stats["analysis_failures"] = len(errors)
                return errors
            if len(read) < analysis.batch_turns or len(batch) < len(read):
                return []

    async def _settled_turn_id(self) -> int | None:
        """On PostgreSQL a turn id can commit after a higher one was read (ids come from a
        sequence); reading only turns that ended ``TURN_SETTLE_S`` ago keeps the watermark from
        skipping one. SQLite serialises writers, so ids commit in order there: None, no limit."""
        if self.database.dialect != "postgresql":
            return None
        before = self.clock() - timedelta(seconds=TURN_SETTLE_S)
        async with self.database.sessions() as session:
            value = await session.scalar(
                select(func.max(Turn.id)).where(func.coalesce(Turn.ended_at, Turn.started_at) < before)
            )
            return int(value or 0)

    async def _greet(self, sender: _Sender, stats: dict[str, Any]) -> None:
        now = self.clock()
        in_call = {call.user_id for call in await live_calls(self.database, self.settings.stale_after_s, now)}
        offset = 0
        first_skip: str | None = None
        while True:
            page = list(await self.intent_store.open_intents(limit=OPEN_INTENTS_PAGE, offset=offset))
            users = await load_users(self.database, {r.user_id for r in page})
            decisions: list[tuple[GreetEvent | AskEvent, str]] = []
            for record in page:
                decision = decide_returning(
                    record,
                    self.intents,
                    users.get(record.user_id),
                    in_call=record.user_id in in_call,
                    rules=self.settings.rules,
                    now=now,
                )
                if isinstance(decision, Skip):
                    stats[f"skipped_{decision.reason}"] += 1
                    first_skip = first_skip or f"{decision.reason}: {decision.detail}"
                else:
                    decisions.append((decision, "asks" if isinstance(decision, AskEvent) else "greets"))
            await sender.send(decisions)
            stats["open_intents"] += len(page)
            if len(page) < OPEN_INTENTS_PAGE:
                break
            offset += len(page)
        skipped = sum(v for k, v in stats.items() if k.startswith("skipped_"))
        if skipped:  # one line a run, not one per user
            log.warning("%d open intent(s) got no prompt this run; first: %s", skipped, first_skip)


class CheckinJob:
    def __init__(
        self,
        database: Database,
        settings: OutreachSettings,
        *,
        publisher: Publisher,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.settings = settings
        self.publisher = publisher
        self.clock = clock
        self._sent = _SentKeys()

    async def __call__(self, slot: datetime) -> dict[str, Any]:
        now = self.clock()
        calls = await live_calls(self.database, self.settings.stale_after_s, now)
        decisions = decide_checkins(
            calls, rules=self.settings.rules, stale_after_s=self.settings.stale_after_s, now=now
        )
        stats: dict[str, Any] = {
            "live_calls": len(calls),
            "silent": len(decisions),
            "checkins": 0,
            "duplicates": 0,
            "already_sent": 0,
            "publish_failed": 0,
        }
        live_keys = {checkin_key(call.call_id) for call in calls}
        self._sent.keep_only(lambda key: key in live_keys)  # ended calls never come back
        sender = _Sender(self.publisher, self._sent, stats)
        await sender.send([(event, "checkins") for event in decisions])
        sender.raise_if_failed("checkin")
        return stats


async def live_calls(database: Database, stale_after_s: float, now: datetime) -> list[LiveCall]:
    """Calls on nodes that still heartbeat (the registry's notion of live)."""
    query = select(LiveSession).where(LiveSession.heartbeat_at >= now - timedelta(seconds=stale_after_s))
    async with database.sessions() as session:
        return [
            LiveCall(
                call_id=row.call_id,
                user_id=row.user_id,
                heartbeat_at=row.heartbeat_at,
                last_activity_at=row.last_activity_at,
            )
            for row in await session.scalars(query)
        ]


async def load_users(database: Database, user_ids: Collection[str]) -> dict[str, UserView]:
    if not user_ids:
        return {}
    async with database.sessions() as session:
        rows = await session.scalars(select(User).where(User.id.in_(list(user_ids))))
        return {
            row.id: UserView(id=row.id, display_name=row.display_name, attributes=row.attributes or {})
            for row in rows
        }


def build_jobs(
    database: Database,
    settings: OutreachSettings,
    *,
    publisher: Publisher,
    analyzers: Sequence[Analyzer],
    intent_store: IntentStoreLike,
    read_turns: ReadTurns,
    intents: Intents,
    clock: Callable[[], datetime] = utcnow,
) -> Mapping[str, JobFn]:
    return {
        "analysis": AnalysisJob(
            database,
            settings,
            analyzers=analyzers,
            intent_store=intent_store,
            read_turns=read_turns,
            publisher=publisher,
            intents=intents,
            clock=clock,
        ),
        "checkin": CheckinJob(database, settings, publisher=publisher, clock=clock),
    }
