"""Turn-taking as a caller hears it, on virtual time: pauses that are not the end of a turn,
replies prepared during the pause, and voice over the agent that is not an interruption."""

from __future__ import annotations

import asyncio

import pytest

from tests.pipeline.timeline import Call, words
from voiceagent.engines.base import ToolCall, ToolSpec
from voiceagent.pipeline.agent import AgentTool
from voiceagent.pipeline.frames import (
    AgentSpeech,
    BargeIn,
    Interrupted,
    ReplyDiscarded,
    TurnCompleted,
    UserTranscript,
)
from voiceagent.pipeline.interruptions import classify_overlap
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.testing.fakes import FakeASR, ScriptedReply

pytestmark = pytest.mark.looptime

ANSWER = ScriptedReply(tokens=words("Yes, we have three vegetarian dishes. The risotto is popular."))
OTHER = ScriptedReply(tokens=words("Sure. Anything else?"))


def history(call: Call) -> list[tuple[str, str | None]]:
    return [(m.role, m.content) for m in call.agent.history]


def only_turn(call: Call) -> TurnCompleted:
    [turn] = call.of(TurnCompleted)
    assert isinstance(turn, TurnCompleted)
    return turn


async def test_a_prepared_reply_plays_the_moment_the_turn_ends() -> None:
    # A neutral ending waits 0.7 s here; the reply is prepared from the transcript at 0.3 s, its
    # first audio is ready at ~0.58 s (LLM 0.1 s, a sentence of tokens, TTS 0.05 s), held until
    # the silence runs out and played at once.
    settings = ConversationSettings(end_of_turn_silence_s=0.7)
    call = Call({0: "I am looking for a vegetarian dish"}, [ANSWER], settings=settings)
    await call.run([(0.5, 1.5, 0)], until_s=6.0)
    turn = only_turn(call)
    assert turn.metrics.endpointing_s == pytest.approx(0.7, abs=0.025)
    assert turn.metrics.voice_to_voice_s == pytest.approx(turn.metrics.endpointing_s, abs=0.025)
    assert turn.metrics.llm_first_token_s == pytest.approx(0.1, abs=0.01)  # from the preparation
    assert not call.audible_between(0, 1.5 + 0.65) and call.audible_between(2.2, 2.3)
    assert call.of(ReplyDiscarded) == []


async def test_voice_in_the_pause_discards_the_prepared_reply_without_a_trace() -> None:
    # "I was wondering" (0.5 s budget) pauses 0.45 s: the reply prepared at 0.3 s is thrown
    # away when the caller goes on, and the whole sentence is answered once.
    call = Call({0: "I was wondering", 1: "whether you have vegetarian dishes?"}, [OTHER, ANSWER])
    call.llm.replies[0] = ScriptedReply(tokens=words("Sure. Anything else?"), token_delay_s=0.1)
    await call.run([(0.5, 1.5, 0), (1.95, 3.2, 1)], until_s=8.0)

    [discarded] = call.of(ReplyDiscarded)
    assert isinstance(discarded, ReplyDiscarded) and discarded.reason == "caller_went_on"
    assert discarded.llm_deltas > 0  # it had started: the cost is reported
    assert call.llm.closed_early == 1
    turn = only_turn(call)
    assert turn.user_text == "I was wondering whether you have vegetarian dishes?"
    assert turn.agent_text.startswith("Yes, we have")
    assert "Anything else" not in " ".join(e.text for e in call.of(AgentSpeech))  # type: ignore[union-attr]
    assert not call.audible_between(0, 3.2)  # nothing of the discarded reply was played
    assert history(call) == [
        ("user", "I was wondering whether you have vegetarian dishes?"),
        ("assistant", turn.agent_text),
    ]
    finals = [e for e in call.of(UserTranscript) if e.final]  # type: ignore[union-attr]
    assert [e.text for e in finals] == [turn.user_text]  # type: ignore[union-attr]


