"""knowledge sources: submitted documents' content, change-capture cursors, turn sources

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "knowledge_sources",
        sa.Column("doc_id", sa.String(256), primary_key=True),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("filename", sa.String(300), nullable=False),
        sa.Column("origin", sa.String(2000), nullable=False),
        sa.Column("content", sa.LargeBinary),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "knowledge_change_cursors",
        sa.Column("source", sa.String(200), primary_key=True),
        sa.Column("position", sa.String(200), nullable=False),
        sa.Column("error", sa.String(300)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("turns") as batch:
        batch.add_column(sa.Column("retrieval_s", sa.Float))
        batch.add_column(sa.Column("sources", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("turns") as batch:
        batch.drop_column("sources")
        batch.drop_column("retrieval_s")
    op.drop_table("knowledge_change_cursors")
    op.drop_table("knowledge_sources")
