"""Speech the agent starts itself (`Conversation.say`) on the virtual-time timeline: it waits for
a safe point (never over the caller, never over a reply), can be interrupted like any reply, and
its handle settles as played, interrupted (with what was heard) or dropped (and why)."""

from __future__ import annotations

import pytest

from tests.pipeline.timeline import Call, words
from voiceagent.pipeline.frames import AgentSpeech, Interrupted, TurnCompleted
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.pipeline.speech import SpeechHandle, SpeechOutcome, SpeechResult
from voiceagent.testing.fakes import ScriptedReply

pytestmark = pytest.mark.looptime

NEWS = "Hi Ann. Your order shipped this morning."
WEATHER = ScriptedReply(tokens=words("It is sunny. Warm all day, around twenty degrees."))


def turns(call: Call) -> list[TurnCompleted]:
    return [e for e in call.events if isinstance(e, TurnCompleted)]


def first_said(call: Call, text: str) -> float:
    return next(e.at_s for e in call.events if isinstance(e, AgentSpeech) and e.text == text)


class Prompts:
    """Handles made at points of the timeline."""

    def __init__(self, call: Call) -> None:
        self.call = call
        self.handles: list[SpeechHandle] = []

    def at(self, t: float, text: str | None = None, **options: object) -> None:
        self.call.at(t, lambda: self.handles.append(self.call.conversation.say(text, **options)))  # type: ignore[arg-type]

    def results(self) -> list[SpeechResult]:
        assert all(h.done() for h in self.handles), self.handles
        return [h.result for h in self.handles]


async def test_an_idle_call_hears_the_prompt_and_the_answer_continues_the_conversation() -> None:
    call = Call({0: "Yes, when does it arrive?"}, [ScriptedReply(tokens=words("On Friday."))])
    prompts = Prompts(call)
    prompts.at(0.5, NEWS, event_id="evt-1")
    await call.run([(4.0, 5.0, 0)], until_s=8.0)

    [played] = prompts.results()
    assert played == SpeechResult(outcome=SpeechOutcome.PLAYED, heard=NEWS)
    prompt_turn, answer = turns(call)
    assert (prompt_turn.initiator, prompt_turn.event_id, prompt_turn.user_text) == ("agent", "evt-1", "")
    assert prompt_turn.agent_text_heard == NEWS and not prompt_turn.interrupted
    assert call.audible_between(0.5, 1.0)
    # The caller's answer is an ordinary turn, and the LLM saw the prompt as the agent's words.
    assert (answer.initiator, answer.user_text, answer.agent_text) == (
        "user",
        "Yes, when does it arrive?",
        "On Friday.",
    )
    assert [(m.role, m.content) for m in call.llm.requests[0][1:]] == [
        ("assistant", NEWS),
        ("user", "Yes, when does it arrive?"),
    ]


@pytest.mark.parametrize(
    "say_at",
    [1.0, 1.7, 2.5],
    ids=["caller-mid-utterance", "reply-in-flight", "agent-speaking"],
)
async def test_a_prompt_waits_for_the_reply_and_the_caller_to_finish(say_at: float) -> None:
    call = Call({0: "What is the weather today?"}, [WEATHER])
    prompts = Prompts(call)
    prompts.at(say_at, NEWS)
    await call.run([(0.5, 1.5, 0)], until_s=10.0)

    reply, prompt_turn = turns(call)
    assert reply.initiator == "user" and not reply.interrupted  # the reply was never cut
    assert reply.agent_text_heard == "It is sunny. Warm all day, around twenty degrees."
    assert prompt_turn.initiator == "agent" and prompt_turn.agent_text_heard == NEWS
    # Spoken only after the reply played out, and not on top of it.
    assert first_said(call, "Hi Ann.") > reply.at_s
    assert prompts.results()[0].outcome == SpeechOutcome.PLAYED


async def test_a_caller_talking_over_a_prompt_interrupts_it_and_is_answered() -> None:
    call = Call({0: "Wait, which order?"}, [ScriptedReply(tokens=words("The blue jacket."))])
    prompts = Prompts(call)
    long_news = "Hi Ann. I have news about your order. It shipped this morning and arrives on Friday."
    prompts.at(0.5, long_news)
    await call.run([(2.5, 3.5, 0)], until_s=8.0)

    [interrupted] = prompts.results()
    assert interrupted.outcome == SpeechOutcome.INTERRUPTED
    assert interrupted.heard.startswith("Hi Ann.") and "Friday" not in interrupted.heard
    [event] = [e for e in call.events if isinstance(e, Interrupted)]
    assert not call.audible_between(event.at_s + 0.001, event.at_s + 0.5)
    prompt_turn, answer = turns(call)
    assert prompt_turn.interrupted and prompt_turn.agent_text_heard == interrupted.heard
    assert (answer.user_text, answer.agent_text) == ("Wait, which order?", "The blue jacket.")
    # The agent remembers only what the caller heard of the prompt.
    assert [(m.role, m.content) for m in call.llm.requests[0][1:]] == [
        ("assistant", interrupted.heard),
        ("user", "Wait, which order?"),
    ]


async def test_queued_prompts_are_spoken_one_at_a_time_by_priority() -> None:
    call = Call({}, [])
    prompts = Prompts(call)
    prompts.at(0.5, "A routine reminder.", priority=0)
    prompts.at(0.5, "An urgent notice.", priority=5)
    await call.run([], until_s=6.0)

    routine, urgent = prompts.results()
    assert routine.outcome == urgent.outcome == SpeechOutcome.PLAYED
    assert first_said(call, "An urgent notice.") < first_said(call, "A routine reminder.")
    assert [t.agent_text for t in turns(call)] == ["An urgent notice.", "A routine reminder."]