async def test_voice_while_the_pause_is_still_being_transcribed_cancels_that_transcript() -> None:
    slow = FakeASR({0: "Um, so", 1: "do you have vegetarian dishes?"}, delay_s=0.4)
    call = Call({}, [ANSWER], asr=slow)
    # The transcript starts 0.15 s into the pause and would take 0.4 s; the caller goes on at 0.3 s.
    await call.run([(0.5, 1.5, 0), (1.8, 3.0, 1)], until_s=7.0)
    assert call.of(ReplyDiscarded) == [] and len(call.llm.requests) == 1
    assert only_turn(call).user_text == "Um, so do you have vegetarian dishes?"


async def test_the_hesitation_rule_holds_even_when_the_transcript_is_late() -> None:
    # The transcript of "... and" arrives 0.75 s into the pause, after the neutral 0.5 s: the
    # turn still waits the hesitant 1.0 s (it never ends on a default before the text is known).
    slow = FakeASR({0: "I would like to book a table and"}, delay_s=0.6)
    call = Call({}, [ANSWER], asr=slow)
    await call.run([(0.5, 1.5, 0)], until_s=6.0)
    assert only_turn(call).metrics.endpointing_s == pytest.approx(1.0, abs=0.025)


async def test_voice_after_the_turn_ended_but_before_the_agent_speaks_continues_the_turn() -> None:
    # "Table for two." ends the turn after 0.3 s; the reply's audio would start ~0.51 s in.
    # The caller adds more at 0.4 s: the same turn goes on, the first reply is never heard.
    slow_llm = ScriptedReply(tokens=words("Of course."), first_token_s=0.3)
    call = Call({0: "Table for two.", 1: "At eight please."}, [slow_llm, OTHER])
    await call.run([(0.5, 1.5, 0), (1.9, 2.8, 1)], until_s=7.0)
    [discarded] = call.of(ReplyDiscarded)
    assert isinstance(discarded, ReplyDiscarded)
    turn = only_turn(call)
    assert turn.user_text == "Table for two. At eight please." and turn.agent_text == "Sure. Anything else?"
    assert history(call)[0] == ("user", "Table for two. At eight please.")
    assert not call.audible_between(0, 2.8)


async def test_a_prepared_reply_runs_no_tool_until_the_turn_is_over() -> None:
    runs: list[str] = []

    async def book(arguments: dict[str, object]) -> str:
        runs.append(str(arguments))
        return "booked"

    tool = AgentTool(ToolSpec(name="book", description="Book a table"), book)
    wants_tool = ScriptedReply(tool_calls=(ToolCall(id="t1", name="book", arguments="{}"),))
    call = Call({0: "Book me a table", 1: "for tomorrow at noon."}, [wants_tool, OTHER], tools=[tool])
    # The prepared reply asks for the tool at ~0.4 s into the pause; the caller goes on at 0.45 s.
    await call.run([(0.5, 1.5, 0), (1.95, 3.0, 1)], until_s=7.0)
    assert runs == []  # the discarded reply never acted
    assert only_turn(call).user_text == "Book me a table for tomorrow at noon."
    assert ("tool", "booked") not in history(call)


async def test_a_backchannel_holds_the_agent_for_a_moment_then_it_goes_on() -> None:
    call = Call({0: "What dishes do you have?", 1: "mm-hm"}, [ANSWER])
    # The agent speaks from ~2.0 s; "mm-hm" for 0.5 s at 2.8 s is long enough to be checked.
    await call.run([(0.5, 1.5, 0), (2.8, 3.3, 1)], until_s=9.0)
    suspected, rejected = call.of(BargeIn)
    assert isinstance(suspected, BargeIn) and isinstance(rejected, BargeIn)
    assert (suspected.phase, rejected.phase, rejected.reason) == ("suspected", "rejected", "backchannel")
    # Held from the onset (silent) until its first 0.2 s are transcribed (0.15 s): a backchannel,
    # so the agent goes on at once, over the rest of the "mm-hm".
    assert not call.audible_between(suspected.at_s + 0.001, rejected.at_s)
    assert rejected.at_s == pytest.approx(2.8 + 0.2 + 0.15, abs=0.03)
    assert call.audible_between(rejected.at_s, rejected.at_s + 0.1)
    assert call.of(Interrupted) == []
    turn = only_turn(call)
    assert not turn.interrupted and turn.agent_text_heard == turn.agent_text  # nothing was lost
    assert len(call.llm.requests) == 1  # "mm-hm" was not a turn


