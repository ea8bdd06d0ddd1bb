"""The conversation on a scripted timeline, on virtual time (looptime): seconds of talk run in
milliseconds, and every timing below is exact, not a race."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.pipeline.timeline import Call, words
from voiceagent.engines.base import ToolCall, ToolSpec
from voiceagent.pipeline.agent import AgentTool
from voiceagent.pipeline.frames import (
    AgentSpeech,
    AgentState,
    BargeIn,
    Interrupted,
    TurnCompleted,
    UserTranscript,
)
from voiceagent.pipeline.playout import Playout
from voiceagent.testing.fakes import FakeKnowledge, ScriptedReply

pytestmark = pytest.mark.looptime


WEATHER = ScriptedReply(tokens=words("It is sunny. Warm all day, around twenty degrees."))


async def test_a_normal_turn_is_heard_answered_and_remembered() -> None:
    call = Call({0: "What is the weather today?"}, [WEATHER])
    await call.run([(0.5, 1.5, 0)], until_s=8.0)

    [final] = [e for e in call.of(UserTranscript) if e.final]  # type: ignore[union-attr]
    assert final.text == "What is the weather today?"  # type: ignore[union-attr]
    assert call.states() == [AgentState.THINKING, AgentState.SPEAKING, AgentState.LISTENING]
    assert [e.text for e in call.of(AgentSpeech)] == ["It is sunny.", "Warm all day, around twenty degrees."]  # type: ignore[union-attr]
    [turn] = call.of(TurnCompleted)
    assert isinstance(turn, TurnCompleted)
    assert (
        not turn.interrupted
        and turn.agent_text_heard == turn.agent_text == "It is sunny. Warm all day, around twenty degrees."
    )
    # Speech ended at 1.5 s; "?" ends a complete thought: 0.3 s of silence ends the turn.
    assert turn.metrics.endpointing_s == pytest.approx(0.3, abs=0.03)
    assert turn.metrics.asr_s == pytest.approx(0.15)
    assert turn.metrics.llm_first_token_s == pytest.approx(0.1, abs=0.01)
    assert turn.metrics.tts_first_audio_s == pytest.approx(0.05, abs=0.01)
    # Silence 0.3 s + first token 0.1 s + three more tokens to finish (and confirm) the first
    # sentence 0.06 s + TTS 0.05 s: the pipeline itself adds nothing on top.
    assert turn.metrics.voice_to_voice_s == pytest.approx(0.3 + 0.1 + 0.06 + 0.05, abs=0.03)
    assert not call.audible_between(0, 2.0) and call.audible_between(2.0, 3.0)
    assert [(m.role, m.content) for m in call.agent.history] == [
        ("user", "What is the weather today?"),
        ("assistant", "It is sunny. Warm all day, around twenty degrees."),
    ]


async def test_an_answer_from_knowledge_names_its_source_and_times_the_lookup() -> None:
    knowledge = FakeKnowledge(delay_s=0.08)
    call = Call({0: "What is the wifi password?"}, [WEATHER], knowledge=knowledge)
    await call.run([(0.5, 1.5, 0)], until_s=8.0)

    [turn] = call.of(TurnCompleted)
    assert isinstance(turn, TurnCompleted)
    assert [(s.doc_id, s.title) for s in turn.sources] == [("wifi.md", "Wi-Fi")]
    assert "text" not in turn.model_dump()["sources"][0]  # the page gets where, not the passage
    assert turn.metrics.retrieval_s == pytest.approx(0.08)
    assert turn.metrics.llm_first_token_s == pytest.approx(0.1, abs=0.01)  # the LLM's own time
    assert turn.metrics.voice_to_voice_s == pytest.approx(0.3 + 0.08 + 0.1 + 0.06 + 0.05, abs=0.03)
    assert knowledge.asked == ["What is the wifi password?"]


async def test_barge_in_stops_audio_at_once_cancels_the_reply_and_keeps_only_what_was_heard() -> None:
    long_reply = ScriptedReply(
        tokens=words("First point. Second point is longer than the first. Third point ends it."),
        token_delay_s=0.15,  # still generating when the user cuts in
    )
    call = Call({0: "Tell me everything.", 1: "Stop, thanks."}, [long_reply, WEATHER])
    # The reply starts at ~2.2 s and would run ~5 s; the user talks over it from 3.0 s.
    await call.run([(0.5, 1.5, 0), (3.0, 4.0, 1)], until_s=9.0)

    # Three voiced frames (60 ms) over the agent hold its audio at once: silent from the third.
    [suspected] = call.of(BargeIn)
    assert isinstance(suspected, BargeIn) and suspected.phase == "suspected"
    assert suspected.at_s == pytest.approx(3.04, abs=0.005)
    assert call.audible_between(2.5, 3.0) and not call.audible_between(suspected.at_s + 0.001, 4.5)
    # 0.2 s of voice is transcribed (0.15 s): words, so the reply is cut at ~3.35 s.
    [interrupted] = call.of(Interrupted)
    assert interrupted.at_s == pytest.approx(3.2 + 0.15, abs=0.03)
    assert call.llm.closed_early == 1  # the LLM stream was closed mid-reply
    first, second = call.of(TurnCompleted)
    assert isinstance(first, TurnCompleted) and isinstance(second, TurnCompleted)
    assert first.interrupted and first.agent_text_heard == interrupted.heard  # type: ignore[union-attr]
    assert first.agent_text_heard.startswith("First point.")
    assert "Third" not in first.agent_text_heard
    # The interrupting words became the next turn, answered in full.
    assert second.user_text == "Stop, thanks." and not second.interrupted
    assert [(m.role, m.content) for m in call.agent.history][:2] == [
        ("user", "Tell me everything."),
        ("assistant", first.agent_text_heard),
    ]
    assert call.conversation.state == AgentState.LISTENING


async def test_a_cough_does_not_interrupt() -> None:
    call = Call({0: "What is the weather today?", 1: "ahem"}, [WEATHER])
    await call.run([(0.5, 1.5, 0), (2.8, 2.95, 1)], until_s=8.0)
    assert call.of(Interrupted) == []
    [turn] = call.of(TurnCompleted)
    assert isinstance(turn, TurnCompleted) and not turn.interrupted
    assert turn.agent_text_heard == "It is sunny. Warm all day, around twenty degrees."


async def test_a_short_remark_under_the_interrupt_threshold_is_not_a_turn() -> None:
    # 0.28 s: long enough for VAD (0.25 s), too short to interrupt (0.3 s).
    call = Call({0: "What is the weather today?", 1: "mm-hm"}, [WEATHER])
    await call.run([(0.5, 1.5, 0), (2.8, 3.08, 1)], until_s=8.0)
    assert call.of(Interrupted) == []
    assert len(call.of(TurnCompleted)) == 1


async def test_the_agent_hearing_itself_at_the_start_is_not_an_interruption() -> None:
    call = Call({0: "What is the weather today?", 1: "echo"}, [WEATHER])
    # Speaking starts at ~2.15 s; "speech" starting 0.1 s later falls in the 0.25 s warm-up.
    await call.run([(0.5, 1.5, 0), (2.25, 2.75, 1)], until_s=8.0)
    assert call.of(Interrupted) == []


async def test_hesitation_waits_longer_before_answering() -> None:
    call = Call({0: "I would like to book a table and"}, [WEATHER])
    await call.run([(0.5, 1.5, 0)], until_s=6.0)
    [turn] = call.of(TurnCompleted)
    assert isinstance(turn, TurnCompleted)
    assert turn.metrics.endpointing_s == pytest.approx(1.0, abs=0.03)


async def test_a_pause_mid_sentence_continues_the_same_turn() -> None:
    call = Call({0: "I would like to book a table and"}, [WEATHER])
    # 0.8 s pause after "and": VAD says speech ended, but the user resumes before 1.0 s.
    await call.run([(0.5, 1.5, 0), (2.3, 3.0, 0)], until_s=7.0)
    assert len(call.of(TurnCompleted)) == 1
    assert call.asr.calls[-1][1] > 2.0  # the final transcript covers both stretches


async def test_a_tool_call_started_before_a_barge_in_still_completes() -> None:
    booked: list[dict[str, object]] = []

    async def book_table(arguments: dict[str, object]) -> str:
        await asyncio.sleep(1.0)
        booked.append(arguments)
        return "booked for 7 pm"

    tool = AgentTool(ToolSpec(name="book_table", description="Book a table"), book_table)
    asks_tool = ScriptedReply(
        tool_calls=(ToolCall(id="c1", name="book_table", arguments='{"time": "19:00"}'),)
    )
    call = Call(
        {0: "Book a table for seven.", 1: "Actually wait."},
        [asks_tool, ScriptedReply(tokens=words("Done, it is booked.")), WEATHER],
        tools=[tool],
    )
    # The tool runs from ~2.1 s to ~3.1 s; the user interrupts at 2.4 s (confirmed at 2.7 s).
    await call.run([(0.5, 1.5, 0), (2.4, 3.2, 1)], until_s=8.0)
    assert booked == [{"time": "19:00"}]
    [interrupted] = call.of(Interrupted)
    assert interrupted.heard == ""  # nothing of the reply was spoken yet
    roles = [(m.role, m.content) for m in call.agent.history]
    assert ("tool", "booked for 7 pm") in roles
    assert roles[0] == ("user", "Book a table for seven.")


async def test_an_llm_failure_says_the_fallback_line_and_the_call_goes_on() -> None:
    broken = ScriptedReply(tokens=words("Let me"), fail_after=0)
    call = Call({0: "What is the weather today?", 1: "Hello?"}, [broken, WEATHER])
    await call.run([(0.5, 1.5, 0), (5.0, 5.8, 1)], until_s=11.0)
    spoken = [e.text for e in call.of(AgentSpeech)]  # type: ignore[union-attr]
    assert spoken[0] == call.settings.fallback_line
    assert len(call.of(TurnCompleted)) == 2
    assert call.conversation.state == AgentState.LISTENING


async def test_silence_and_noise_alone_start_nothing() -> None:
    call = Call({0: ""}, [WEATHER])
    await call.run([(1.0, 1.4, 0)], until_s=4.0)  # "speech" the ASR hears as nothing
    assert call.of(TurnCompleted) == [] and call.llm.requests == []


async def test_hanging_up_mid_reply_leaves_nothing_running() -> None:
    long_reply = ScriptedReply(tokens=words("One two three four five six seven. Eight nine ten eleven."))
    call = Call({0: "Tell me everything."}, [long_reply])
    await call.run([(0.5, 1.5, 0)], until_s=2.6)
    assert call.conversation.state == AgentState.SPEAKING
    await call.conversation.close()
    [turn] = call.of(TurnCompleted)
    assert isinstance(turn, TurnCompleted) and turn.interrupted
    assert call.vad.streams[0].closed
    assert call.playout.queued_s == 0
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert pending == []


def test_playout_reports_heard_words_in_proportion() -> None:
    from voiceagent.engines.base import AudioChunk

    playout = Playout(sample_rate=16_000)
    playout.start_reply()
    for text in ("One two three four.", "Five six."):
        playout.enqueue(AudioChunk(pcm=np.ones(16_000, "<i2").tobytes(), sample_rate=16_000, text=text))
    for _ in range(75):  # 1.5 s: the first sentence and half of the second
        playout.read_frame()
    assert playout.heard_text() == "One two three four. Five"
    assert playout.flush() == pytest.approx(0.5)
    assert playout.read_frame() == b"\x00\x00" * 320
