"""The dashboard's live updates: how each node learns of changes, and how it fans them out."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AdminSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True  # the /admin pages, /api/admin and the live WebSocket
    # Each node reads the shared store's changes this often; on PostgreSQL a NOTIFY from the
    # writing transaction wakes it at once and the poll is only a safety net.
    poll_s: float = Field(0.5, gt=0)
    max_dashboards: int = Field(200, ge=1)  # WebSocket connections per node
    # A dashboard that falls this many updates behind is dropped (it reconnects and resyncs):
    # fan-out never waits for a slow client, so it can never slow a call.
    client_queue: int = Field(256, ge=1)
    send_timeout_s: float = Field(5.0, gt=0)
    # A client sending more than this many messages a second is disconnected (flood).
    max_client_messages_per_s: float = Field(20.0, gt=0)
    # An open dashboard's sign-in is checked again this often: a session revoked, expired or of
    # a user disabled meanwhile stops receiving (closed with 4001; the page goes to the login).
    recheck_s: float = Field(30.0, gt=0)
