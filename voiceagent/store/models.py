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

    call: Mapped[Call] = relationship(back_populates="turns")
