"""What `/api/admin/…` answers and what the live WebSocket sends: the dashboard's one contract.

The pages read nothing else, so every shape they draw is here, typed, and in the OpenAPI docs.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

from voiceagent.knowledge.documents import DocumentState
from voiceagent.store.records import TurnRecord, UtcDatetime

T = TypeVar("T")

STAGES = ("endpointing", "asr", "retrieval", "llm_first_token", "tts_first_audio", "voice_to_voice")


class _View(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class Page(_View, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


# -- overview ----------------------------------------------------------------------------------


class NodeCalls(_View):
    node_id: str
    live_calls: int


class StageLatency(_View):
    stage: str  # one of STAGES
    p50_s: float | None
    p95_s: float | None
    count: int


class Overview(_View):
    live_calls: int
    nodes: list[NodeCalls]  # every node holding a live call (heartbeating)
    window_h: float  # the latency percentiles cover turns that ended this recently
    latency: list[StageLatency]
    calls_today: int  # since 00:00 UTC
    turns_today: int
    outreach_today: dict[str, int]  # status -> events created today
    open_intents: int
    documents: dict[str, int]  # knowledge state -> documents
    generated_at: UtcDatetime


# -- calls ---------------------------------------------------------------------------------------


class CallSummary(_View):
    id: str
    user_id: str
    node_id: str
    started_at: UtcDatetime
    ended_at: UtcDatetime | None
    end_reason: str | None
    live: bool  # held by a node that is still heartbeating
    turns: int
    barge_ins: int
    prompts: int  # turns the agent started itself (outreach)
    last_user_text: str  # the caller's latest words, cut to 200 characters


class TurnView(TurnRecord):
    """A turn as stored: ``initiator`` "agent" is a proactive prompt (``event_id`` its outreach
    event), ``interrupted`` a barge-in (the caller heard only ``agent_text_heard``)."""


class SummaryIntentView(_View):
    intent: str
    confidence: float
    evidence: list[int]  # turn ids


class AfterCallSummary(_View):
    """What the summarize_call job made of a finished call (None until it ran)."""

    summary: str
    intents: list[SummaryIntentView]
    model: str
    created_at: UtcDatetime


class CallDetail(CallSummary):
    transcript: list[TurnView]
    after_call: AfterCallSummary | None = None


# -- users and intents -----------------------------------------------------------------------------

IntentStatus = Literal["open", "resolved", "dismissed"]


class EvidenceTurn(_View):
    turn_id: int
    call_id: str
    index: int
    user_text: str
    started_at: UtcDatetime


class IntentView(_View):
    id: int
    user_id: str
    intent: str
    confidence: float
    status: IntentStatus
    analyzer: str
    detected_at: UtcDatetime
    updated_at: UtcDatetime
    evidence: list[EvidenceTurn]  # the turns it was found in, oldest first


class IntentChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: IntentStatus  # resolved / dismissed by an operator; open again


class UserSummary(_View):
    id: str
    display_name: str | None
    created_at: UtcDatetime
    last_seen_at: UtcDatetime
    calls: int
    live: bool
    open_intents: list[str]  # intent names


class UserDetail(UserSummary):
    attributes: dict[str, Any]
    intents: list[IntentView]  # every status, most recently updated first
    recent_calls: list[CallSummary]


# -- knowledge ---------------------------------------------------------------------------------------


class KnowledgeOverview(_View):
    documents: Page[DocumentState]
    states: dict[str, int]  # state -> documents
    last_ingestion: DocumentState | None  # the document whose state changed last


# -- charts --------------------------------------------------------------------------------------------


class LatencyHistogram(_View):
    edges_s: list[float]  # bucket i counts values in [edges[i], edges[i+1]); the last is open-ended
    stages: dict[str, list[int]]  # stage -> counts, len(edges_s) each


class IntentSeries(_View):
    buckets: list[UtcDatetime]  # start of each hour (or day) of the window
    series: dict[str, list[int]]  # intent -> findings first detected in each bucket


class FunnelStep(_View):
    stage: str  # decided, published, routed, spoken, heard, acked; then expired, failed, interrupted
    events: int  # events of the window that reached it


class Charts(_View):
    window_h: float
    latency: LatencyHistogram
    intents: IntentSeries
    funnel: list[FunnelStep]


# -- audit ---------------------------------------------------------------------------------------------


class AuditEntry(_View):
    id: int
    at: UtcDatetime
    actor: str  # a user name or "token:<name>"
    role: str
    action: str  # e.g. outreach.send, intent.resolved, document.delete, login, logout
    target: str | None
    detail: str | None
    address: str | None


# -- live updates (WebSocket /api/admin/live) ----------------------------------------------------------

LiveKind = Literal["hello", "call.started", "call.ended", "turn", "outreach", "intent", "knowledge", "resync"]


class LiveUpdate(_View):
    """One change, as soon as any node has written it. ``resync``: updates were lost (the feed
    fell behind): read the API again. A dashboard that reconnects resyncs too."""

    type: LiveKind
    at: UtcDatetime
    node_id: str | None = None  # the node that wrote the change, when known
    call: CallSummary | None = None  # call.started / call.ended
    turn: TurnView | None = None  # turn
    outreach: OutreachChange | None = None
    intent: IntentView | None = None
    document: DocumentState | None = None


class OutreachChange(_View):
    event_id: str
    user_id: str
    type: str  # greet | ask
    stage: str  # the stage just recorded
    status: str  # the event's status now
    detail: str | None = None


LiveUpdate.model_rebuild()

__all__ = [
    "STAGES",
    "AuditEntry",
    "CallDetail",
    "CallSummary",
    "Charts",
    "EvidenceTurn",
    "FunnelStep",
    "IntentChange",
    "IntentSeries",
    "IntentView",
    "KnowledgeOverview",
    "LatencyHistogram",
    "LiveUpdate",
    "OutreachChange",
    "Overview",
    "Page",
    "StageLatency",
    "TurnView",
    "UserDetail",
    "UserSummary",
]
