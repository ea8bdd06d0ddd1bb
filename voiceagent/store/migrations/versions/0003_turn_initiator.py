"""turns.initiator and turns.event_id: prompts the agent started itself, and the event behind them

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("initiator", sa.String(16), nullable=False, server_default="user"))
        batch.add_column(sa.Column("event_id", sa.String(64), nullable=True))
        batch.create_index("ix_turns_event_id", ["event_id"])


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_index("ix_turns_event_id")
        batch.drop_column("event_id")
        batch.drop_column("initiator")
