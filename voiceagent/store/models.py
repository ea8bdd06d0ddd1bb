"""Tables for what the call loop and the dashboard need first: users, calls, turns.

Timestamps are timezone-aware UTC; per-turn latencies are seconds as floats (NULL when a stage
did not run, e.g. a turn cut off before the LLM answered).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    calls: Mapped[list[Call]] = relationship(back_populates="user")


class Call(Base):
    __tablename__ = "calls"
    __table_args__ = (
        Index("ix_calls_user_started", "user_id", "started_at"),
        Index("ix_calls_ended_at", "ended_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    # Which server node holds the live call: outreach events are routed by it.
    node_id: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(64))

    user: Mapped[User] = relationship(back_populates="calls")
    turns: Mapped[list[Turn]] = relationship(
        back_populates="call", order_by="Turn.index", cascade="all, delete-orphan"
    )


class Turn(Base):
    __tablename__ = "turns"
    __table_args__ = (
        UniqueConstraint("call_id", "index", name="uq_turns_call_index"),
        Index("ix_turns_event_id", "event_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    user_text: Mapped[str] = mapped_column(Text, default="")
    # What the agent meant to say and what the user actually heard before a barge-in.
    agent_text: Mapped[str] = mapped_column(Text, default="")
    agent_text_heard: Mapped[str] = mapped_column(Text, default="")
    interrupted: Mapped[bool] = mapped_column(default=False)
    fault: Mapped[str | None] = mapped_column(String(300))
    initiator: Mapped[str] = mapped_column(String(16), default="user", server_default="user")
    event_id: Mapped[str | None] = mapped_column(String(64))
    endpointing_s: Mapped[float | None] = mapped_column(Float)
    asr_s: Mapped[float | None] = mapped_column(Float)
    llm_first_token_s: Mapped[float | None] = mapped_column(Float)
    tts_first_audio_s: Mapped[float | None] = mapped_column(Float)
    voice_to_voice_s: Mapped[float | None] = mapped_column(Float)
    retrieval_s: Mapped[float | None] = mapped_column(Float)
    # The knowledge the answer was given: [{"doc_id", "title", "ordinal", "score"}], best first.
    sources: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    call: Mapped[Call] = relationship(back_populates="turns")


class LiveSession(Base):
    """Which node holds which user's live call (the outreach session registry). Nodes refresh
    ``heartbeat_at`` for all their calls at once; a row whose heartbeat is stale belongs to a node
    that died and is ignored (and swept)."""

    __tablename__ = "live_sessions"
    __table_args__ = (Index("ix_live_sessions_user", "user_id"), Index("ix_live_sessions_node", "node_id"))

    call_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    node_id: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When the caller or the agent last spoke: the scheduler's check-in rule reads it.
    last_activity_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OutreachEvent(Base):
    """One outreach decision through its life; the idempotency key makes it one row however often
    it is published or delivered. A node *claims* it (``claimed_by`` until ``claimed_until``) while
    its prompt waits and plays, so two nodes never speak it at once, and a dead node's claim lapses."""

    __tablename__ = "outreach_events"
    __table_args__ = (
        UniqueConstraint("idempotency_key", name="uq_outreach_events_key"),
        Index("ix_outreach_events_user_status", "user_id", "status"),
        Index("ix_outreach_events_created", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(128))
    type: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)  # the event as published (envelope JSON)
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    call_id: Mapped[str | None] = mapped_column(String(64))  # the call it was spoken in
    detail: Mapped[str | None] = mapped_column(String(300))

    stages: Mapped[list[OutreachStage]] = relationship(
        back_populates="event", order_by="OutreachStage.id", cascade="all, delete-orphan"
    )


