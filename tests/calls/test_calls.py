"""The calls layer on its own: a CallManager handed fake engines, a real SQLite store that can be
taken down, real aiortc callers over loopback. A call's failures stay in that call."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.calls.caller import Caller, dial
from tests.calls.conftest import MAX_CALLS
from tests.transport.client import open_offer
from voiceagent.calls import session as session_module
from voiceagent.calls.session import CallManager, EnginesLoading
from voiceagent.observability.metrics import Metrics
from voiceagent.testing.fakes import REPLY_TOKENS, FakeEngineSource, FlakyStore
from voiceagent.transport.webrtc import SignalingError

pytestmark = pytest.mark.integration  # real aiortc peers and real time (a few seconds each)

REPLY = "".join(REPLY_TOKENS)


async def ask_and_hear_reply(caller: Caller) -> dict[str, object]:
    since = caller.ask()
    return await caller.wait_event("turn", since)


async def call_ended(manager: CallManager, call_id: str) -> None:
    async with asyncio.timeout(15):
        while call_id in manager.sessions:
            await asyncio.sleep(0.02)


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_call_is_answered_and_recorded(manager: CallManager, store: FlakyStore) -> None:
    caller = await dial(manager, user_id="alice")
    turn = await ask_and_hear_reply(caller)
    assert turn["agent_text"] == REPLY and turn["fault"] is None
    assert await manager.hang_up(caller.call_id)
    await caller.hang_up()

    record = await store.store.get_call(caller.call_id)
    assert (record.user_id, record.end_reason) == ("alice", "hangup")
    assert [(t.agent_text, t.fault) for t in record.turns] == [(REPLY, None)]


async def test_a_pipeline_bug_ends_that_call_only(
    manager: CallManager, store: FlakyStore, metrics: Metrics
) -> None:
    doomed, bystander = await dial(manager, user_id="doomed"), await dial(manager, user_id="bystander")
    conversation = manager.sessions[doomed.call_id].conversation

    async def buggy_feed(pcm: bytes) -> None:
        raise ZeroDivisionError("division by zero")

    conversation.feed = buggy_feed  # type: ignore[method-assign]
    await call_ended(manager, doomed.call_id)
    await doomed.hang_up()

    assert (await store.store.get_call(doomed.call_id)).end_reason == "error: ZeroDivisionError"
    assert counter(metrics, "voiceagent_calls_failed_total") == 1
    # The other call, and the node, go on.
    assert (await ask_and_hear_reply(bystander))["agent_text"] == REPLY
    newcomer = await dial(manager)
    assert (await ask_and_hear_reply(newcomer))["agent_text"] == REPLY
    for caller in (bystander, newcomer):
        await caller.hang_up()


async def test_store_down_when_the_call_starts_the_call_works_unrecorded(
    manager: CallManager, store: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.down = True
    caller = await dial(manager, user_id="bob")
    store.down = False  # back, but this call was never recorded: its turns are not written
    assert (await ask_and_hear_reply(caller))["agent_text"] == REPLY
    session = manager.sessions[caller.call_id]
    assert not session.recorded and session.stats.turns_not_stored == 0
    assert f"call {caller.call_id} is not recorded (store: StoreUnavailable" in caplog.text
    await caller.hang_up()
    assert await store.store.list_calls() == []


async def test_store_down_mid_call_retries_then_drops_the_turn_and_the_call_goes_on(
    manager: CallManager, store: FlakyStore, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "TURN_WRITE_BACKOFF_S", 0.05)
    caller = await dial(manager, user_id="carol")
    session = manager.sessions[caller.call_id]

    store.fail_next = 2  # a blip: the first turn is written on its third attempt
    await ask_and_hear_reply(caller)
    store.down = True  # an outage: the second turn is dropped, with a log line
    await ask_and_hear_reply(caller)
    async with asyncio.timeout(10):
        while session.stats.turns_not_stored < 1:
            await asyncio.sleep(0.02)
    store.down = False
    await ask_and_hear_reply(caller)  # the call never stopped answering
    await manager.hang_up(caller.call_id)
    await caller.hang_up()

    record = await store.store.get_call(caller.call_id)
    assert len(record.turns) == 2 and record.end_reason == "hangup"
    assert counter(metrics, "voiceagent_turns_not_stored_total") == 1


async def test_a_dead_peers_reason_reaches_the_store(manager: CallManager, store: FlakyStore) -> None:
    caller = await dial(manager, user_id="dave")
    caller.lose_network()
    await call_ended(manager, caller.call_id)
    await caller.hang_up()
    assert (await store.store.get_call(caller.call_id)).end_reason == "no-inbound-audio"


@pytest.mark.parametrize(("say_so", "stored"), [(True, "hangup"), (False, "connection-closed")])
async def test_a_peer_that_says_it_hangs_up_is_a_hangup_one_that_just_goes_is_not(
    manager: CallManager, store: FlakyStore, say_so: bool, stored: str
) -> None:
    """The race a page's hang-up once lost: the peer closes at once, its DELETE lands afterwards.
    What the peer said on the events channel before closing decides, not what lands first."""
    caller = await dial(manager, user_id="frank")
    await caller.hang_up(say_so=say_so)
    await call_ended(manager, caller.call_id)
    assert not await manager.hang_up(caller.call_id)  # the late DELETE: the call is already over
    assert (await store.store.get_call(caller.call_id)).end_reason == stored


async def test_concurrent_offers_against_the_call_limit(manager: CallManager) -> None:
    offers = [await open_offer("audio") for _ in range(MAX_CALLS + 3)]
    results = await asyncio.gather(
        *(manager.start(sdp, "offer", f"user-{i}") for i, (_, sdp) in enumerate(offers)),
        return_exceptions=True,
    )
    accepted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, SignalingError)]
    assert len(accepted) == MAX_CALLS and len(refused) == 3
    assert all(r.status == 503 and "too many calls" in r.message for r in refused)
    assert len(manager.sessions) == MAX_CALLS
    for pc, _ in offers:
        await pc.close()


async def test_hanging_up_during_a_reply(manager: CallManager, store: FlakyStore) -> None:
    caller = await dial(manager, user_id="erin")
    since = caller.ask()
    await caller.wait_event("state", since, state="speaking")
    assert await manager.hang_up(caller.call_id)
    await caller.hang_up()

    assert caller.call_id not in manager.sessions
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith(f"call-{caller.call_id}")]
    record = await store.store.get_call(caller.call_id)
    [turn] = record.turns
    assert turn.interrupted and REPLY.startswith(turn.agent_text_heard)
    assert record.end_reason == "hangup"
    assert not await manager.hang_up(caller.call_id)  # already gone: nothing to do


async def test_no_call_starts_before_the_engines_are_ready(manager: CallManager) -> None:
    manager.engines = FakeEngineSource(ready=False)
    _, sdp = await open_offer("audio")
    with pytest.raises(EnginesLoading):
        await manager.start(sdp, "offer", None)
    assert manager.gateway.active == 0


async def test_contained_faults_are_counted_and_stored(
    manager: CallManager, store: FlakyStore, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    caller = await dial(manager)
    session = manager.sessions[caller.call_id]
    llm = manager.engines.for_call().llm

    def broken_stream(*args: object, **kwargs: object) -> object:
        raise ConnectionResetError("peer closed connection")

    original = llm.stream
    llm.stream = broken_stream  # type: ignore[method-assign]
    turn = await ask_and_hear_reply(caller)
    llm.stream = original  # type: ignore[method-assign]
    assert turn["agent_text"] == session.conversation.settings.fallback_line
    assert str(turn["fault"]).startswith("llm: ConnectionResetError")
    assert (await ask_and_hear_reply(caller))["agent_text"] == REPLY
    assert counter(metrics, "voiceagent_call_faults_total", stage="llm") == 1
    assert session.stats.faults == 1 and session.stats.recoveries == 0
    await manager.hang_up(caller.call_id)
    await caller.hang_up()
    faults = [t.fault for t in (await store.store.get_call(caller.call_id)).turns]
    assert len(faults) == 2 and str(faults[0]).startswith("llm: ConnectionResetError") and faults[1] is None
