"""Typed messages a conversation emits: what the live view, the store and metrics consume."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict

from voiceagent.store.records import Reference, TurnMetrics


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
    index: int  # the user turn it belongs to; a turn resumed after a pause is sent again, whole
    text: str
    final: bool


class AgentSpeech(_Event):
    """A sentence the agent starts saying (sent when its audio is queued for playout)."""

    kind: Literal["agent_text"] = "agent_text"
    index: int  # the turn this reply belongs to (TurnCompleted.index)
    text: str


class Interrupted(_Event):
    kind: Literal["interrupted"] = "interrupted"
    index: int  # the turn whose reply was cut (TurnCompleted.index)
    heard: str  # what of the reply the user actually heard


# Why voice over the agent was not an interruption: too little of it, a backchannel ("mm-hm"),
# the agent's own words coming back, nothing ASR could make out, or a noise held too long.
RejectReason = Literal["short", "backchannel", "echo", "nothing", "too_long"]


class BargeIn(_Event):
    """Voice over the agent: its audio is held ("suspected"), then either the reply is cut
    (an `Interrupted` follows) or it goes on where it stopped ("rejected", with why)."""

    kind: Literal["barge_in"] = "barge_in"
    index: int
    phase: Literal["suspected", "rejected"]
    reason: RejectReason | None = None


class ReplyDiscarded(_Event):
    """A reply prepared before the caller's turn was surely over, thrown away unheard because
    the caller went on: nothing of it reached playout or memory. What it cost is reported."""

    kind: Literal["reply_discarded"] = "reply_discarded"
    index: int
    reason: Literal["caller_went_on", "call_ended"]
    llm_deltas: int  # streamed text pieces the LLM produced for it
    tts_audio_s: float  # seconds of speech synthesized for it
    busy_s: float  # how long it ran


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
    sources: list[Reference] = []  # the knowledge the answer was given, best first


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
    StateChanged
    | UserTranscript
    | AgentSpeech
    | BargeIn
    | Interrupted
    | ReplyDiscarded
    | TurnCompleted
    | Fault
    | Recovered
)
