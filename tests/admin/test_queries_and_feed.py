"""What the dashboard reads (on SQLite and the real PostgreSQL), and the change feed that tells
every node's dashboards what changed, whichever node wrote it."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from voiceagent.admin.feed import ChangeFeed
from voiceagent.admin.live import LiveHub
from voiceagent.admin.queries import AdminQueries, histogram, like_pattern, percentile
from voiceagent.admin.schemas import LiveUpdate
from voiceagent.admin.settings import AdminSettings
from voiceagent.events import AskEvent, AskPayload
from voiceagent.jobs.summaries import CallSummaries, SummaryIntent
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.outreach.analysis.base import IntentFinding
from voiceagent.outreach.intent_store import IntentStore
from voiceagent.outreach.ledger import OutreachLedger, Status
from voiceagent.outreach.registry import SessionRegistry
from voiceagent.store import Database, NewTurn, Store, TurnMetrics


def _turn(at: datetime, user: str, agent: str = "ok", **fields: object) -> NewTurn:
    return NewTurn(
        started_at=at, ended_at=at + timedelta(seconds=2), user_text=user, agent_text=agent, **fields
    )  # type: ignore[arg-type]


async def _seed(database: Database) -> dict[str, object]:
    store = Store(database)
    now = datetime.now(UTC)
    for user in ("ann", "bob"):
        await store.touch_user(user)
    ann = await store.start_call("ann", "node-a", call_id="call-ann")
    bob = await store.start_call("bob", "node-b", call_id="call-bob")
    turns = [
        await store.add_turn(
            ann.id,
            _turn(now, "where is my parcel", metrics=TurnMetrics(asr_s=0.2, voice_to_voice_s=1.0)),
        ),
        await store.add_turn(
            ann.id,
            _turn(
                now,
                "100% sure, it's <script>alert(1)</script>",
                interrupted=True,
                metrics=TurnMetrics(asr_s=0.4, voice_to_voice_s=2.0),
            ),
        ),
        await store.add_turn(
            ann.id, _turn(now, "", "Did your parcel arrive?", initiator="agent", event_id="e1")
        ),
        await store.add_turn(bob.id, _turn(now, "cancel my subscription", metrics=TurnMetrics(asr_s=0.3))),
    ]
    await store.end_call(bob.id, "hangup")
    registry = SessionRegistry(database, stale_after_s=30)
    await registry.register(ann.id, "ann", "node-a")
    [intent] = await IntentStore(database).record(
        [
            IntentFinding(
                user_id="ann", intent="parcel_status", confidence=0.9, evidence=[turns[0].id], analyzer="t"
            )
        ]
    )
    ledger = OutreachLedger(database)
    ask = AskEvent(idempotency_key="k1", payload=AskPayload(user_id="ann", question="Did it arrive?"))
    record, _ = await ledger.decide(ask, node_id="scheduler")
    await ledger.mark(record.id, Status.PUBLISHED, node_id="scheduler")
    await DocumentStates(database).failed("faq.md", "v1", "embeddings_failed", "engine down")
    return {"turns": turns, "intent": intent, "event": record}


async def test_overview_calls_users_and_charts_read_the_store(database: Database) -> None:
    seeded = await _seed(database)
    queries = AdminQueries(database, stale_after_s=30)

    overview = await queries.overview()
    assert overview.live_calls == 1 and [(n.node_id, n.live_calls) for n in overview.nodes] == [("node-a", 1)]
    latency = {s.stage: s for s in overview.latency}
    assert (latency["asr"].count, latency["asr"].p50_s, latency["asr"].p95_s) == (3, 0.3, 0.4)
    assert latency["voice_to_voice"].p50_s == 1.0 and latency["retrieval"].p50_s is None
    assert overview.calls_today == 2 and overview.turns_today == 4
    assert overview.outreach_today == {"published": 1} and overview.open_intents == 1
    assert overview.documents == {"failed": 1}

    everything = await queries.calls()
    assert [c.id for c in everything.items] == ["call-bob", "call-ann"]  # newest first
    ann = next(c for c in everything.items if c.id == "call-ann")
    assert (ann.live, ann.turns, ann.barge_ins, ann.prompts) == (True, 3, 1, 1)
    assert ann.last_user_text.startswith("100% sure")
    assert [c.id for c in (await queries.calls(q="subscription")).items] == ["call-bob"]
    assert [c.id for c in (await queries.calls(live=True)).items] == ["call-ann"]
    assert [c.id for c in (await queries.calls(live=False)).items] == ["call-bob"]
    # The search's own % and _ and quotes are text, not SQL or wildcards.
    assert [c.id for c in (await queries.calls(q="100%")).items] == ["call-ann"]
    assert (await queries.calls(q="%")).total == 1  # only the transcript with a literal %
    assert (await queries.calls(q="' OR 1=1 --")).total == 0
    paged = await queries.calls(limit=1, offset=1)
    assert (len(paged.items), paged.total) == (1, 2)

    detail = await queries.call("call-ann")
    assert [t.index for t in detail.transcript] == [1, 2, 3]
    assert detail.transcript[1].user_text.endswith("<script>alert(1)</script>")  # escaped by the page
    assert (detail.transcript[2].initiator, detail.transcript[2].event_id) == ("agent", "e1")
    assert detail.after_call is None  # not summarized yet
    first_turn = detail.transcript[0].id
    intent = SummaryIntent(intent="parcel_status", confidence=0.91, evidence=[first_turn])
    await CallSummaries(database).save(
        "call-ann", summary="Ann asked where her parcel is.", intents=[intent], model="m"
    )
    recap = (await queries.call("call-ann")).after_call
    assert recap is not None and recap.summary == "Ann asked where her parcel is."
    assert [(i.intent, i.evidence) for i in recap.intents] == [("parcel_status", [first_turn])]

    user = await queries.user("ann")
    assert user.live and user.open_intents == ["parcel_status"]
    [intent] = user.intents
    assert [e.user_text for e in intent.evidence] == ["where is my parcel"]
    assert [c.id for c in user.recent_calls] == ["call-ann"]
    assert [u.id for u in (await queries.users(q="parcel")).items] == ["ann"]

    charts = await queries.charts()
    assert sum(charts.latency.stages["asr"]) == 3 and len(charts.latency.stages["asr"]) == len(
        charts.latency.edges_s
    )
    assert sum(charts.intents.series["parcel_status"]) == 1
    funnel = {f.stage: f.events for f in charts.funnel}
    assert (funnel["decided"], funnel["published"], funnel["heard"]) == (1, 1, 0)

    docs = await queries.knowledge()
    assert docs.states == {"failed": 1} and docs.last_ingestion is not None
    assert docs.documents.items[0].reason == "embeddings_failed"
    assert seeded["intent"] is not None


def test_percentiles_histograms_and_like_patterns() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0
    assert histogram([0.05, 0.15, 9.0], [0.0, 0.1, 1.0]) == [1, 1, 1]
    assert like_pattern("50%_a\\") == "%50\\%\\_a\\\\%"


def _hub() -> LiveHub:
    hub = LiveHub(AdminSettings(), "here")
    hub.watched.set()
    return hub


async def test_the_feed_sends_each_change_once_from_whichever_node_wrote_it(database: Database) -> None:
    queries = AdminQueries(database, stale_after_s=30)
    feed = ChangeFeed(database, queries, _hub(), poll_s=0.1)
    store, registry = Store(database), SessionRegistry(database, stale_after_s=30)
    await store.touch_user("cat")
    before = await store.start_call("cat", "old-node", call_id="before")  # history: not sent
    await store.add_turn(before.id, _turn(datetime.now(UTC), "said before anyone watched"))
    await DocumentStates(database).queued("old-doc", "v0", "api")
    await feed._baseline()
    assert await feed.collect() == []

    call = await store.start_call("cat", "node-b", call_id="call-cat")
    await registry.register(call.id, "cat", "node-b")
    turn = await store.add_turn(call.id, _turn(datetime.now(UTC), "hello <b>there</b>"))
    intent_store = IntentStore(database)
    await intent_store.record(
        [IntentFinding(user_id="cat", intent="billing", confidence=0.8, evidence=[turn.id], analyzer="t")]
    )
    ledger = OutreachLedger(database)
    event, _ = await ledger.decide(
        AskEvent(idempotency_key="k2", payload=AskPayload(user_id="cat", question="Paid?")), node_id="sched"
    )
    await DocumentStates(database).queued("doc", "v1", "api")

    updates = await feed.collect()
    kinds = [u.type for u in updates]
    assert kinds == ["call.started", "turn", "outreach", "intent", "knowledge"], kinds
    started, said, decided, found, queued = updates
    assert started.call is not None and (started.call.id, started.node_id) == ("call-cat", "node-b")
    assert said.turn is not None and said.turn.user_text == "hello <b>there</b>"
    assert decided.outreach is not None and (decided.outreach.event_id, decided.outreach.stage) == (
        event.id,
        "decided",
    )
    assert found.intent is not None and found.intent.evidence[0].turn_id == turn.id
    assert queued.document is not None and queued.document.state == "queued"
    assert await feed.collect() == []  # nothing twice

    [record] = await intent_store.for_user("cat")
    await intent_store.set_status(record.id, "resolved")
    await registry.unregister(call.id)
    await store.end_call(call.id, "hangup")
    updates = await feed.collect()
    assert [u.type for u in updates] == ["call.ended", "intent"]
    assert updates[0].call is not None and updates[0].call.ended_at is not None
    assert updates[1].intent is not None and updates[1].intent.status == "resolved"


@pytest.mark.postgres
@pytest.mark.integration
async def test_on_postgresql_a_commit_on_another_node_wakes_the_feed_at_once(postgres_url: str) -> None:
    """The feed polls only every 60 s here: an update within 15 s can only come from the
    trigger's NOTIFY, delivered to this node's LISTEN connection at the other node's commit."""
    from tests.conftest import open_migrated

    here, there = await open_migrated(postgres_url), await open_migrated(postgres_url)
    hub = _hub()
    received: list[LiveUpdate] = []
    hub.publish = received.extend  # type: ignore[method-assign]
    feed = ChangeFeed(here, AdminQueries(here, stale_after_s=30), hub, poll_s=60)
    stop = asyncio.Event()
    running = asyncio.create_task(feed.run(stop))
    try:
        async with asyncio.timeout(15):
            while not feed.listening:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # the first (empty) read has happened
        other = Store(there)
        await other.touch_user("dan")
        call = await other.start_call("dan", "node-far", call_id="far")
        await other.add_turn(call.id, _turn(datetime.now(UTC), "hi from afar"))
        async with asyncio.timeout(15):
            while not any(u.type == "turn" for u in received):
                await asyncio.sleep(0.05)
        [said] = [u for u in received if u.type == "turn"]
        assert said.turn is not None and said.turn.user_text == "hi from afar"
    finally:
        stop.set()
        hub.watched.set()
        async with asyncio.timeout(10):  # stopping does not wait out the 60 s poll
            await running
        await here.close()
        await there.close()