async def test_voice_whose_transcript_never_comes_is_let_go_after_the_longest_hold() -> None:
    settings = ConversationSettings(barge_in_max_hold_s=1.0)
    slow = FakeASR({0: "What dishes do you have?", 1: "Wait."}, delay_s=0.15)
    call = Call({}, [ANSWER], settings=settings, asr=slow)
    await call.run([(0.5, 1.5, 0)], until_s=2.4)
    slow.delay_s = 5.0  # the check of the voice over the agent is stuck in ASR
    await call.run([(0.0, 2.0, 1)], until_s=3.0)
    rejected = [e for e in call.of(BargeIn) if e.phase == "rejected"]
    assert [e.reason for e in rejected] == ["too_long"]  # type: ignore[union-attr]


async def test_the_agents_own_words_coming_back_do_not_interrupt_it() -> None:
    call = Call({0: "What dishes do you have?", 1: "we have three vegetarian dishes"}, [ANSWER])
    await call.run([(0.5, 1.5, 0), (2.6, 3.3, 1)], until_s=9.0)
    assert call.of(Interrupted) == []
    assert [e.reason for e in call.of(BargeIn) if e.phase == "rejected"] == ["echo"]  # type: ignore[union-attr]


async def test_a_noise_that_never_becomes_words_is_let_go() -> None:
    call = Call({0: "What dishes do you have?", 1: ""}, [ANSWER])
    await call.run([(0.5, 1.5, 0), (2.4, 5.0, 1)], until_s=10.0)  # 2.6 s of "voice" ASR hears nothing
    rejected = [e for e in call.of(BargeIn) if e.phase == "rejected"]
    assert [e.reason for e in rejected] == ["nothing"]  # type: ignore[union-attr]
    assert rejected[0].at_s == pytest.approx(2.4 + 0.2 + 0.15, abs=0.03)  # released once, not again
    assert call.audible_between(3.5, 4.0)  # the agent went on while the noise lasted
    assert not only_turn(call).interrupted


async def test_words_a_first_check_missed_still_interrupt_once_more_voice_is_heard() -> None:
    # The first 0.2 s of voice transcribe to nothing (ASR missed a soft start): the agent is
    # released, but the voice is checked again after 0.2 s more, and its words cut the agent off.
    call = Call({0: "What dishes do you have?", 1: "", 2: "Wait, I have a question."}, [ANSWER, OTHER])
    await call.run([(0.5, 1.5, 0), (3.0, 3.24, 1), (3.24, 4.0, 2)], until_s=9.0)
    [rejected] = [e for e in call.of(BargeIn) if e.phase == "rejected"]
    [interrupted] = call.of(Interrupted)
    assert rejected.reason == "nothing"  # type: ignore[union-attr]
    assert rejected.at_s == pytest.approx(3.0 + 0.2 + 0.15, abs=0.03)
    assert interrupted.at_s == pytest.approx(3.0 + 0.4 + 0.15, abs=0.03)
    assert call.audible_between(rejected.at_s + 0.02, interrupted.at_s - 0.02)  # talked on meanwhile
    assert not call.audible_between(interrupted.at_s + 0.02, 4.0)
    first, second = call.of(TurnCompleted)
    assert first.interrupted and second.user_text == "Wait, I have a question."  # type: ignore[union-attr]


