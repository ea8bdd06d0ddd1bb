"""A conversation on a scripted timeline with fake engines, on virtual time (looptime)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from voiceagent.pipeline.agent import Agent, AgentTool
from voiceagent.pipeline.conversation import Conversation
from voiceagent.pipeline.frames import (
    AgentState,
    ConversationEvent,
    Recovered,
    StateChanged,
    TurnCompleted,
)
from voiceagent.pipeline.knowledge import KnowledgeLookup
from voiceagent.pipeline.playout import Playout
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.testing.fakes import FakeASR, FakeLLM, FakeTTS, FakeVAD, ScriptedReply, frame

FRAME_S = 0.02


def words(text: str) -> list[str]:
    """LLM-style tokens: each word after the first carries its leading space."""
    first, *rest = text.split(" ")
    return [first, *(f" {w}" for w in rest)]


@dataclass
class Call:
    """A conversation with fake engines, fed 20 ms frames in (virtual) real time."""

    texts: dict[int, str]
    replies: list[ScriptedReply]
    tools: Sequence[AgentTool] = ()
    knowledge: KnowledgeLookup | None = None
    settings: ConversationSettings = field(default_factory=ConversationSettings)
    events: list[ConversationEvent] = field(default_factory=list)
    sent: list[tuple[float, bool]] = field(default_factory=list)  # (time, audible) per outbound frame

    vad: FakeVAD = field(default_factory=FakeVAD)
    asr: FakeASR | None = None
    tts: FakeTTS = field(default_factory=FakeTTS)
    expect_recovery: bool = False  # the watchdog must stay quiet unless a test provokes it
    on_event: Callable[[ConversationEvent], None] | None = None  # besides recording it
    on_turn: Callable[[TurnCompleted], Coroutine[Any, Any, None]] | None = None
    actions: list[tuple[float, Callable[[], object]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.asr = self.asr or FakeASR(self.texts)
        self.llm = FakeLLM(list(self.replies))
        self.playout = Playout(sample_rate=16_000)
        self.agent = Agent(self.llm, self.settings, self.tools, self.knowledge)
        self.conversation = Conversation(
            vad=self.vad, asr=self.asr, tts=self.tts, agent=self.agent, playout=self.playout,
            settings=self.settings, on_event=self._record, on_turn=self.on_turn,
        )  # fmt: skip

    def at(self, t: float, action: Callable[[], object]) -> None:
        """Run ``action`` once the timeline reaches ``t`` seconds (e.g. the agent is told to say
        something while the caller is mid-sentence)."""
        self.actions.append((t, action))

    def _record(self, event: ConversationEvent) -> None:
        self.events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    async def run(self, speech: Sequence[tuple[float, float, int]], until_s: float) -> None:
        """Feed ``until_s`` of audio; (start, end, utterance id) spans are speech."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for n in range(round(until_s / FRAME_S)):
            t = n * FRAME_S
            utterance = next((u for s, e, u in speech if s <= t < e), None)
            for due in [a for a in self.actions if a[0] <= t + 1e-9]:
                self.actions.remove(due)
                due[1]()
            await self.conversation.feed(frame(utterance))
            out = self.playout.read_frame()
            self.sent.append((loop.time() - start, any(out)))
            await asyncio.sleep(start + (n + 1) * FRAME_S - loop.time())
        if not self.expect_recovery:
            assert self.of(Recovered) == [], "the stuck-state watchdog fired on a normal timeline"

    def of(self, kind: type[ConversationEvent]) -> list[ConversationEvent]:
        return [e for e in self.events if isinstance(e, kind)]

    def states(self) -> list[AgentState]:
        return [e.state for e in self.events if isinstance(e, StateChanged)]

    def audible_between(self, start: float, end: float) -> bool:
        return any(audible for t, audible in self.sent if start <= t < end)
