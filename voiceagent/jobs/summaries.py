"""Call summaries (the summarize_call job's output): one row per call, replaced when the call is
summarized again, so a retried or repeated job leaves one current summary."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError

from voiceagent.store.database import Database
from voiceagent.store.models import CallSummary, utcnow
from voiceagent.store.records import UtcDatetime


class SummaryIntent(BaseModel):
    """An intent the caller showed in the call, with the turns that show it."""

    model_config = ConfigDict(frozen=True)

    intent: str
    confidence: float = Field(ge=0, le=1)
    evidence: list[int]  # turn ids, ascending


class CallSummaryRecord(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    call_id: str
    job_id: str | None
    summary: str
    intents: list[SummaryIntent]
    model: str
    created_at: UtcDatetime


class CallSummaries:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def save(
        self,
        call_id: str,
        *,
        summary: str,
        intents: Sequence[SummaryIntent],
        model: str,
        job_id: str | None = None,
    ) -> CallSummaryRecord:
        """Insert or replace the call's summary."""
        values = {
            "job_id": job_id,
            "summary": summary,
            "intents": [i.model_dump() for i in intents],
            "model": model[:128],
            "created_at": utcnow(),
        }

        def new() -> CallSummary:
            return CallSummary(call_id=call_id)

        try:
            await self.database.set_row(CallSummary, call_id, new, **values)
        except IntegrityError:  # another run inserted it between our read and write: replace theirs
            await self.database.set_row(CallSummary, call_id, new, **values)
        saved = await self.get(call_id)
        assert saved is not None
        return saved

    async def get(self, call_id: str) -> CallSummaryRecord | None:
        async with self.database.sessions() as session:
            row = await session.get(CallSummary, call_id)
            return CallSummaryRecord.model_validate(row) if row is not None else None