async def test_words_over_the_agent_interrupt_it_once_transcribed() -> None:
    call = Call({0: "What dishes do you have?", 1: "Actually, make it a pizza."}, [ANSWER, OTHER])
    await call.run([(0.5, 1.5, 0), (2.6, 3.6, 1)], until_s=9.0)
    [interrupted] = call.of(Interrupted)
    first, second = call.of(TurnCompleted)
    assert first.interrupted and first.agent_text_heard == interrupted.heard  # type: ignore[union-attr]
    assert second.user_text == "Actually, make it a pizza."  # type: ignore[union-attr]
    # The page is told about the cut before the turn's record arrives.
    kinds = [e.kind for e in call.events if isinstance(e, Interrupted | TurnCompleted)]
    assert kinds[:2] == ["interrupted", "turn"]


async def test_a_tool_that_ran_makes_later_voice_a_barge_in_not_a_new_start() -> None:
    async def book(arguments: dict[str, object]) -> str:
        await asyncio.sleep(0.5)
        return "booked"

    tool = AgentTool(ToolSpec(name="book", description="Book a table"), book)
    wants_tool = ScriptedReply(tool_calls=(ToolCall(id="t1", name="book", arguments="{}"),))
    call = Call(
        {0: "Book a table for two.", 1: "No wait."},
        [wants_tool, ScriptedReply(tokens=words("Booked.")), OTHER],
        tools=[tool],
    )
    await call.run([(0.5, 1.5, 0), (2.0, 2.8, 1)], until_s=7.0)
    assert call.of(ReplyDiscarded) == []
    first, _ = call.of(TurnCompleted)
    assert first.interrupted and first.user_text == "Book a table for two."  # type: ignore[union-attr]
    assert ("tool", "booked") in history(call)


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("Mm-hm.", "backchannel"),
        ("Mm-hmm.", "backchannel"),
        ("Hmm hmm", "backchannel"),
        ("Uh-huh, mhm.", "backchannel"),
        ("Mmm, okay.", "backchannel"),
        ("Hm, no, the other one.", "words"),
        ("Yeah, yeah.", "backchannel"),
        ("嗯", "backchannel"),
        ("", "nothing"),
        (" ... ", "nothing"),
        ("three vegetarian dishes", "echo"),
        ("Wait, stop.", "words"),
        ("Yeah, but what about dessert?", "words"),
    ],
)
def test_what_voice_over_the_agent_is(text: str, verdict: str) -> None:
    agent = "Yes, we have three vegetarian dishes."
    assert classify_overlap(text, agent, ConversationSettings().backchannels) == verdict


def test_words_a_caller_shares_with_a_long_reply_are_not_an_echo() -> None:
    story = (
        "Once upon a time a little dragon would like to ask you about the mountains, and now "
        "because it was stop and go, something else happened to you and me."
    )
    said = "Stop please stop talking now because I would like to ask you about something else"
    assert classify_overlap(said, story, ()) == "words"
    assert classify_overlap("a little dragon would like to ask", story, ()) == "echo"


async def test_a_reply_stops_at_its_sentence_cap_whatever_the_model_does() -> None:
    rambling = ScriptedReply(tokens=words("One fact. Two facts. Three facts. Four facts. Five facts."))
    call = Call({0: "Tell me about it."}, [rambling])
    await call.run([(0.5, 1.5, 0)], until_s=8.0)
    turn = only_turn(call)
    cap = call.settings.reply.max_sentences
    assert turn.agent_text == " ".join(["One fact.", "Two facts.", "Three facts."][:cap])
    assert not turn.interrupted and turn.agent_text_heard == turn.agent_text
    assert call.llm.closed_early == 1  # the model was stopped, not left generating
    assert history(call)[-1] == ("assistant", turn.agent_text)


async def test_a_looping_model_is_cut_short_and_the_call_goes_on() -> None:
    looping = ScriptedReply(tokens=words("I'm sorry. " * 60), token_delay_s=0.01)
    call = Call({0: "Can you help?", 1: "Hello?"}, [looping, OTHER])
    await call.run([(0.5, 1.5, 0), (5.0, 5.6, 1)], until_s=10.0)
    first, second = call.of(TurnCompleted)
    assert first.agent_text.count("sorry") == 1  # type: ignore[union-attr]
    assert call.llm.closed_early == 1
    assert second.agent_text == "Sure. Anything else?"  # type: ignore[union-attr]


