"""The outreach rules (open intent → greeting or question; silent call → one check-in) and the two
scheduler jobs that apply them, with a fake analyzer, intent store and publisher over SQLite."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from voiceagent.config import REPO_ROOT, AnalysisSettings, OutreachRules, OutreachSettings, StoreSettings
from voiceagent.events.envelope import AskEvent, GreetEvent
from voiceagent.outreach.analysis import BatchFailure
from voiceagent.outreach.intents import Intents, load_intents
from voiceagent.outreach.jobs import ANALYSIS_WATERMARK, AnalysisJob, CheckinJob
from voiceagent.outreach.rules import (
    KEY_MAX,
    LiveCall,
    Skip,
    UserView,
    checkin_key,
    decide_checkins,
    decide_returning,
    greet_key,
)
from voiceagent.outreach.runs import Watermarks
from voiceagent.outreach.scheduler import JobFailed
from voiceagent.store import Database, NewTurn, Store
from voiceagent.store.models import LiveSession
from voiceagent.testing.fakes import FakePublisher

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
RULES = OutreachRules()
INTENTS = load_intents(REPO_ROOT / "configs" / "intents.yaml")


@dataclass(frozen=True)
class Record:
    user_id: str
    intent: str
    confidence: float = 0.9
    evidence: list[int] = field(default_factory=list)
    status: str = "open"
    updated_at: datetime = NOW - timedelta(hours=2)


ANN = UserView(id="ann", display_name="Ann", attributes={"item": "blue kettle"})


# --- the greet rule ---------------------------------------------------------------------------


def test_a_returning_user_is_greeted_from_the_intents_template() -> None:
    event = decide_returning(Record("ann", "order_status"), INTENTS, ANN, in_call=False, rules=RULES, now=NOW)
    assert isinstance(event, GreetEvent)
    assert event.payload.user_id == "ann"
    assert event.payload.text == (
        "Welcome back, Ann. Last time you asked about your blue kettle: would you like an update?"
    )
    assert "order_status" in event.payload.reason
    assert event.idempotency_key == "greet:ann:order_status:2026-11-25"
    assert event.expires_at == NOW + timedelta(seconds=RULES.greet_expires_s)


def test_a_user_in_a_live_call_is_asked_instead_under_the_same_key() -> None:
    record = Record("ann", "order_status")
    greet = decide_returning(record, INTENTS, ANN, in_call=False, rules=RULES, now=NOW)
    ask = decide_returning(record, INTENTS, ANN, in_call=True, rules=RULES, now=NOW)
    assert isinstance(ask, AskEvent) and isinstance(greet, GreetEvent)
    assert ask.payload.question == "Hi Ann, did your blue kettle arrive all right?"
    assert ask.payload.intent == "order_status"
    assert ask.idempotency_key == greet.idempotency_key  # one prompt per intent, whichever form


def test_without_a_display_name_the_user_id_is_the_name() -> None:
    event = decide_returning(
        Record("u-42", "refund"), INTENTS, UserView(id="u-42"), in_call=False, rules=RULES, now=NOW
    )
    assert isinstance(event, GreetEvent)
    assert event.payload.text == "Welcome back, u-42. I can tell you where your refund stands."
    unknown = decide_returning(Record("u-43", "refund"), INTENTS, None, in_call=False, rules=RULES, now=NOW)
    assert isinstance(unknown, GreetEvent) and "u-43" in (unknown.payload.text or "")


@pytest.mark.parametrize("attributes", [{}, {"item": ""}, {"item": "  "}, {"item": None}, {"item": {"a": 1}}])
def test_a_missing_variable_skips_the_decision_rather_than_half_filling_it(
    attributes: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="voiceagent.outreach.rules")  # the job logs a summary
    user = UserView(id="ann", display_name="Ann", attributes=attributes)
    decision = decide_returning(
        Record("ann", "order_status"), INTENTS, user, in_call=False, rules=RULES, now=NOW
    )
    assert isinstance(decision, Skip) and decision.reason == "template"
    assert "item" in decision.detail
    assert "order_status" in caplog.text


def test_a_template_missing_a_variable_falls_back_to_the_other_one() -> None:
    intents = Intents.model_validate(
        {
            "intents": [
                {
                    "name": "order_status",
                    "description": "Where is my order",
                    "variables": ["name", "item"],
                    "examples": {"en": ["Where is my order?"], "zh": ["我的订单呢？"]},
                    "greet": "Welcome back, {name}. Your {item}?",
                    "ask": "Hi {name}, is there news about your order?",
                }
            ]
        }
    )
    user = UserView(id="ann", display_name="Ann")
    decision = decide_returning(
        Record("ann", "order_status"), intents, user, in_call=False, rules=RULES, now=NOW
    )
    assert isinstance(decision, AskEvent)
    assert decision.payload.question == "Hi Ann, is there news about your order?"
    assert decision.idempotency_key == "greet:ann:order_status:2026-11-25"


def test_an_intent_no_longer_in_the_intents_file_is_skipped() -> None:
    decision = decide_returning(Record("ann", "renamed"), INTENTS, ANN, in_call=False, rules=RULES, now=NOW)
    assert isinstance(decision, Skip) and decision.reason == "unknown_intent"


def test_keys_are_stable_across_runs_and_change_with_fresh_evidence() -> None:
    record = Record("ann", "refund")
    first = decide_returning(record, INTENTS, ANN, in_call=False, rules=RULES, now=NOW)
    later = decide_returning(record, INTENTS, ANN, in_call=False, rules=RULES, now=NOW + timedelta(days=3))
    assert isinstance(first, GreetEvent) and isinstance(later, GreetEvent)
    assert first.id != later.id and first.idempotency_key == later.idempotency_key
    found_again = replace(record, updated_at=NOW + timedelta(days=2))
    assert greet_key("ann", "refund", found_again.updated_at) != first.idempotency_key
    # The date is the UTC date, whatever offset (or none) the record carries.
    naive = datetime(2026, 11, 25, 23, 30)
    assert greet_key("ann", "refund", naive) == "greet:ann:refund:2026-11-25"
    east = datetime(2026, 11, 26, 1, 30, tzinfo=timezone(timedelta(hours=3)))  # 22:30 UTC the day before
    assert greet_key("ann", "refund", east) == "greet:ann:refund:2026-11-25"


def test_keys_never_exceed_the_envelope_limit() -> None:
    long_user, long_intent = "u" * 64, "i" * 64
    key = greet_key(long_user, long_intent, NOW)
    assert len(key) <= KEY_MAX and key.startswith("greet:#")
    assert key == greet_key(long_user, long_intent, NOW)
    assert len(checkin_key("c" * 200)) <= KEY_MAX


# --- the check-in rule ------------------------------------------------------------------------


def call(call_id: str, *, silent_s: float, heartbeat_age_s: float = 1.0, user: str = "ann") -> LiveCall:
    return LiveCall(
        call_id=call_id,
        user_id=user,
        heartbeat_at=NOW - timedelta(seconds=heartbeat_age_s),
        last_activity_at=NOW - timedelta(seconds=silent_s),
    )


def test_a_silent_live_call_gets_one_check_in() -> None:
    calls = [
        call("quiet", silent_s=25),
        call("just-quiet", silent_s=RULES.checkin_after_silence_s, user="bob"),
        call("talking", silent_s=3),
        call("dead-node", silent_s=600, heartbeat_age_s=21),  # stale_after_s 20: its node is gone
    ]
    events = decide_checkins(calls, rules=RULES, stale_after_s=20, now=NOW)
    assert [e.idempotency_key for e in events] == ["checkin:quiet", "checkin:just-quiet"]
    first = events[0]
    assert first.payload.question == RULES.checkin_text and first.payload.user_id == "ann"
    assert first.expires_at == NOW + timedelta(seconds=RULES.checkin_expires_s)
    still_quiet = [replace(calls[0], heartbeat_at=NOW + timedelta(minutes=5))]
    again = decide_checkins(still_quiet, rules=RULES, stale_after_s=20, now=NOW + timedelta(minutes=5))
    assert again[0].idempotency_key == first.idempotency_key  # one per call, however long the silence


# --- the jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Utterance:
    turn_id: int
    user_id: str
    text: str


@dataclass(frozen=True)
class Finding:
    user_id: str
    intent: str
    confidence: float
    evidence: list[int]


class KeywordAnalyzer:
    """ "refund" → refund (0.9), "order" → order_status (0.8), "maybe" → refund (0.2)."""

    def __init__(self, fail_turns: Collection[int] = ()) -> None:
        self.seen: list[int] = []
        self.fail_turns = set(fail_turns)
        self.last_failures: list[BatchFailure] = []

    async def analyze(self, utterances: list[Utterance], min_confidence: float = 0.0) -> list[Finding]:
        self.seen.extend(u.turn_id for u in utterances)
        failed = sorted(self.fail_turns & {u.turn_id for u in utterances})
        self.last_failures = [BatchFailure(turn_ids=failed, error="model endpoint down")] if failed else []
        utterances = [u for u in utterances if u.turn_id not in self.fail_turns]
        findings = []
        for u in utterances:
            for word, intent, confidence in (("refund", "refund", 0.9), ("order", "order_status", 0.8)):
                if word in u.text:
                    findings.append(Finding(u.user_id, intent, confidence, [u.turn_id]))
            if "maybe" in u.text:
                findings.append(Finding(u.user_id, "refund", 0.2, [u.turn_id]))
        return findings


class FakeIntentStore:
    def __init__(self, fail_records: int = 0) -> None:
        self.records: dict[tuple[str, str], Record] = {}
        self.fail_records = fail_records
        self.now = NOW

    async def record(self, findings: list[Finding]) -> None:
        if self.fail_records:
            self.fail_records -= 1
            raise ConnectionError("database gone")
        for f in findings:
            old = self.records.get((f.user_id, f.intent))
            evidence = sorted({*(old.evidence if old else []), *f.evidence})
            self.records[(f.user_id, f.intent)] = Record(
                f.user_id, f.intent, f.confidence, evidence, "open", self.now
            )

    async def open_intents(
        self, user_ids: Collection[str] | None = None, limit: int = 100, offset: int = 0
    ) -> list[Record]:
        rows = [r for r in self.records.values() if r.status == "open"]
        rows = [r for r in rows if user_ids is None or r.user_id in user_ids]
        return sorted(rows, key=lambda r: (r.user_id, r.intent))[offset : offset + limit]


class Turns:
    def __init__(self, utterances: Sequence[Utterance]) -> None:
        self.utterances = list(utterances)
        self.reads: list[tuple[int, int]] = []

    async def __call__(self, database: Database, after_turn_id: int, limit: int) -> list[Utterance]:
        self.reads.append((after_turn_id, limit))
        return [u for u in self.utterances if u.turn_id > after_turn_id][:limit]


@pytest.fixture
async def database(sqlite_database: Database) -> Database:
    """Ann and Bob, who called before."""
    store = Store(sqlite_database)
    await store.touch_user("ann", display_name="Ann", attributes={"item": "blue kettle"})
    await store.touch_user("bob", display_name="Bob")
    return sqlite_database


SETTINGS = OutreachSettings(analysis=AnalysisSettings(batch_turns=2, min_confidence=0.5))
TURNS = [
    Utterance(1, "ann", "where is my order"),
    Utterance(2, "bob", "hello"),
    Utterance(3, "bob", "maybe I'd like my money back"),
    Utterance(4, "bob", "I want a refund"),
    Utterance(5, "ann", "thanks"),
]


def analysis_job(
    database: Database,
    *,
    store: FakeIntentStore,
    publisher: FakePublisher,
    turns: Turns,
    analyzer: KeywordAnalyzer | None = None,
    settings: OutreachSettings = SETTINGS,
) -> AnalysisJob:
    return AnalysisJob(
        database,
        settings,
        analyzers=[analyzer or KeywordAnalyzer()],
        intent_store=store,
        read_turns=turns,
        publisher=publisher,
        intents=INTENTS,
        clock=lambda: NOW,
    )


async def test_analysis_records_confident_findings_then_greets_their_users(database: Database) -> None:
    store, publisher, turns = FakeIntentStore(), FakePublisher(), Turns(TURNS)
    stats = await analysis_job(database, store=store, publisher=publisher, turns=turns)(NOW)

    assert turns.reads == [(0, 2), (2, 2), (4, 2)]  # batches of analysis.batch_turns
    assert set(store.records) == {("ann", "order_status"), ("bob", "refund")}  # not the 0.2 "maybe"
    assert await Watermarks(database).get(ANALYSIS_WATERMARK) == 5
    texts = sorted(e.payload.text or "" for e in publisher.published if isinstance(e, GreetEvent))
    assert texts == [
        "Welcome back, Ann. Last time you asked about your blue kettle: would you like an update?",
        "Welcome back, Bob. I can tell you where your refund stands.",
    ]
    assert stats == {
        "turns": 5,
        "batches": 3,
        "findings": 3,
        "recorded": 2,
        "watermark": 5,
        "analysis_failures": 0,
        "open_intents": 2,
        "greets": 2,
        "asks": 0,
        "duplicates": 0,
        "already_sent": 0,
        "skipped_template": 0,
        "skipped_unknown_intent": 0,
        "publish_failed": 0,
    }


async def test_the_watermark_moves_only_after_the_findings_are_stored(database: Database) -> None:
    store, publisher, turns = FakeIntentStore(fail_records=1), FakePublisher(), Turns(TURNS)
    analyzer = KeywordAnalyzer()
    job = analysis_job(database, store=store, publisher=publisher, turns=turns, analyzer=analyzer)
    with pytest.raises(JobFailed, match="database gone") as failed:
        await job(NOW)
    assert failed.value.stats["watermark"] == 0
    assert await Watermarks(database).get(ANALYSIS_WATERMARK) == 0
    assert not store.records and not publisher.published

    stats = await job(NOW)  # the next run reads the same turns again
    assert analyzer.seen[:2] == [1, 2] and analyzer.seen[2:4] == [1, 2]
    assert stats["watermark"] == 5 and stats["turns"] == 5
    assert await Watermarks(database).get(ANALYSIS_WATERMARK) == 5


async def test_a_batch_an_analyzer_failed_holds_the_watermark_before_it(database: Database) -> None:
    store, publisher, turns = FakeIntentStore(), FakePublisher(), Turns(TURNS)
    analyzer = KeywordAnalyzer(fail_turns={4})
    job = analysis_job(database, store=store, publisher=publisher, turns=turns, analyzer=analyzer)
    with pytest.raises(
        JobFailed, match="watermark held at 3; first: KeywordAnalyzer: model endpoint down"
    ) as e:
        await job(NOW)
    assert e.value.stats["analysis_failures"] == 1 and e.value.stats["watermark"] == 3
    assert set(store.records) == {("ann", "order_status")}  # what was found is kept...
    assert e.value.stats["greets"] == 1  # ...and greeted

    analyzer.fail_turns = set()
    stats = await job(NOW + timedelta(minutes=5))  # the failed turn is read again
    assert turns.reads[-2:] == [(3, 2), (5, 2)]
    assert stats["watermark"] == 5 and ("bob", "refund") in store.records


async def test_on_postgresql_only_settled_turns_are_read(store_url: str) -> None:
    database = Database(StoreSettings(url=store_url))
    await database.migrate()
    try:
        store = Store(database)
        await store.touch_user("bob", display_name="Bob")
        call = await store.start_call("bob", node_id="rtc-1")
        said = []
        for ended_ago_s, text in [(120, "I want a refund"), (5, "and where is my order")]:
            end = NOW - timedelta(seconds=ended_ago_s)
            turn = await store.add_turn(
                call.id, NewTurn(started_at=end - timedelta(seconds=2), ended_at=end, user_text=text)
            )
            said.append(Utterance(turn.id, "bob", text))
        intents = FakeIntentStore()
        stats = await analysis_job(database, store=intents, publisher=FakePublisher(), turns=Turns(said))(NOW)
        if database.dialect == "postgresql":  # the turn that ended 5 s ago waits for the next run
            assert stats["watermark"] == said[0].turn_id and set(intents.records) == {("bob", "refund")}
        else:
            assert stats["watermark"] == said[1].turn_id and len(intents.records) == 2
    finally:
        await database.close()


async def test_greetings_are_sent_once_across_runs_and_schedulers(database: Database) -> None:
    store, publisher = FakeIntentStore(), FakePublisher()
    job = analysis_job(database, store=store, publisher=publisher, turns=Turns(TURNS))
    await job(NOW)
    again = await job(NOW + timedelta(minutes=5))  # no new turns; same open intents
    assert again["turns"] == 0 and again["already_sent"] == 2 and again["greets"] == 0
    # Another scheduler process (nothing remembered): the publisher recognises the keys.
    other = analysis_job(database, store=store, publisher=publisher, turns=Turns(TURNS))
    stats = await other(NOW + timedelta(minutes=10))
    assert stats["duplicates"] == 2 and stats["greets"] == 0
    assert len(publisher.published) == 2

    # Bob mentions the refund again on a later day: fresh evidence, a new prompt.
    store.now = NOW + timedelta(days=1)
    turns = Turns([*TURNS, Utterance(6, "bob", "still no refund")])
    stats = await analysis_job(database, store=store, publisher=publisher, turns=turns)(
        NOW + timedelta(days=1)
    )
    assert stats["greets"] == 1
    assert publisher.published[-1].idempotency_key == "greet:bob:refund:2026-11-26"


async def test_a_user_in_a_live_call_is_asked_and_a_missing_variable_is_skipped(database: Database) -> None:
    async with database.sessions.begin() as session:
        session.add(
            LiveSession(
                call_id="c1",
                user_id="bob",
                node_id="rtc-1",
                started_at=NOW - timedelta(minutes=1),
                heartbeat_at=NOW - timedelta(seconds=2),
                last_activity_at=NOW,
            )
        )
    store, publisher = FakeIntentStore(), FakePublisher()
    turns = Turns([Utterance(1, "bob", "I want a refund"), Utterance(2, "bob", "and my order?")])
    stats = await analysis_job(database, store=store, publisher=publisher, turns=turns)(NOW)
    # Bob has no "item" attribute: order_status cannot be said to him at all.
    assert stats["skipped_template"] == 1 and stats["asks"] == 1 and stats["greets"] == 0
    (event,) = publisher.published
    assert isinstance(event, AskEvent) and event.payload.question == "Hi Bob, has your refund come through?"


async def test_a_publish_failure_fails_the_run_and_the_next_run_sends_it(database: Database) -> None:
    store, publisher = FakeIntentStore(), FakePublisher(failures=1)
    job = analysis_job(database, store=store, publisher=publisher, turns=Turns(TURNS))
    with pytest.raises(JobFailed, match="1 publish") as failed:
        await job(NOW)
    assert failed.value.stats["publish_failed"] == 1 and failed.value.stats["greets"] == 1
    assert await Watermarks(database).get(ANALYSIS_WATERMARK) == 5  # the findings are stored

    stats = await job(NOW + timedelta(minutes=5))
    assert stats["greets"] == 1 and stats["already_sent"] == 1 and stats["publish_failed"] == 0
    assert len(publisher.published) == 2


async def test_without_analyzers_the_watermark_stays_put(database: Database) -> None:
    store, turns = FakeIntentStore(), Turns(TURNS)
    job = analysis_job(database, store=store, publisher=FakePublisher(), turns=turns)
    job.analyzers = []
    stats = await job(NOW)
    assert stats["turns"] == 0 and not turns.reads
    assert await Watermarks(database).get(ANALYSIS_WATERMARK) == 0


async def test_greet_returning_off_sends_nothing(database: Database) -> None:
    settings = SETTINGS.model_copy(update={"rules": OutreachRules(greet_returning=False)})
    publisher = FakePublisher()
    job = analysis_job(
        database, store=FakeIntentStore(), publisher=publisher, turns=Turns(TURNS), settings=settings
    )
    stats = await job(NOW)
    assert stats["recorded"] == 2 and stats["open_intents"] == 0 and not publisher.published


async def test_checkin_job_asks_each_silent_call_once(database: Database) -> None:
    async with database.sessions.begin() as session:
        for call_id, user, silent_s, heartbeat_age_s in [
            ("c1", "ann", 30, 1),
            ("c2", "bob", 2, 1),
            ("c3", "bob", 300, 60),  # its node stopped heartbeating
        ]:
            session.add(
                LiveSession(
                    call_id=call_id,
                    user_id=user,
                    node_id="rtc-1",
                    started_at=NOW - timedelta(minutes=10),
                    heartbeat_at=NOW - timedelta(seconds=heartbeat_age_s),
                    last_activity_at=NOW - timedelta(seconds=silent_s),
                )
            )
    publisher = FakePublisher()
    job = CheckinJob(database, OutreachSettings(stale_after_s=20), publisher=publisher, clock=lambda: NOW)
    stats = await job(NOW)
    assert stats == {
        "live_calls": 2,
        "silent": 1,
        "checkins": 1,
        "duplicates": 0,
        "already_sent": 0,
        "publish_failed": 0,
    }
    assert [e.idempotency_key for e in publisher.published] == ["checkin:c1"]
    again = await job(NOW + timedelta(seconds=10))
    assert again["checkins"] == 0 and again["already_sent"] == 1
    fresh = CheckinJob(database, OutreachSettings(stale_after_s=20), publisher=publisher, clock=lambda: NOW)
    assert (await fresh(NOW))["duplicates"] == 1
    assert len(publisher.published) == 1
