"""The agent: persona, conversation memory and tools around a streaming LLM.

Memory holds what was actually said: an interrupted reply is remembered as the part the user
heard, and a reply prepared while the caller might still go on (a preemptive reply) leaves no
trace until the conversation commits it. Tool calls act on the world, so a reply runs them only
once it counts (`may_act`); they run shielded from barge-in, so a booking that started is never
lost halfway and its result lands in memory even if the reply that asked for it was cut off.

Knowledge, when there is a knowledge base, is looked up for every request and handed to the
model as notes right before the request, never remembered: the conversation's prefix stays the
same from turn to turn (the LLM server's cache keeps it), and memory holds only what was said.
Looked up up front rather than offered as a tool: the local model cannot call tools, and a tool
round costs a second LLM pass before the first word.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from voiceagent.engines.base import ChatMessage, LLMEngine, ToolCall, ToolSpec
from voiceagent.pipeline.knowledge import Consulted, KnowledgeLookup
from voiceagent.pipeline.settings import ConversationSettings

log = logging.getLogger(__name__)

ToolFunction = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass(frozen=True)
class AgentTool:
    spec: ToolSpec
    run: ToolFunction


class Agent:
    def __init__(
        self,
        llm: LLMEngine,
        settings: ConversationSettings,
        tools: Sequence[AgentTool] = (),
        knowledge: KnowledgeLookup | None = None,
    ) -> None:
        self.llm = llm
        self.knowledge = knowledge
        self.settings = settings
        self.tools = {tool.spec.name: tool for tool in tools}
        self.history: list[ChatMessage] = []
        self.tool_tasks: set[asyncio.Task[None]] = set()
        self._asked: ChatMessage | None = None  # the request being answered, not yet in history

    def system_message(self) -> ChatMessage:
        prompt = self.settings.system_prompt.format(persona=self.settings.persona)
        return ChatMessage(role="system", content=prompt)

    def context(self) -> list[ChatMessage]:
        """System prompt plus the most recent exchanges (never starting on a dangling tool reply)."""
        return [self.system_message(), *self._recent(self.history)]

    def _recent(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """The newest exchanges. Past ``history_turns`` the oldest half goes at once, not one
        exchange a turn: an LLM server keeps the processed prompt (its KV cache) and reuses it as
        far as the new prompt starts the same, so every change at the start of the history makes
        it read the whole conversation again (3.6 s on turn 14 of bench conversation, against
        0.2 s). Dropped in blocks, that happens once every ``history_turns / 2`` turns."""
        user_turns = [i for i, m in enumerate(messages) if m.role == "user"]
        if len(user_turns) > self.settings.history_turns:
            return messages[user_turns[-max(1, self.settings.history_turns // 2)] :]
        return messages

    async def reply(
        self,
        user_text: str,
        *,
        may_act: Callable[[], Awaitable[object]] | None = None,
        on_consulted: Callable[[Consulted], None] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Stream the reply's text; tool rounds happen inside, each after ``may_act`` returns.
        The request joins the history when the caller commits what was heard, or when a tool
        runs; `discard_reply` forgets it. ``on_consulted`` hears what the knowledge base gave."""
        self._asked = ChatMessage(role="user", content=user_text)
        notes = ""
        if self.knowledge is not None:
            consulted = await self.knowledge.lookup(user_text)
            notes = consulted.notes
            if on_consulted is not None:
                on_consulted(consulted)
        specs = [tool.spec for tool in self.tools.values()]
        for _ in range(self.settings.max_tool_rounds + 1):
            calls: tuple[ToolCall, ...] = ()
            unsaid = [self._asked] if self._asked is not None else []
            context = [*self.context(), *self._with_notes(unsaid, notes)]
            stream = self.llm.stream(context, tools=specs, grounded=bool(notes))
            async with contextlib.aclosing(stream) as deltas:
                async for delta in deltas:
                    if delta.text:
                        yield delta.text
                    if delta.tool_calls:
                        calls = delta.tool_calls
            if not calls:
                return
            if may_act is not None:
                await may_act()
            self._remember_request()
            self.history.append(ChatMessage(role="assistant", tool_calls=calls))
            await self._run_tools(calls)

    def _with_notes(self, unsaid: list[ChatMessage], notes: str) -> list[ChatMessage]:
        """The request not yet in memory, with the notes for it (shown, never remembered)."""
        if not notes:
            return unsaid
        if self.settings.notes_placement == "system" or not unsaid:
            return [ChatMessage(role="system", content=notes), *unsaid]
        [asked] = unsaid
        return [asked.model_copy(update={"content": f"{notes}\n\nQuestion: {asked.content}"})]

    def _remember_request(self) -> None:
        if self._asked is not None:
            self.history.append(self._asked)
            self._asked = None

    def discard_reply(self) -> None:
        """The reply in progress never happened (the caller was not done): forget its request."""
        self._asked = None

    async def instructed(self, instructions: str) -> AsyncGenerator[str, None]:
        """The agent's own words for ``instructions`` (a proactive prompt), in the context of the
        conversation so far. Nothing is remembered until the caller commits what was heard."""
        prompt = self.settings.prompt_instructions.format(instructions=instructions)
        messages = [*self.context(), ChatMessage(role="system", content=prompt)]
        async with contextlib.aclosing(self.llm.stream(messages)) as deltas:
            async for delta in deltas:
                if delta.text:
                    yield delta.text

    async def _run_tools(self, calls: Sequence[ToolCall]) -> None:
        task = asyncio.create_task(self._execute(calls))
        self.tool_tasks.add(task)
        task.add_done_callback(self.tool_tasks.discard)
        # Shielded: cancelling the reply (barge-in) stops waiting, not the tool itself.
        await asyncio.shield(task)

    async def _execute(self, calls: Sequence[ToolCall]) -> None:
        for call in calls:
            tool = self.tools.get(call.name)
            if tool is None:
                result = f"error: no tool named {call.name!r}"
            else:
                try:
                    arguments = json.loads(call.arguments or "{}")
                    result = await tool.run(arguments if isinstance(arguments, dict) else {})
                except Exception as exc:  # a tool's failure is the model's to explain, not a crash
                    log.warning("tool %s failed: %s", call.name, exc)
                    result = f"error: {type(exc).__name__}: {exc}"
            self.history.append(ChatMessage(role="tool", tool_call_id=call.id, content=result))

    def commit_reply(self, heard: str) -> None:
        """Remember the request and the reply as heard (possibly cut short, possibly empty)."""
        self._remember_request()
        if heard.strip():
            self.history.append(ChatMessage(role="assistant", content=heard.strip()))
        # What the model is never shown again is not kept: a long call's memory stays bounded
        # (the whole transcript is in the store).
        self.history = self._recent(self.history)

    async def wait_for_tools(self) -> None:
        if self.tool_tasks:
            await asyncio.gather(*self.tool_tasks, return_exceptions=True)
