"""users, calls, turns

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=True),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "calls",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(64), nullable=True),
    )
    op.create_index("ix_calls_user_started", "calls", ["user_id", "started_at"])
    op.create_index("ix_calls_ended_at", "calls", ["ended_at"])
    op.create_table(
        "turns",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("call_id", sa.String(64), sa.ForeignKey("calls.id", ondelete="CASCADE"), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("user_text", sa.Text(), nullable=False),
        sa.Column("agent_text", sa.Text(), nullable=False),
        sa.Column("agent_text_heard", sa.Text(), nullable=False),
        sa.Column("interrupted", sa.Boolean(), nullable=False),
        sa.Column("endpointing_s", sa.Float(), nullable=True),
        sa.Column("asr_s", sa.Float(), nullable=True),
        sa.Column("llm_first_token_s", sa.Float(), nullable=True),
        sa.Column("tts_first_audio_s", sa.Float(), nullable=True),
        sa.Column("voice_to_voice_s", sa.Float(), nullable=True),
        sa.UniqueConstraint("call_id", "index", name="uq_turns_call_index"),
    )


def downgrade() -> None:
    op.drop_table("turns")
    op.drop_index("ix_calls_ended_at", table_name="calls")
    op.drop_index("ix_calls_user_started", table_name="calls")
    op.drop_table("calls")
    op.drop_table("users")
