"""jobs: asynchronous jobs, their files in chunks, and call summaries

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("input_name", sa.String(255), nullable=True),
        sa.Column("input_type", sa.String(128), nullable=True),
        sa.Column("input_bytes", sa.Integer, nullable=False),
        sa.Column("progress", sa.Float, nullable=False),
        sa.Column("progress_note", sa.String(200), nullable=True),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("result_owner", sa.String(32), nullable=True),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("claim", sa.String(32), nullable=True),
        sa.Column("lease_until", TZ, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("not_before", TZ, nullable=False),
        sa.Column("published_at", TZ, nullable=True),
        sa.Column("submitted_by", sa.String(128), nullable=True),
        sa.Column("dedupe_key", sa.String(128), nullable=True),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("started_at", TZ, nullable=True),
        sa.Column("finished_at", TZ, nullable=True),
        sa.Column("updated_at", TZ, nullable=False),
        sa.Column("expires_at", TZ, nullable=True),
        sa.UniqueConstraint("dedupe_key", name="uq_jobs_dedupe_key"),
    )
    op.create_index("ix_jobs_status_kind", "jobs", ["status", "kind", "not_before"])
    op.create_index("ix_jobs_expires_at", "jobs", ["expires_at"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_table(
        "job_blobs",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("owner", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "call_summaries",
        sa.Column("call_id", sa.String(64), sa.ForeignKey("calls.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("intents", sa.JSON, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("call_summaries")
    op.drop_table("job_blobs")
    op.drop_index("ix_jobs_created_at", "jobs")
    op.drop_index("ix_jobs_expires_at", "jobs")
    op.drop_index("ix_jobs_status_kind", "jobs")
    op.drop_table("jobs")
