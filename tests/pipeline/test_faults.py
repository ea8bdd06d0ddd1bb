"""Fault injection on the virtual-time timeline: every kind of failure, at different moments,
costs at most the reply it happens in. Each test then asks the next question and checks that it
is answered, and that the turn that failed says what happened."""

from __future__ import annotations

import json
import logging

import pytest

from tests.pipeline.timeline import Call, words
from voiceagent.engines.base import EngineTimeout, ToolCall, ToolSpec
from voiceagent.pipeline.agent import AgentTool
from voiceagent.pipeline.frames import (
    AgentState,
    ConversationEvent,
    Fault,
    Interrupted,
    Recovered,
    TurnCompleted,
)
from voiceagent.pipeline.playout import Playout
from voiceagent.pipeline.replies import ReplyLimits
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.testing.fakes import FakeASR, FakeTTS, FakeVAD, ScriptedReply

pytestmark = pytest.mark.looptime

QUESTIONS = {0: "What is the weather today?", 1: "And tomorrow?"}
WEATHER_TEXT = "It is sunny. Warm all day, around twenty degrees."
TOMORROW = ScriptedReply(tokens=words("Rain tomorrow."))
TWO_QUESTIONS = [(0.5, 1.5, 0), (6.0, 6.8, 1)]
SETTINGS = ConversationSettings()


def turns(call: Call) -> list[TurnCompleted]:
    return [e for e in call.events if isinstance(e, TurnCompleted)]


def faults(call: Call) -> list[Fault]:
    return [e for e in call.events if isinstance(e, Fault)]


def assert_next_question_answered(call: Call) -> None:
    last = turns(call)[-1]
    assert (last.user_text, last.agent_text, last.fault) == ("And tomorrow?", "Rain tomorrow.", None)
    assert last.agent_text_heard == "Rain tomorrow."
    assert call.conversation.state == AgentState.LISTENING


def failing(tokens: str, after: int, error: BaseException, **kwargs: object) -> ScriptedReply:
    return ScriptedReply(tokens=words(tokens), fail_after=after, error=error, **kwargs)  # type: ignore[arg-type]


# -- the LLM ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        json.JSONDecodeError("Expecting property name", "data: {not json", 7),  # a malformed SSE line
        ConnectionResetError("peer closed connection without sending complete message body"),
        EngineTimeout("no first token within 5 s"),
        KeyError("choices"),  # an adapter bug
    ],
    ids=["garbage", "dropped", "stall", "adapter-bug"],
)
async def test_llm_failing_before_the_first_token_says_the_fallback_line(error: BaseException) -> None:
    call = Call(QUESTIONS, [failing(WEATHER_TEXT, 0, error), TOMORROW])
    await call.run(TWO_QUESTIONS, until_s=10.0)

    first = turns(call)[0]
    assert first.user_text == "What is the weather today?"
    assert first.agent_text == first.agent_text_heard == SETTINGS.fallback_line
    assert first.fault is not None and first.fault.startswith(f"llm: {type(error).__name__}")
    assert [f.stage for f in faults(call)] == ["llm"]
    assert_next_question_answered(call)


async def test_llm_failing_mid_sentence_keeps_what_was_said_and_says_the_cut_off_line() -> None:
    # Dies after "It is sunny. Warm all day,": the first sentence stands, the fragment is not spoken.
    call = Call(QUESTIONS, [failing(WEATHER_TEXT, 6, ConnectionResetError("stream cut")), TOMORROW])
    await call.run(TWO_QUESTIONS, until_s=10.0)

    first = turns(call)[0]
    assert first.agent_text == f"It is sunny. {SETTINGS.cut_off_line}"
    assert first.fault == "llm: ConnectionResetError: stream cut"
    assert [m.content for m in call.agent.history[:2]] == ["What is the weather today?", first.agent_text]
    assert_next_question_answered(call)


async def test_llm_failing_between_sentences_ends_the_reply_there() -> None:
    # Dies right after "sunny." (before the next word confirms the sentence): it is still spoken.
    call = Call(QUESTIONS, [failing(WEATHER_TEXT, 3, RuntimeError("boom")), TOMORROW])
    await call.run(TWO_QUESTIONS, until_s=10.0)

    first = turns(call)[0]
    assert first.agent_text == "It is sunny." and first.fault == "llm: RuntimeError: boom"
    assert_next_question_answered(call)