async def test_an_expired_prompt_is_never_spoken() -> None:
    call = Call({0: "Let me tell you a long story about my day and how it went."}, [WEATHER])
    prompts = Prompts(call)
    prompts.at(0.5, "Stale news.", expires_in_s=1.0)  # the caller talks until 3.0 s
    await call.run([(0.3, 3.0, 0)], until_s=8.0)

    assert prompts.results() == [SpeechResult(outcome=SpeechOutcome.DROPPED, reason="expired")]
    assert "Stale news." not in call.tts.started


async def test_a_prompt_with_no_safe_point_in_time_is_given_back_not_forced() -> None:
    call = Call({0: "On and on and on."}, [WEATHER], settings=ConversationSettings(prompt_max_wait_s=2.0))
    prompts = Prompts(call)
    prompts.at(0.5, NEWS)
    await call.run([(0.2, 5.0, 0)], until_s=8.0)  # the caller never pauses within the 2 s

    assert prompts.results() == [SpeechResult(outcome=SpeechOutcome.DROPPED, reason="no_safe_point")]
    assert NEWS.split(".")[0] + "." not in call.tts.started


async def test_a_newer_prompt_replaces_a_waiting_one_with_the_same_key() -> None:
    call = Call({0: "What is the weather today?"}, [WEATHER])
    prompts = Prompts(call)
    prompts.at(0.8, "Your order is late.", replaces="order-42")
    prompts.at(1.2, "Your order arrived.", replaces="order-42")
    await call.run([(0.5, 1.5, 0)], until_s=10.0)

    late, arrived = prompts.results()
    assert late == SpeechResult(outcome=SpeechOutcome.DROPPED, reason="replaced")
    assert arrived.outcome == SpeechOutcome.PLAYED
    assert "Your order is late." not in call.tts.started


async def test_hanging_up_drops_waiting_and_playing_prompts() -> None:
    call = Call({0: "What is the weather today?"}, [WEATHER])
    prompts = Prompts(call)
    prompts.at(0.5, "Hi Ann. I have news about your order. It shipped this morning.")
    prompts.at(0.6, "And one more thing.")
    await call.run([], until_s=1.2)  # the first is playing, the second waits
    await call.conversation.close()

    playing, waiting = prompts.results()
    assert playing.outcome == SpeechOutcome.DROPPED and playing.reason == "call_ended"
    assert playing.heard.startswith("Hi")
    assert waiting == SpeechResult(outcome=SpeechOutcome.DROPPED, reason="call_ended")
    late = call.conversation.say("Too late.")
    assert late.done() and late.result.reason == "call_ended"


async def test_instructions_are_phrased_by_the_llm_in_the_calls_context() -> None:
    call = Call({}, [ScriptedReply(tokens=words("Hi Ann, how is the new jacket?"))])
    prompts = Prompts(call)
    prompts.at(0.5, instructions="Ask Ann how she likes the jacket she bought.")
    await call.run([], until_s=5.0)

    [played] = prompts.results()
    assert played == SpeechResult(outcome=SpeechOutcome.PLAYED, heard="Hi Ann, how is the new jacket?")
    [request] = call.llm.requests
    assert request[-1].role == "system" and "Ask Ann how she likes the jacket" in (request[-1].content or "")
    assert [(m.role, m.content) for m in call.agent.history] == [
        ("assistant", "Hi Ann, how is the new jacket?")
    ]


async def test_an_uninterruptible_prompt_plays_through_speech() -> None:
    call = Call({0: "Hello? Hello?"}, [])
    prompts = Prompts(call)
    prompts.at(0.5, "This call is recorded. Please hold on for a moment.", allow_interruptions=False)
    await call.run([(1.5, 2.5, 0)], until_s=6.0)

    [played] = prompts.results()
    assert played.outcome == SpeechOutcome.PLAYED and call.of(Interrupted) == []


async def test_a_prompt_whose_words_cannot_be_produced_is_dropped_quietly() -> None:
    broken = ScriptedReply(tokens=words("Hi"), fail_after=0, error=ConnectionResetError("gone"))
    call = Call({}, [broken])
    prompts = Prompts(call)
    prompts.at(0.5, instructions="Greet Ann.")
    await call.run([], until_s=4.0)

    assert prompts.results() == [SpeechResult(outcome=SpeechOutcome.DROPPED, reason="failed")]
    assert call.tts.started == []  # no fallback line out of the blue
    [turn] = turns(call)
    assert turn.fault == "llm: ConnectionResetError: gone" and turn.initiator == "agent"


async def test_a_caller_who_starts_speaking_as_a_prompt_starts_is_heard_not_taken_for_echo() -> None:
    # The caller starts 20 ms after the prompt was started at a safe point: their speech began
    # before the agent's audio, so it cannot be the agent's echo; it interrupts the prompt.
    call = Call({0: "Hello, is anyone there?"}, [ScriptedReply(tokens=words("Yes, I am here."))])
    prompts = Prompts(call)
    prompts.at(1.0, "Hi Ann. I have news about your order. It shipped this morning.")
    await call.run([(1.02, 2.5, 0)], until_s=7.0)

    [result] = prompts.results()
    assert result.outcome == SpeechOutcome.INTERRUPTED
    answer = turns(call)[-1]
    assert (answer.user_text, answer.agent_text) == ("Hello, is anyone there?", "Yes, I am here.")
