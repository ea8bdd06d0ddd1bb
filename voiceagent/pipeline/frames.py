"""Typed messages a conversation emits: what the live view, the store and metrics consume."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

from voiceagent.store.records import TurnMetrics


class AgentState(StrEnum):
    LISTENING = "listening"
    THINKING = "thinking"
    SPEAKING = "speaking"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    at_s: float  # conversation clock (event-loop time since the call began)


class StateChanged(_Event):
    kind: Literal["state"] = "state"
    state: AgentState


class UserTranscript(_Event):
    kind: Literal["transcript"] = "transcript"
    text: str
    final: bool


class AgentSpeech(_Event):
    """A sentence the agent starts saying (sent when its audio is queued for playout)."""

    kind: Literal["agent_text"] = "agent_text"
    text: str


class Interrupted(_Event):
    kind: Literal["interrupted"] = "interrupted"
    heard: str  # what of the reply the user actually heard


class TurnCompleted(_Event):
    kind: Literal["turn"] = "turn"
    index: int
    user_text: str
    agent_text: str
    agent_text_heard: str
    interrupted: bool
    metrics: TurnMetrics
    fault: str | None = None  # "stage: what failed" when an engine or a bug cut this turn short
    initiator: Literal["user", "agent"] = "user"  # "agent": a prompt no user turn asked for
    event_id: str | None = None  # the outreach event a prompt came from


FaultStage = Literal["vad", "asr", "asr_partial", "llm", "tts", "reply", "turn_end", "background"]


class Fault(_Event):
    """A failure the conversation contained: it cost at most the current reply."""

    kind: Literal["fault"] = "fault"
    stage: FaultStage
    message: str


RecoveryReason = Literal["reply_task_gone", "no_reply_task"]
RECOVERY_REASONS: tuple[RecoveryReason, ...] = get_args(RecoveryReason)


class Recovered(_Event):
    """The watchdog found the conversation in a state no live task explains and reset it."""

    kind: Literal["recovered"] = "recovered"
    reason: RecoveryReason
    stuck_in: AgentState


ConversationEvent = (
    StateChanged | UserTranscript | AgentSpeech | Interrupted | TurnCompleted | Fault | Recovered
)