async def test_llm_whose_stream_fails_to_close_during_a_barge_in(caplog: pytest.LogCaptureFixture) -> None:
    slow = ScriptedReply(
        tokens=words("First point. Second point is longer than the first. Third point ends it."),
        token_delay_s=0.15,
        error_on_close=RuntimeError("transport closed while reading"),
    )
    caplog.set_level(logging.INFO, logger="voiceagent.pipeline.conversation")
    # Three sentences allowed: the LLM is still streaming when the caller cuts in.
    settings = ConversationSettings(reply=ReplyLimits(max_sentences=3))
    call = Call({0: "Tell me everything.", 1: "And tomorrow?"}, [slow, TOMORROW], settings=settings)
    await call.run([(0.5, 1.5, 0), (3.0, 3.8, 1)], until_s=8.0)

    [interrupted] = [e for e in call.events if isinstance(e, Interrupted)]
    assert not call.audible_between(interrupted.at_s + 0.001, interrupted.at_s + 0.6)
    first = turns(call)[0]
    assert first.interrupted and first.agent_text_heard == interrupted.heard
    # The close error is logged, and the barge-in's cancellation goes on (it is no reply fault).
    assert faults(call) == []
    assert "RuntimeError: transport closed while reading (the cancellation goes on)" in caplog.text
    assert_next_question_answered(call)


# -- tools ------------------------------------------------------------------------------------


async def test_a_tool_that_raises_is_reported_to_the_model_and_the_reply_goes_on() -> None:
    async def broken_lookup(arguments: dict[str, object]) -> str:
        raise KeyError("city")

    tool = AgentTool(ToolSpec(name="forecast", description="Weather forecast"), broken_lookup)
    asks = ScriptedReply(tool_calls=(ToolCall(id="t1", name="forecast", arguments="{}"),))
    apology = ScriptedReply(tokens=words("I could not look that up."))
    call = Call(QUESTIONS, [asks, apology, TOMORROW], tools=[tool])
    await call.run(TWO_QUESTIONS, until_s=10.0)

    first = turns(call)[0]
    assert first.agent_text == "I could not look that up."
    assert ("tool", "error: KeyError: 'city'") in [(m.role, m.content) for m in call.agent.history]
    assert_next_question_answered(call)


# -- TTS --------------------------------------------------------------------------------------


async def test_tts_failing_on_one_sentence_skips_that_sentence_only() -> None:
    tts = FakeTTS(fail_before={"sunny": RuntimeError("onnxruntime: bad allocation")})
    call = Call(QUESTIONS, [ScriptedReply(tokens=words(WEATHER_TEXT)), TOMORROW], tts=tts)
    await call.run(TWO_QUESTIONS, until_s=10.0)

    first = turns(call)[0]
    assert first.agent_text == "Warm all day, around twenty degrees."
    assert first.fault == "tts: RuntimeError: onnxruntime: bad allocation"
    assert_next_question_answered(call)


async def test_tts_failing_during_playout_keeps_the_audio_already_queued() -> None:
    tts = FakeTTS(fail_mid={"sunny": ValueError("vocoder produced NaN")})
    call = Call(QUESTIONS, [ScriptedReply(tokens=words(WEATHER_TEXT)), TOMORROW], tts=tts)
    await call.run(TWO_QUESTIONS, until_s=10.0)

    first = turns(call)[0]
    assert first.agent_text == WEATHER_TEXT  # the first half of "It is sunny." was played
    assert first.fault is not None and first.fault.startswith("tts: ValueError")
    assert_next_question_answered(call)


async def test_tts_failing_on_every_sentence_of_a_reply_falls_back_to_the_fallback_line() -> None:
    tts = FakeTTS(fail_before={"sunny": RuntimeError("x"), "Warm": RuntimeError("y")})
    call = Call(QUESTIONS, [ScriptedReply(tokens=words(WEATHER_TEXT)), TOMORROW], tts=tts)
    await call.run(TWO_QUESTIONS, until_s=10.0)

    assert turns(call)[0].agent_text == SETTINGS.fallback_line
    assert_next_question_answered(call)


async def test_tts_that_fails_to_close_during_a_barge_in_does_not_resume_speaking() -> None:
    # A slow TTS (1 s a chunk): the barge-in lands while "First point." is still synthesizing.
    tts = FakeTTS(delay_s=1.0, error_on_close=RuntimeError("synthesis thread died"))
    slow = ScriptedReply(tokens=words("First point. Second point is longer than the first. Third point."))
    started_when_interrupted: list[list[str]] = []

    def snapshot(event: ConversationEvent) -> None:
        if isinstance(event, Interrupted):
            started_when_interrupted.append(list(tts.started))

    call = Call({0: "Tell me everything.", 1: "And tomorrow?"}, [slow, TOMORROW], tts=tts, on_event=snapshot)
    await call.run([(0.5, 1.5, 0), (3.3, 4.1, 1)], until_s=9.0)

    [interrupted] = [e for e in call.events if isinstance(e, Interrupted)]
    assert not call.audible_between(interrupted.at_s + 0.001, interrupted.at_s + 1.5)
    # Had the failing close swallowed the cancel, the reply would go on to its next sentence.
    assert started_when_interrupted == [["First point."]]
    assert tts.started == ["First point.", "Rain tomorrow."]
    assert_next_question_answered(call)


# -- ASR and VAD ------------------------------------------------------------------------------


