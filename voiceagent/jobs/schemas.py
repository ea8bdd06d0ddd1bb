"""The jobs API's contract and the records passed between the API, the store and the workers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from voiceagent.store.records import UtcDatetime

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
StoredStatus = Literal["receiving", "queued", "running", "succeeded", "failed", "cancelled"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

# Reasons a job failed, stored on it and shown to the client (``detail`` says more, in words).
REASONS = {
    "unknown_kind": "no such job kind",
    "invalid_params": "the parameters do not fit the kind",
    "empty_text": "the text has no words to speak",
    "too_long": "the input is over the configured limit",
    "not_audio": "the file is not audio this server can decode",
    "truncated": "the audio file ends before its own header says it does",
    "empty_audio": "the file decodes to no sound",
    "call_not_found": "no such call",
    "call_not_ended": "the call is still live",
    "gave_up": "a transient failure lasted through every attempt (dead-lettered)",
    "worker_error": "the worker failed on this input",
}


class ResultFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # e.g. "audio.wav"
    media_type: str
    bytes: int


class JobRecord(BaseModel):
    """A stored job as the code passes it around (never the ORM row)."""

    model_config = ConfigDict(from_attributes=True, frozen=True)

    id: str
    kind: str
    status: StoredStatus
    params: dict[str, Any]
    input_name: str | None
    input_type: str | None
    input_bytes: int
    progress: float
    progress_note: str | None
    result: dict[str, Any] | None
    files: list[ResultFile]
    result_owner: str | None
    reason: str | None
    detail: str | None
    attempts: int
    worker: str | None
    claim: str | None
    lease_until: UtcDatetime | None
    cancel_requested: bool
    not_before: UtcDatetime
    published_at: UtcDatetime | None
    submitted_by: str | None
    dedupe_key: str | None
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    updated_at: UtcDatetime
    expires_at: UtcDatetime | None


class Claim(BaseModel):
    """A worker's hold on one run of a job: every write of that run names it, so a run whose
    lease lapsed (and was claimed again elsewhere) can no longer change the job."""

    model_config = ConfigDict(frozen=True)

    job: JobRecord
    token: str
    worker: str

    @property
    def job_id(self) -> str:
        return self.job.id


# --- HTTP ---------------------------------------------------------------------------------


class JobSubmission(BaseModel):
    """``POST /api/jobs`` as JSON (a multipart form carries ``kind``, ``params`` as JSON text and
    ``file``)."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(min_length=1, max_length=64, examples=["synthesize"])
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"text": "Hello there."}])


class JobAccepted(BaseModel):
    job_id: str
    status: JobStatus
    location: str


class JobLink(BaseModel):
    name: str
    media_type: str
    bytes: int
    url: str


class JobView(BaseModel):
    id: str
    kind: str
    status: JobStatus
    progress_percent: float = Field(ge=0, le=100)
    progress_note: str | None
    params: dict[str, Any]  # long texts are cut to 200 characters here
    input: dict[str, Any] | None  # {name, media_type, bytes} of an upload
    result: dict[str, Any] | None
    files: list[JobLink]
    reason: str | None
    detail: str | None
    attempts: int
    cancel_requested: bool
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    expires_at: UtcDatetime | None


class JobPage(BaseModel):
    jobs: list[JobView]
    next_before: UtcDatetime | None  # pass as ?before= for the next (older) page


class JobProblem(BaseModel):
    """Every error answer: a short code and a sentence, never a traceback."""

    error: str
    detail: str
    job_id: str | None = None