async def test_words_just_after_a_fast_answer_began_continue_the_callers_turn() -> None:
    # "Table for two." ends the turn after 0.3 s and the prepared answer plays at once; the
    # caller, who had only paused, goes on 0.7 s after they stopped: the answer is dropped and
    # the whole turn answered.
    quick = ScriptedReply(tokens=words("Of course. For two."), first_token_s=0.01, token_delay_s=0.005)
    call = Call({0: "Table for two.", 1: "At eight please."}, [quick, OTHER])
    await call.run([(0.5, 1.5, 0), (2.2, 3.0, 1)], until_s=8.0)
    assert call.audible_between(1.8, 2.2)  # the first answer had begun
    [discarded] = call.of(ReplyDiscarded)
    assert isinstance(discarded, ReplyDiscarded) and discarded.reason == "caller_went_on"
    turn = only_turn(call)
    assert turn.user_text == "Table for two. At eight please." and turn.agent_text == "Sure. Anything else?"
    assert history(call) == [("user", turn.user_text), ("assistant", turn.agent_text)]
    assert call.of(Interrupted) == []


async def test_words_long_after_the_caller_stopped_are_a_barge_in() -> None:
    quick = ScriptedReply(tokens=words("Of course. We have many tables."), first_token_s=0.01)
    call = Call({0: "Table for two.", 1: "At eight please."}, [quick, OTHER])
    await call.run([(0.5, 1.5, 0), (2.8, 3.6, 1)], until_s=8.0)  # 1.3 s after: a new turn
    assert call.of(ReplyDiscarded) == [] and len(call.of(Interrupted)) == 1
    assert [t.user_text for t in call.of(TurnCompleted)] == ["Table for two.", "At eight please."]  # type: ignore[union-attr]


async def test_one_word_heard_early_is_judged_again_on_the_whole_voice() -> None:
    # The first 0.3 s of voice transcribe to "Oh" alone: not enough to cut the agent off. The
    # whole voice, once the caller stops, is "Oh okay." (a backchannel): the agent goes on.
    call = Call({0: "What dishes do you have?", 1: "Oh", 2: "okay."}, [ANSWER])
    await call.run([(0.5, 1.5, 0), (2.8, 3.2, 1), (3.2, 3.5, 2)], until_s=9.0)
    assert call.of(Interrupted) == []
    assert [e.reason for e in call.of(BargeIn) if e.phase == "rejected"] == ["backchannel"]  # type: ignore[union-attr]
    assert not only_turn(call).interrupted


async def test_a_one_word_interruption_cuts_the_agent_once_the_caller_stops() -> None:
    call = Call({0: "What dishes do you have?", 1: "Stop."}, [ANSWER, OTHER])
    await call.run([(0.5, 1.5, 0), (2.8, 3.3, 1)], until_s=9.0)
    [suspected] = [e for e in call.of(BargeIn) if e.phase == "suspected"]
    [interrupted] = call.of(Interrupted)
    # Held from the onset; cut after 0.3 s of quiet and a transcript of the whole voice.
    assert not call.audible_between(suspected.at_s + 0.001, interrupted.at_s + 0.02)
    assert interrupted.at_s == pytest.approx(3.3 + 0.3 + 0.15, abs=0.04)
    assert [t.user_text for t in call.of(TurnCompleted)][-1] == "Stop."  # type: ignore[union-attr]


async def test_a_reply_with_nothing_sayable_becomes_the_fallback_line() -> None:
    gibberish = ScriptedReply(tokens=["ad" * 4] + ["ad"] * 30, token_delay_s=0.01)
    call = Call({0: "Hello?"}, [gibberish])
    await call.run([(0.5, 1.5, 0)], until_s=8.0)
    assert only_turn(call).agent_text == call.settings.fallback_line
