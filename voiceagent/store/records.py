"""Pydantic views of stored rows: what the rest of the code passes around, never ORM objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _as_utc(moment: datetime) -> datetime:
    # Stored as UTC everywhere; SQLite hands back naive values even for timezone=True columns.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]
as_utc = _as_utc


class _Record(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)


class UserRecord(_Record):
    id: str
    display_name: str | None
    attributes: dict[str, Any]
    created_at: UtcDatetime
    last_seen_at: UtcDatetime


class Reference(_Record):
    """One passage an answer was given, as shown under the answer and stored on the turn."""

    doc_id: str
    title: str = ""
    ordinal: int = 0
    score: float = Field(description="how close the passage is to the question (cosine, 0..1)")
    text: str = Field("", exclude=True)  # what the model read; not repeated into events and records


class TurnMetrics(_Record):
    """Seconds spent per stage of one turn; None when the stage did not run."""

    endpointing_s: float | None = Field(None, ge=0)
    asr_s: float | None = Field(None, ge=0)
    retrieval_s: float | None = Field(None, ge=0)  # the knowledge lookup before the LLM
    llm_first_token_s: float | None = Field(None, ge=0)
    tts_first_audio_s: float | None = Field(None, ge=0)
    voice_to_voice_s: float | None = Field(None, ge=0)


class NewTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    started_at: UtcDatetime
    ended_at: UtcDatetime | None = None
    user_text: str = ""
    agent_text: str = ""
    agent_text_heard: str = ""
    interrupted: bool = False
    metrics: TurnMetrics = TurnMetrics()
    fault: str | None = Field(None, max_length=300)  # "stage: error" when a failure cut the turn short
    initiator: Literal["user", "agent"] = "user"  # "agent": a prompt the agent started itself
    event_id: str | None = Field(None, max_length=64)  # the outreach event behind a prompt
    sources: list[Reference] = []  # the knowledge the answer was given, best first


class TurnRecord(_Record):
    id: int
    call_id: str
    index: int
    started_at: UtcDatetime
    ended_at: UtcDatetime | None
    user_text: str
    agent_text: str
    agent_text_heard: str
    interrupted: bool
    metrics: TurnMetrics
    fault: str | None = None
    initiator: Literal["user", "agent"] = "user"
    event_id: str | None = None
    sources: list[Reference] = []


class CallRecord(_Record):
    id: str
    user_id: str
    node_id: str
    started_at: UtcDatetime
    ended_at: UtcDatetime | None
    end_reason: str | None
    turns: list[TurnRecord] = []

    @property
    def active(self) -> bool:
        return self.ended_at is None
