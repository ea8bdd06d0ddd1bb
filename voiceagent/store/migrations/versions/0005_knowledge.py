"""knowledge: the state of each document's ingestion

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "knowledge_documents",
        sa.Column("doc_id", sa.String(256), primary_key=True),
        sa.Column("version", sa.String(128), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("title", sa.String(300), nullable=False),
        sa.Column("source", sa.String(2000), nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
        sa.Column("reason", sa.String(32)),
        sa.Column("detail", sa.String(300)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_knowledge_documents_state", "knowledge_documents", ["state", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_knowledge_documents_state", "knowledge_documents")
    op.drop_table("knowledge_documents")
