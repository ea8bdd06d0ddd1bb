"""Calls first: while the node this worker shares a machine with holds a live call, the worker
works only part of the time.

Nice 19 and SCHED_IDLE hand a call every core it asks for, yet two workers flat out still slowed
a call's replies by 12-15 % on a 2-core machine (bench jobs): what the priorities cannot share is
the rest of the machine (caches, memory bandwidth, a hypervisor's sibling threads) that the
call's LLM and Whisper read their weights through. So between two units of work (a kind's
progress reports: a sentence synthesized, a stretch transcribed) a worker rests in proportion to
the work it just did: at duty 0.25 it rests three times as long as it worked, so the call's
bursts mostly find the machine quiet. No live call: no rest at all.

"This node" is the node id: a worker and `voiceagent serve` on one machine share it by default
(the host name); the call registry (``live_sessions``, refreshed every few seconds by the node)
says whether it holds calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import func, select

from voiceagent.events.envelope import utcnow
from voiceagent.store.database import Database
from voiceagent.store.models import LiveSession

MAX_REST_S = 5.0  # one rest at most: a long unit of work does not park the job for minutes
CHECK_EVERY_S = 1.0  # the registry is read at most this often


class CallsFirst:
    def __init__(
        self,
        database: Database,
        node_id: str,
        duty: float,
        stale_after_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self.database = database
        self.node_id = node_id
        self.duty = duty
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._sleep = sleep
        self._checked_at = -CHECK_EVERY_S
        self._live = 0
        self.rested_s = 0.0

    async def live_calls(self) -> int:
        """Calls this node holds now (read from the registry at most every CHECK_EVERY_S)."""
        if self._clock() - self._checked_at >= CHECK_EVERY_S:
            fresh = utcnow() - timedelta(seconds=self.stale_after_s)
            async with self.database.sessions() as session:
                count = await session.scalar(
                    select(func.count())
                    .select_from(LiveSession)
                    .where(LiveSession.node_id == self.node_id, LiveSession.heartbeat_at >= fresh)
                )
            self._live = int(count or 0)
            self._checked_at = self._clock()
        return self._live

    async def rest_after(self, worked_s: float) -> float:
        """Rest after ``worked_s`` of work if a call is live; the seconds rested."""
        if self.duty >= 1 or worked_s <= 0 or await self.live_calls() == 0:
            return 0.0
        rest = min(worked_s * (1 - self.duty) / self.duty, MAX_REST_S)
        await self._sleep(rest)
        self.rested_s += rest
        return rest