async def test_final_transcript_failure_asks_the_caller_to_repeat() -> None:
    asr = FakeASR(QUESTIONS, fail_utterances={0: RuntimeError("CUDA error: out of memory")})
    call = Call(QUESTIONS, [TOMORROW], asr=asr)
    await call.run(TWO_QUESTIONS, until_s=10.0)

    first = turns(call)[0]
    assert (first.user_text, first.agent_text) == ("", SETTINGS.fallback_line)
    assert first.fault == "asr: RuntimeError: CUDA error: out of memory"
    assert len(call.llm.requests) == 1  # the failed turn never reached the LLM
    assert_next_question_answered(call)


async def test_partial_transcript_failures_change_nothing() -> None:
    asr = FakeASR(QUESTIONS, partial_error=KeyError("segments"))
    call = Call(QUESTIONS, [ScriptedReply(tokens=words("Sunny.")), TOMORROW], asr=asr)
    await call.run([(0.5, 2.5, 0), (6.0, 6.8, 1)], until_s=10.0)  # 2 s: long enough for partials

    assert any(partial for partial, _ in asr.calls)  # partials were attempted, and failed
    assert faults(call) == [] and turns(call)[0].agent_text == "Sunny."
    assert_next_question_answered(call)


async def test_a_vad_failing_mid_utterance_costs_those_frames_only() -> None:
    vad = FakeVAD(fail_frames=range(40, 47), error=RuntimeError("onnx session invalid"))  # 0.8-0.94 s
    call = Call(QUESTIONS, [ScriptedReply(tokens=words("Sunny.")), TOMORROW], vad=vad)
    await call.run(TWO_QUESTIONS, until_s=10.0)

    assert [f.message for f in faults(call)] == ["vad: RuntimeError: onnx session invalid"]  # one line
    # Each failing frame's stream is replaced (a broken state must not fail every frame after).
    assert len(vad.streams) == 1 + len(vad.fail_frames)
    assert all(stream.closed for stream in vad.streams[:-1]) and not vad.streams[-1].closed
    first = turns(call)[0]
    assert (first.user_text, first.agent_text) == ("What is the weather today?", "Sunny.")
    assert_next_question_answered(call)


# -- observers, the store, and bugs in the reply itself ----------------------------------------


async def test_observer_and_turn_recorder_failures_are_contained() -> None:
    def broken_observer(event: ConversationEvent) -> None:
        raise AttributeError("'NoneType' object has no attribute 'send'")

    async def store_down(turn: TurnCompleted) -> None:
        raise ConnectionRefusedError("database unreachable")

    call = Call(
        QUESTIONS,
        [ScriptedReply(tokens=words("Sunny.")), TOMORROW],
        on_event=broken_observer,
        on_turn=store_down,
    )
    await call.run(TWO_QUESTIONS, until_s=10.0)

    assert [f.stage for f in faults(call)] == ["background", "background"]  # one per turn not recorded
    assert_next_question_answered(call)


async def test_a_bug_inside_the_reply_is_contained_by_its_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    call = Call(QUESTIONS, [ScriptedReply(tokens=words("Sunny.")), TOMORROW])
    real_end_reply = Playout.end_reply
    calls = 0

    def end_reply_once_broken(self: Playout) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise IndexError("deque index out of range")
        real_end_reply(self)

    monkeypatch.setattr(Playout, "end_reply", end_reply_once_broken)
    await call.run(TWO_QUESTIONS, until_s=10.0)

    first = turns(call)[0]
    assert first.fault == "reply: IndexError: deque index out of range"
    assert [f.stage for f in faults(call)] == ["reply"]
    assert_next_question_answered(call)


async def test_the_watchdog_recovers_a_state_no_task_explains() -> None:
    """A bug after the reply task let go of the turn (here: remembering the reply raises) would
    leave the agent SPEAKING forever; the watchdog resets it, once, and the caller is heard."""
    call = Call(QUESTIONS, [ScriptedReply(tokens=words("Sunny.")), TOMORROW], expect_recovery=True)
    real_commit = call.agent.commit_reply
    broken = [True]

    def commit_once_broken(heard: str) -> None:
        if broken.pop() if broken else False:
            raise TypeError("unhashable type: 'list'")
        real_commit(heard)

    call.agent.commit_reply = commit_once_broken  # type: ignore[method-assign]
    await call.run(TWO_QUESTIONS, until_s=10.0)

    [recovered] = [e for e in call.events if isinstance(e, Recovered)]
    assert recovered.stuck_in == AgentState.SPEAKING and recovered.reason == "reply_task_gone"
    # The watchdog allows stuck_state_s of a state nothing explains, counted from the reply's end.
    reply_ended = max(t for t, audible in call.sent if audible and t < 5.0)
    assert recovered.at_s - reply_ended == pytest.approx(SETTINGS.stuck_state_s, abs=0.05)
    assert [f.stage for f in faults(call)] == ["background"]
    assert_next_question_answered(call)
