"""The agent's memory: what the LLM is shown turn after turn."""

from __future__ import annotations

from voiceagent.engines.base import ChatMessage
from voiceagent.pipeline.agent import Agent
from voiceagent.pipeline.knowledge import Consulted
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.testing.fakes import FakeKnowledge, FakeLLM, ScriptedReply


async def _exchange(agent: Agent, question: str) -> list[ChatMessage]:
    """One answered turn; returns the messages the LLM was sent for it."""
    async for _ in agent.reply(question):
        pass
    agent.commit_reply(f"answer to {question}")
    llm = agent.llm
    assert isinstance(llm, FakeLLM)
    return llm.requests[-1]


async def test_history_drops_old_exchanges_in_blocks_so_the_prompt_start_rarely_changes() -> None:
    settings = ConversationSettings(history_turns=4)
    agent = Agent(FakeLLM([ScriptedReply(tokens=["Sure."], first_token_s=0) for _ in range(12)]), settings)
    first_user_lines = []
    for n in range(1, 13):
        sent = await _exchange(agent, f"question {n}")
        users = [m.content for m in sent if m.role == "user"]
        assert users[-1] == f"question {n}"  # the new question is always there
        assert len(users) <= settings.history_turns + 1
        first_user_lines.append(users[0])
    # Past the window the prompt's start (the oldest question kept) changes once every 3 turns
    # (history_turns / 2 + 1), not every turn: the LLM server's cached prompt stays valid between.
    assert first_user_lines == [
        "question 1", "question 1", "question 1", "question 1", "question 1",
        "question 4", "question 4", "question 4", "question 7", "question 7", "question 7", "question 10",
    ]  # fmt: skip
    assert [m.role for m in agent.history].count("user") <= settings.history_turns


async def test_a_discarded_reply_leaves_no_request_in_memory() -> None:
    replies = [ScriptedReply(tokens=["Sure."], first_token_s=0) for _ in range(2)]
    agent = Agent(FakeLLM(replies), ConversationSettings())
    async for _ in agent.reply("half a question"):
        pass
    agent.discard_reply()
    sent = await _exchange(agent, "the whole question")
    assert [m.content for m in sent if m.role == "user"] == ["the whole question"]
    assert [m.content for m in agent.history] == ["the whole question", "answer to the whole question"]


async def test_notes_come_right_before_the_question_and_are_never_remembered() -> None:
    replies = [ScriptedReply(tokens=["Sure."], first_token_s=0) for _ in range(2)]
    notes = FakeKnowledge()
    agent = Agent(FakeLLM(replies), ConversationSettings(), knowledge=notes)
    consulted: list[Consulted] = []
    async for _ in agent.reply("what is the wifi password", on_consulted=consulted.append):
        pass
    agent.commit_reply("It is banana.")
    llm = agent.llm
    assert isinstance(llm, FakeLLM)
    sent = llm.requests[-1]
    # After the conversation so far (which the LLM server has cached), before the question.
    assert [(m.role, m.content) for m in sent[-2:]] == [
        ("system", "Notes: the password is banana."),
        ("user", "what is the wifi password"),
    ]
    assert [r.doc_id for r in consulted[0].references] == ["wifi.md"]
    assert "banana" not in " ".join(m.content or "" for m in agent.history if m.role != "assistant")
    sent = await _exchange(agent, "and the opening hours")
    assert [m.role for m in sent] == ["system", "user", "assistant", "user"]  # nothing found: no notes
    assert notes.asked == ["what is the wifi password", "and the opening hours"]


async def test_notes_may_go_inside_the_question_and_memory_keeps_the_question_alone() -> None:
    settings = ConversationSettings(notes_placement="question")
    agent = Agent(
        FakeLLM([ScriptedReply(tokens=["Banana."], first_token_s=0)]), settings, knowledge=FakeKnowledge()
    )
    sent = await _exchange(agent, "what is the wifi password")
    assert sent[-1].role == "user" and sent[-1].content == (
        "Notes: the password is banana.\n\nQuestion: what is the wifi password"
    )
    assert [m.content for m in agent.history] == [
        "what is the wifi password",
        "answer to what is the wifi password",
    ]
