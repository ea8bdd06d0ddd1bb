"""The dashboard on one node: its WebSocket hub and the change feed that fills it."""

from __future__ import annotations

import asyncio

from voiceagent.admin.feed import ChangeFeed
from voiceagent.admin.live import LiveHub
from voiceagent.admin.queries import AdminQueries
from voiceagent.admin.settings import AdminSettings
from voiceagent.store.database import Database


class AdminNode:
    def __init__(
        self, *, database: Database, settings: AdminSettings, node_id: str, stale_after_s: float
    ) -> None:
        self.settings = settings
        self.queries = AdminQueries(database, stale_after_s)
        self.hub = LiveHub(settings, node_id)
        self.feed = ChangeFeed(database, self.queries, self.hub, settings.poll_s)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.settings.enabled and self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self.feed.run(self._stop), name="admin-feed")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
