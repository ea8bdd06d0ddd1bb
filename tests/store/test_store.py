"""The store's contract, run on the embedded SQLite and on the real PostgreSQL server."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from voiceagent.config import StoreSettings
from voiceagent.store import CallEnded, Database, NewTurn, NotFound, Store, TurnMetrics
from voiceagent.store.models import Base
from voiceagent.store.records import Reference


@pytest.fixture
def store(database: Database) -> Store:
    return Store(database)


def _turn(seconds: int, **fields: object) -> NewTurn:
    start = datetime(2026, 11, 25, 12, 0, tzinfo=UTC) + timedelta(seconds=seconds)
    return NewTurn(started_at=start, ended_at=start + timedelta(seconds=2), **fields)  # type: ignore[arg-type]


async def test_migrations_create_exactly_the_model_schema(database: Database) -> None:
    assert await database.current_revision() == Database.head_revision()

    def diff(sync_conn: object) -> list[object]:
        return compare_metadata(MigrationContext.configure(sync_conn), Base.metadata)  # type: ignore[arg-type]

    async with database.engine.connect() as conn:
        assert await conn.run_sync(diff) == []
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert {"users", "calls", "turns"} <= tables


async def test_downgrade_to_base_and_back(database: Database) -> None:
    await database.downgrade("base")
    async with database.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert tables & {"users", "calls", "turns"} == set()
    assert await database.current_revision() is None
    await database.migrate()
    assert await database.current_revision() == Database.head_revision()


async def test_a_call_with_turns_round_trips(store: Store) -> None:
    user = await store.touch_user("alice", display_name="Alice", attributes={"lang": "en"})
    assert user.created_at.tzinfo is not None
    call = await store.start_call("alice", node_id="rtc-1")
    assert call.active

    first = await store.add_turn(
        call.id,
        _turn(
            0,
            user_text="What's the weather?",
            agent_text="Sunny and warm today.",
            agent_text_heard="Sunny and warm today.",
            metrics=TurnMetrics(
                endpointing_s=0.2,
                asr_s=0.31,
                llm_first_token_s=0.12,
                tts_first_audio_s=0.05,
                voice_to_voice_s=0.74,
            ),
        ),
    )
    second = await store.add_turn(
        call.id,
        _turn(
            10,
            user_text="And tomorrow?",
            agent_text="Tomorrow brings rain in the",
            agent_text_heard="Tomorrow brings",
            interrupted=True,
        ),
    )
    assert (first.index, second.index) == (1, 2)

    ended = await store.end_call(call.id, "hangup")
    assert not ended.active and ended.end_reason == "hangup"

    stored = await store.get_call(call.id)
    assert [t.user_text for t in stored.turns] == ["What's the weather?", "And tomorrow?"]
    assert stored.turns[0].metrics.voice_to_voice_s == pytest.approx(0.74)
    assert stored.turns[1].metrics.asr_s is None
    assert stored.turns[1].interrupted and stored.turns[1].agent_text_heard == "Tomorrow brings"
    assert stored.turns[0].started_at == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def test_times_in_other_zones_are_stored_as_utc(store: Store) -> None:
    await store.touch_user("zoe")
    call = await store.start_call("zoe", node_id="rtc-1")
    beijing = timezone(timedelta(hours=8))
    turn = await store.add_turn(call.id, NewTurn(started_at=datetime(2026, 11, 25, 20, 0, tzinfo=beijing)))
    assert turn.started_at == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert (await store.get_call(call.id)).turns[0].started_at == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


async def test_touch_user_updates_last_seen_and_merges_attributes(store: Store) -> None:
    first = await store.touch_user("bob", attributes={"lang": "en"})
    again = await store.touch_user("bob", display_name="Bob", attributes={"tz": "UTC"})
    assert again.created_at == first.created_at
    assert again.last_seen_at >= first.last_seen_at
    assert again.display_name == "Bob"
    assert again.attributes == {"lang": "en", "tz": "UTC"}


async def test_concurrent_first_sight_of_a_user_creates_it_once(store: Store) -> None:
    users = await asyncio.gather(*(store.touch_user("carol") for _ in range(5)))
    assert {u.id for u in users} == {"carol"}
    assert len({u.created_at for u in users}) == 1


async def test_concurrent_turns_get_distinct_consecutive_indices(store: Store) -> None:
    await store.touch_user("dave")
    call = await store.start_call("dave", node_id="rtc-1")
    turns = await asyncio.gather(*(store.add_turn(call.id, _turn(i)) for i in range(8)))
    assert sorted(t.index for t in turns) == list(range(1, 9))


async def test_end_call_is_idempotent(store: Store) -> None:
    await store.touch_user("erin")
    call = await store.start_call("erin", node_id="rtc-1")
    first = await store.end_call(call.id, "hangup")
    second = await store.end_call(call.id, "peer-timeout")
    assert second.ended_at == first.ended_at and second.end_reason == "hangup"


async def test_bad_references_raise_clear_errors_and_write_nothing(store: Store) -> None:
    with pytest.raises(NotFound, match="user 'ghost' does not exist"):
        await store.start_call("ghost", node_id="rtc-1")
    with pytest.raises(NotFound, match="call 'nope' does not exist"):
        await store.add_turn("nope", _turn(0))
    with pytest.raises(NotFound):
        await store.get_call("nope")
    with pytest.raises(ValueError, match="1-64 characters"):
        await store.touch_user("")

    await store.touch_user("frank")
    call = await store.start_call("frank", node_id="rtc-1")
    await store.end_call(call.id, "hangup")
    with pytest.raises(CallEnded):
        await store.add_turn(call.id, _turn(0, user_text="too late"))
    assert (await store.get_call(call.id)).turns == []
    assert await store.list_calls(user_id="ghost") == []


async def test_list_calls_filters_and_orders_newest_first(store: Store) -> None:
    await store.touch_user("gina")
    await store.touch_user("hank")
    old = await store.start_call("gina", node_id="rtc-1")
    await store.end_call(old.id, "hangup")
    live = await store.start_call("gina", node_id="rtc-2")
    other = await store.start_call("hank", node_id="rtc-1")

    assert {c.id for c in await store.list_calls(active_only=True)} == {live.id, other.id}
    gina = await store.list_calls(user_id="gina")
    assert [c.id for c in gina] == [live.id, old.id]
    assert len(await store.list_calls(limit=1)) == 1


async def test_nodes_migrating_at_once_take_turns(store_url: str) -> None:
    nodes = [Database(StoreSettings(url=store_url)) for _ in range(3)]
    try:
        await asyncio.gather(*(db.migrate() for db in nodes))
        revisions = {await db.current_revision() for db in nodes}
        assert revisions == {Database.head_revision()}
    finally:
        for db in nodes:
            await db.close()


async def test_a_node_waits_out_another_opener_locking_the_file_at_start(sqlite_url: str) -> None:
    """The journal-mode switch skips SQLite's busy handler, so a lock held by another process (a
    node migrating, a backup) must be waited out, not fail the start. The lock outlasts the 2.5 s
    an earlier version waited, which failed CI on a loaded machine."""
    path = sqlite_url.split("///", 1)[1]
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # rollback-journal mode: others read, none can switch it
    released = threading.Timer(3.0, holder.rollback)
    released.start()
    database = Database(StoreSettings(url=sqlite_url))
    try:
        await database.migrate()
        assert await database.current_revision() == Database.head_revision()
        assert not released.is_alive()  # it really waited for the holder
    finally:
        released.cancel()
        holder.close()
        await database.close()


async def test_a_turn_keeps_its_fault_initiator_and_event(store: Store) -> None:
    await store.touch_user("ann")
    call = await store.start_call("ann", node_id="rtc-1")
    prompt = await store.add_turn(
        call.id, _turn(0, agent_text="Hi Ann.", agent_text_heard="Hi", initiator="agent", event_id="evt-7")
    )
    failed = await store.add_turn(call.id, _turn(5, user_text="Hello?", fault="llm: EngineTimeout: no token"))
    stored = await store.get_call(call.id)
    assert [(t.initiator, t.event_id, t.fault) for t in stored.turns] == [
        ("agent", "evt-7", None),
        ("user", None, "llm: EngineTimeout: no token"),
    ]
    assert (prompt.initiator, failed.fault) == ("agent", "llm: EngineTimeout: no token")


async def test_a_turn_keeps_the_sources_of_its_answer_and_the_lookup_time(store: Store) -> None:
    await store.touch_user("ann")
    call = await store.start_call("ann", node_id="rtc-1")
    sources = [Reference(doc_id="wifi.md", title="Wi-Fi", ordinal=2, score=0.91, text="not stored")]
    await store.add_turn(call.id, _turn(0, sources=sources, metrics=TurnMetrics(retrieval_s=0.04)))
    await store.add_turn(call.id, _turn(5))
    with_sources, without = (await store.get_call(call.id)).turns
    assert [(s.doc_id, s.title, s.ordinal, s.score, s.text) for s in with_sources.sources] == [
        ("wifi.md", "Wi-Fi", 2, 0.91, "")  # where the answer came from; the passage is in the index
    ]
    assert with_sources.metrics.retrieval_s == 0.04
    assert (without.sources, without.metrics.retrieval_s) == ([], None)
