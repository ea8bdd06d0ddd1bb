"""change notifications: PostgreSQL NOTIFYs the dashboards' feeds when what they show changes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

One statement-level trigger per table (not one per row: a batch of a thousand decisions wakes the
feeds once), NOTIFY with the table's name, delivered at commit, never for a rolled-back write.
SQLite has no cross-process notification: there the feed polls (one node shares its file).
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CHANNEL = "voiceagent_changes"
# Heartbeats update live_sessions every few seconds: only calls arriving and leaving matter.
WATCHED = {
    "calls": "INSERT OR UPDATE",
    "turns": "INSERT",
    "live_sessions": "INSERT OR DELETE",
    "outreach_stages": "INSERT",
    "intent_records": "INSERT OR UPDATE",
    "knowledge_documents": "INSERT OR UPDATE OR DELETE",
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION voiceagent_notify_change() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    )
    for table, events in WATCHED.items():
        op.execute(
            f"CREATE TRIGGER voiceagent_notify_{table} AFTER {events} ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION voiceagent_notify_change()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in WATCHED:
        op.execute(f"DROP TRIGGER IF EXISTS voiceagent_notify_{table} ON {table}")
    op.execute("DROP FUNCTION IF EXISTS voiceagent_notify_change()")
