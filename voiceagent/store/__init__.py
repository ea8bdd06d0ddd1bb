"""Persistence: SQLite embedded by default, PostgreSQL when several nodes share state."""

from voiceagent.store.database import Database, StoreUnavailable
from voiceagent.store.records import CallRecord, NewTurn, TurnMetrics, TurnRecord, UserRecord
from voiceagent.store.repository import CallEnded, NotFound, Store

__all__ = [
    "CallEnded",
    "CallRecord",
    "Database",
    "NewTurn",
    "NotFound",
    "Store",
    "StoreUnavailable",
    "TurnMetrics",
    "TurnRecord",
    "UserRecord",
]
