"""Each node's view of what changed in the shared store, for its dashboards.

Why the store and not events over RocketMQ: the dashboard shows what the store holds, so the
store is the truth and a change is visible the moment it commits, whichever process wrote it —
a node's call, the scheduler (`voiceagent outreach run`), an ingest worker, another node. A
missed wake-up costs latency, never an update: the next read finds it. Over the broker, every
writer would have to publish as well as write (two things that can disagree), each node would
need a consumer group of its own, and the embedded default (SQLite, no broker) would need a second
path. On PostgreSQL a trigger NOTIFYs at commit and wakes every node's feed at once (migration
0008); on SQLite (one node) the feed polls every ``admin.poll_s``. A feed reads only while at
least one dashboard is connected to its node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Hashable
from datetime import timedelta
from typing import Any

from voiceagent.admin.live import LiveHub
from voiceagent.admin.queries import AdminQueries
from voiceagent.admin.schemas import LiveUpdate, OutreachChange
from voiceagent.events.envelope import utcnow
from voiceagent.store.database import Database

log = logging.getLogger(__name__)

CHANNEL = "voiceagent_changes"
LOOKBACK_IDS = 200  # re-read this far behind the newest id: a transaction may commit a lower id late
LOOKBACK_S = 5.0  # and this far behind in time, for rows found by their update time
SEEN = 5000  # keys remembered to skip what was already sent
RELISTEN_S = 5.0


class _Seen:
    """A bounded set: the oldest keys leave first."""

    def __init__(self, size: int = SEEN) -> None:
        self.size = size
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """True if ``key`` is new."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True


class ChangeFeed:
    def __init__(self, database: Database, queries: AdminQueries, hub: LiveHub, poll_s: float) -> None:
        self.database = database
        self.queries = queries
        self.hub = hub
        self.poll_s = poll_s
        self.wake = asyncio.Event()
        self.listening = False  # a PostgreSQL LISTEN connection is up
        self._live: dict[str, str] = {}
        self._turn_floor = 0
        self._stage_floor = 0
        self._since = utcnow()
        self._seen = _Seen()

    async def run(self, stop: asyncio.Event) -> None:
        listener = None
        if self.database.dialect == "postgresql":
            listener = asyncio.create_task(self._listen(stop), name="admin-feed-listen")
        try:
            while not stop.is_set():
                if not await _either(self.hub.watched, stop):
                    break
                await self._follow(stop)
        finally:
            if listener is not None:
                listener.cancel()
                await asyncio.gather(listener, return_exceptions=True)

    async def _follow(self, stop: asyncio.Event) -> None:
        """Read changes while anyone watches; a fresh start sends no history (pages read the API)."""
        try:
            await self._baseline()
        except Exception as exc:
            log.warning("admin feed: store unreadable: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await stop.wait()
            return
        self.hub.following.set()
        try:
            await self._read_while_watched(stop)
        finally:
            self.hub.following.clear()

    async def _read_while_watched(self, stop: asyncio.Event) -> None:
        failing = False
        while self.hub.watched.is_set() and not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_s):
                    await _either(self.wake, stop)  # a stopping node does not wait out the poll
            if stop.is_set():
                break
            self.wake.clear()
            try:
                self.hub.publish(await self.collect())
                failing = False
            except Exception as exc:  # the store is down: dashboards keep what they have
                if not failing:
                    log.warning("admin feed: store unreadable: %s: %s", type(exc).__name__, exc)
                failing = True

    async def _baseline(self) -> None:
        """Start from now: what the lookbacks would re-read is marked seen, not sent."""
        self._live = await self.queries.live_calls()
        self._turn_floor, self._stage_floor = await self.queries.max_ids()
        self._since = utcnow()
        await self.collect()

    async def collect(self) -> list[LiveUpdate]:
        """What changed since the last read, oldest first."""
        now = utcnow()
        updates: list[LiveUpdate] = []
        live = await self.queries.live_calls()
        started = [c for c in live if c not in self._live]
        ended = [c for c in self._live if c not in live]
        for summary in await self.queries.call_summaries([*started, *ended], live):
            kind = "call.started" if summary.id in live else "call.ended"
            updates.append(LiveUpdate(type=kind, at=now, node_id=summary.node_id, call=summary))
        self._live = live

        for turn in await self.queries.turns_after(self._turn_floor - LOOKBACK_IDS):
            self._turn_floor = max(self._turn_floor, turn.id)
            if self._seen.add(("turn", turn.id)):
                updates.append(LiveUpdate(type="turn", at=now, node_id=live.get(turn.call_id), turn=turn))

        for stage, event in await self.queries.stages_after(self._stage_floor - LOOKBACK_IDS):
            self._stage_floor = max(self._stage_floor, stage.id)
            if self._seen.add(("stage", stage.id)):
                change = OutreachChange(
                    event_id=event.id,
                    user_id=event.user_id,
                    type=event.type,
                    stage=stage.stage,
                    status=event.status,
                    detail=stage.detail,
                )
                updates.append(LiveUpdate(type="outreach", at=now, node_id=stage.node_id, outreach=change))

        since = self._since - timedelta(seconds=LOOKBACK_S)
        for intent in await self.queries.intents_changed_since(since):
            if self._seen.add(("intent", intent.id, intent.updated_at, intent.status)):
                updates.append(LiveUpdate(type="intent", at=now, intent=intent))
        for document in await self.queries.documents_changed_since(since):
            key = ("document", document.doc_id, document.version, document.state, document.updated_at)
            if self._seen.add(key):
                updates.append(LiveUpdate(type="knowledge", at=now, document=document))
        self._since = now
        return updates

    async def _listen(self, stop: asyncio.Event) -> None:
        """PostgreSQL: LISTEN on the channel the triggers NOTIFY; reconnects when the link drops."""
        import asyncpg  # type: ignore[import-untyped]

        dsn = self.database.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while not stop.is_set():
            connection: Any = None
            try:
                connection = await asyncpg.connect(dsn, timeout=self.database.settings.connect_timeout_s)
                lost = asyncio.Event()
                connection.add_termination_listener(lambda *_, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, lambda *_: self.wake.set())
                self.listening = True
                await _either(lost, stop)
            except Exception as exc:
                log.warning("admin feed: LISTEN failed (%s: %s); polling meanwhile", type(exc).__name__, exc)
            finally:
                self.listening = False
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await connection.close(timeout=2)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RELISTEN_S):
                    await stop.wait()


async def _either(first: asyncio.Event, second: asyncio.Event) -> bool:
    """Wait for either event; True if ``first`` is the one set."""
    if first.is_set():
        return True
    waits = [asyncio.create_task(first.wait()), asyncio.create_task(second.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
    return first.is_set()
