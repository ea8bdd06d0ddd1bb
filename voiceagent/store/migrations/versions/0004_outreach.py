"""outreach: live session registry, event ledger with stages, intent records, scheduler run ledger

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "live_sessions",
        sa.Column("call_id", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("node_id", sa.String(128), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("heartbeat_at", TZ, nullable=False),
        sa.Column("last_activity_at", TZ, nullable=False),
    )
    op.create_index("ix_live_sessions_user", "live_sessions", ["user_id"])
    op.create_index("ix_live_sessions_node", "live_sessions", ["node_id"])
    op.create_table(
        "outreach_events",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("idempotency_key", sa.String(128), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("body", sa.JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.Column("claimed_by", sa.String(128), nullable=True),
        sa.Column("claimed_until", TZ, nullable=True),
        sa.Column("call_id", sa.String(64), nullable=True),
        sa.Column("detail", sa.String(300), nullable=True),
        sa.UniqueConstraint("idempotency_key", name="uq_outreach_events_key"),
    )
    op.create_index("ix_outreach_events_user_status", "outreach_events", ["user_id", "status"])
    op.create_index("ix_outreach_events_created", "outreach_events", ["created_at"])
    op.create_table(
        "outreach_stages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "event_id", sa.String(64), sa.ForeignKey("outreach_events.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("at", TZ, nullable=False),
        sa.Column("node_id", sa.String(128), nullable=True),
        sa.Column("detail", sa.String(300), nullable=True),
    )
    op.create_index("ix_outreach_stages_event", "outreach_stages", ["event_id"])
    op.create_table(
        "intent_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("intent", sa.String(64), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("evidence", sa.JSON, nullable=False),
        sa.Column("analyzer", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("detected_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
        sa.UniqueConstraint("user_id", "intent", name="uq_intent_records_user_intent"),
    )
    op.create_index("ix_intent_records_status", "intent_records", ["status", "updated_at"])
    op.create_table(
        "scheduler_runs",
        sa.Column("job", sa.String(64), primary_key=True),
        sa.Column("slot", TZ, primary_key=True),
        sa.Column("runner", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("detail", sa.String(300), nullable=True),
        sa.Column("stats", sa.JSON, nullable=False),
    )
    op.create_table(
        "watermarks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Integer, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    for table in ("watermarks", "scheduler_runs", "intent_records", "outreach_stages", "outreach_events"):
        op.drop_table(table)
    op.drop_index("ix_live_sessions_node", "live_sessions")
    op.drop_index("ix_live_sessions_user", "live_sessions")
    op.drop_table("live_sessions")
