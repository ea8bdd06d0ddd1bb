"""No leaks: 50 calls started and ended every way a call ends (hung up by the server mid-reply,
abandoned by a caller whose network vanished, hung up at once) leave the process as they found
it: asyncio tasks, threads, open file descriptors, the CallManager's and the gateway's state.
Per-call state that grows with a call's length is bounded."""

from __future__ import annotations

import os

import pytest

from tests.calls.caller import Footprint, dial, run_calls, settle
from tests.calls.conftest import MAX_CALLS
from voiceagent.calls.session import RECENT_EVENTS, CallManager
from voiceagent.engines.base import ChatMessage
from voiceagent.pipeline.frames import StateChanged
from voiceagent.pipeline.settings import ConversationSettings

pytestmark = pytest.mark.integration
CALLS = 50


async def test_fifty_calls_leave_nothing_behind(manager: CallManager) -> None:
    # Warm-up at the same concurrency: imports, aiortc's first-use state, and the pools that grow
    # to a level with concurrent calls (the store's connections, the default executor's threads).
    await run_calls(manager, range(-2 * MAX_CALLS, 0), at_once=MAX_CALLS)
    baseline = await settle(manager, Footprint.now(manager))

    await run_calls(manager, range(CALLS), at_once=MAX_CALLS)
    after = await settle(manager, baseline)

    assert manager.gateway.calls_accepted == CALLS + 2 * MAX_CALLS
    assert (after.sessions, after.gateway_calls) == (0, 0)
    assert after.tasks <= baseline.tasks, after
    assert after.fds <= baseline.fds, after
    assert after.python_threads <= baseline.python_threads, after
    executor_cap = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default size
    assert after.executor_threads <= executor_cap, after
    # Native threads besides Python's: resamplers' filter graphs, aiortc's codecs. The executor
    # may have grown since the baseline, within its cap.
    grown_executor = after.executor_threads - baseline.executor_threads
    assert after.native_threads - grown_executor <= baseline.native_threads, after
    # One call's session, conversation, agent and transport are thousands of objects: 50 leaked
    # calls would add far more than this bound (which allows caches that level off).
    assert after.objects - baseline.objects < 20_000, after


async def test_state_that_grows_with_a_calls_length_is_bounded(manager: CallManager) -> None:
    caller = await dial(manager)
    session = manager.sessions[caller.call_id]
    for n in range(RECENT_EVENTS * 3):
        session._on_event(StateChanged(at_s=float(n), state="listening"))  # type: ignore[arg-type]
    assert len(session.recent_events) == RECENT_EVENTS
    assert session.stats.voice_to_voice_s.maxlen is not None

    # The agent's memory keeps what the model is shown, not the whole call.
    agent = session.agent
    for n in range(200):
        agent.history.append(ChatMessage(role="user", content=f"question {n}"))
        agent.commit_reply(f"answer {n}")
    assert len([m for m in agent.history if m.role == "user"]) <= ConversationSettings().history_turns
    assert agent.history[-1].content == "answer 199"
    await caller.hang_up()