class OutreachStage(Base):
    """One step of an event's life (decided, published, routed, pending, spoken, heard, acked,
    interrupted, expired, failed, superseded, duplicate), with when and where."""

    __tablename__ = "outreach_stages"
    __table_args__ = (Index("ix_outreach_stages_event", "event_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("outreach_events.id", ondelete="CASCADE"))
    stage: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    node_id: Mapped[str | None] = mapped_column(String(128))
    detail: Mapped[str | None] = mapped_column(String(300))

    event: Mapped[OutreachEvent] = relationship(back_populates="stages")


class IntentRecord(Base):
    """What the analysis found a user wants: one row per user and intent, refreshed when found
    again (evidence turn ids merged, confidence the latest). Operators resolve or dismiss it."""

    __tablename__ = "intent_records"
    __table_args__ = (
        UniqueConstraint("user_id", "intent", name="uq_intent_records_user_intent"),
        Index("ix_intent_records_status", "status", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    intent: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    evidence: Mapped[list[int]] = mapped_column(JSON, default=list)  # turn ids
    analyzer: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | resolved | dismissed
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SchedulerRun(Base):
    """The run ledger: one row per job and due slot. The primary key is the run key, so two
    scheduler processes racing for the same slot cannot both insert it, and a restarted scheduler
    sees which slots already ran."""

    __tablename__ = "scheduler_runs"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    runner: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    detail: Mapped[str | None] = mapped_column(String(300))
    stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Watermark(Base):
    """How far an incremental job has read (e.g. the last turn id analysed)."""

    __tablename__ = "watermarks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KnowledgeDocument(Base):
    """One document of the knowledge base and where its ingestion stands: the version last asked
    for, its state, why it failed, and how many chunks the index holds for it."""

    __tablename__ = "knowledge_documents"
    __table_args__ = (Index("ix_knowledge_documents_state", "state", "updated_at"),)

    doc_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))  # queued | indexed | failed | deleted
    title: Mapped[str] = mapped_column(String(300), default="")
    source: Mapped[str] = mapped_column(String(2000), default="")
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(300))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class KnowledgeSource(Base):
    """The latest submitted content of each document (API upload, watched folder, source-table
    row): what its ``knowledge.changed`` event points at, so any node's ingestor can read it, and
    the one place that says which version is current. An event for any other version is stale
    (RocketMQ may deliver an older change after a newer one) and is skipped."""

    __tablename__ = "knowledge_sources"

    doc_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    version: Mapped[str] = mapped_column(String(128))
    filename: Mapped[str] = mapped_column(String(300), default="")
    origin: Mapped[str] = mapped_column(String(2000), default="")  # api | folder:<path> | table:<name>
    content: Mapped[bytes | None] = mapped_column(LargeBinary)  # None once deleted
    deleted: Mapped[bool] = mapped_column(default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChangeCursor(Base):
    """How far a change-capture source has been read (e.g. the last change-table row
    published), so a restart neither misses nor replays changes."""

    __tablename__ = "knowledge_change_cursors"

    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[str] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(String(300))  # why the source cannot be read now, if it cannot
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AdminUser(Base):
    """A person who may use the dashboard. Only an argon2id hash of the password is kept."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    disabled: Mapped[bool] = mapped_column(default=False)


class AdminSession(Base):
    """One dashboard login. The id is the SHA-256 of the cookie value, so a leaked table cannot
    be replayed as cookies."""

    __tablename__ = "admin_sessions"
    __table_args__ = (Index("ix_admin_sessions_user", "user_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("admin_users.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(200))


class ApiToken(Base):
    """A bearer token for scripts and CI, kept as its SHA-256. ``active_name`` is the name while
    the token is live and NULL once revoked: a plain unique constraint on it keeps live names
    unique on SQLite and PostgreSQL alike (NULLs never clash) and lets a revoked name be reused."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64))
    active_name: Mapped[str | None] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class LoginFailure(Base):
    """A failed (or still running) dashboard login, shared by all nodes so the rate limit holds
    however requests are spread; rows older than the window are pruned."""

    __tablename__ = "login_failures"
    __table_args__ = (
        Index("ix_login_failures_account", "account", "at"),
        Index("ix_login_failures_address", "address", "at"),
        Index("ix_login_failures_at", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditLogEntry(Base):
    """Who did what to the system, from the dashboard, the API or the command line."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(256))
    detail: Mapped[str | None] = mapped_column(String(500))
    address: Mapped[str | None] = mapped_column(String(64))


class Job(Base):
    """One asynchronous job. The store, not the broker, is the truth: a message only wakes a
    worker, which must *claim* the job here (a conditional update) before running it, so a
    redelivered or duplicated message never runs a job twice, and a worker's lease that lapses
    (killed) lets another claim it."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status_kind", "status", "kind", "not_before"),
        Index("ix_jobs_expires_at", "expires_at"),
        Index("ix_jobs_created_at", "created_at"),
        UniqueConstraint("dedupe_key", name="uq_jobs_dedupe_key"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    # receiving (upload streaming in; not yet visible) | queued | running | succeeded | failed | cancelled
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    input_name: Mapped[str | None] = mapped_column(String(255))
    input_type: Mapped[str | None] = mapped_column(String(128))
    input_bytes: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    progress_note: Mapped[str | None] = mapped_column(String(200))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # small JSON summary of the outcome
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # [{name, media_type, bytes}]
    result_owner: Mapped[str | None] = mapped_column(String(32))  # the claim whose files are the result
    reason: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(128))
    claim: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    submitted_by: Mapped[str | None] = mapped_column(String(128))
    dedupe_key: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobBlob(Base):
    """A job's files (the upload, the results) in chunks, so any worker on any machine that
    reaches the store reads and writes them, and a download streams without loading a file.
    ``owner`` is "input" or the claim that wrote it: a claim that lost its lease leaves orphans,
    never a mix of two runs' files."""

    __tablename__ = "job_blobs"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class CallSummary(Base):
    """What a finished call was about (the summarize_call job): for the dashboard and the intent
    analysis."""

    __tablename__ = "call_summaries"

    call_id: Mapped[str] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text)
    # [{intent, confidence, evidence: [turn ids]}]
    intents: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    model: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
