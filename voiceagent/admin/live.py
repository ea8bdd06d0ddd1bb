"""Fan-out of live updates to this node's dashboards, one WebSocket each, bounded.

Publishing never waits: each update is serialised once and offered to every dashboard's queue.
A dashboard whose queue is full (a slow reader, a dead peer) is dropped with code 4000; its
page reconnects by itself and reads the API again, so it loses nothing but the moment. Nothing
a dashboard does can hold up the event loop that runs the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from voiceagent.admin.schemas import LiveUpdate
from voiceagent.admin.settings import AdminSettings
from voiceagent.events.envelope import utcnow

log = logging.getLogger(__name__)

TOO_SLOW = 4000  # dropped: reconnect and resync
SIGNED_OUT = 4001  # the sign-in that opened it is no longer valid
FULL = 1013  # try again later: this node has max_dashboards already
FLOOD = 1008  # policy violation: too many or too large messages
MAX_CLIENT_MESSAGE = 4096
FOLLOW_WAIT_S = 5.0


class Dashboard:
    def __init__(self, websocket: WebSocket, who: str, queue_size: int) -> None:
        self.websocket = websocket
        self.who = who
        self.queue: asyncio.Queue[str] = asyncio.Queue(queue_size)
        self.dropped: str | None = None
        self.gone = asyncio.Event()  # dropped: stop now, even in the middle of a stalled send

    def offer(self, text: str) -> bool:
        if self.dropped is not None:
            return False
        try:
            self.queue.put_nowait(text)
            return True
        except asyncio.QueueFull:
            self.drop("too slow")
            return False

    def drop(self, why: str) -> None:
        if self.dropped is None:
            self.dropped = why
            self.gone.set()


class LiveHub:
    def __init__(self, settings: AdminSettings, node_id: str) -> None:
        self.settings = settings
        self.node_id = node_id
        self.dashboards: set[Dashboard] = set()
        self.watched = asyncio.Event()  # set while at least one dashboard is connected
        # Set by the feed once it reads from "now": a dashboard is accepted only then, so what it
        # reads from the API on open and what the feed sends afterwards leave no gap between them.
        self.following = asyncio.Event()
        self.published = 0
        self.drops = 0

    def publish(self, updates: list[LiveUpdate]) -> None:
        for update in updates:
            text = update.model_dump_json(exclude_none=True)
            self.published += 1
            for dashboard in list(self.dashboards):
                if not dashboard.offer(text):
                    self.drops += 1

    async def serve(
        self, websocket: WebSocket, who: str, signed_in: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Run one dashboard's socket until it closes (already authenticated by the caller, who
        may pass ``signed_in`` to have that checked again every ``recheck_s``)."""
        if len(self.dashboards) >= self.settings.max_dashboards:
            await websocket.close(FULL, "too many dashboards on this node")
            return
        dashboard = Dashboard(websocket, who, self.settings.client_queue)
        self.dashboards.add(dashboard)
        self.watched.set()
        with contextlib.suppress(TimeoutError):  # a store that is down: accepted anyway, updates later
            async with asyncio.timeout(FOLLOW_WAIT_S):
                await self.following.wait()
        try:
            await websocket.accept()
        except BaseException:
            self._leave(dashboard)
            raise
        hello = LiveUpdate(type="hello", at=utcnow(), node_id=self.node_id)
        dashboard.offer(hello.model_dump_json(exclude_none=True))
        sender = asyncio.create_task(self._send(dashboard), name=f"dashboard-send-{who}")
        receiver = asyncio.create_task(self._receive(dashboard), name=f"dashboard-receive-{who}")
        gone = asyncio.create_task(dashboard.gone.wait())
        tasks = [sender, receiver, gone]
        if signed_in is not None:
            tasks.append(
                asyncio.create_task(self._recheck(dashboard, signed_in), name=f"dashboard-auth-{who}")
            )
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._leave(dashboard)
            await self._close(dashboard)

    def _leave(self, dashboard: Dashboard) -> None:
        self.dashboards.discard(dashboard)
        if not self.dashboards:
            self.watched.clear()

    async def _send(self, dashboard: Dashboard) -> None:
        while True:
            text = await dashboard.queue.get()
            try:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow the cancel that ends
                # this task when a send finishes at the same moment, and the task never ends.
                async with asyncio.timeout(self.settings.send_timeout_s):
                    await dashboard.websocket.send_text(text)
            except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError):
                dashboard.drop("send failed")
                return

    async def _recheck(self, dashboard: Dashboard, signed_in: Callable[[], Awaitable[bool]]) -> None:
        while True:
            await asyncio.sleep(self.settings.recheck_s)
            try:
                still = await signed_in()
            except Exception as exc:  # the store blinked: keep the dashboard, ask again later
                log.warning("dashboard %s: sign-in not rechecked: %s", dashboard.who, exc)
                continue
            if not still:
                log.info("dashboard %s closed: signed out", dashboard.who)
                dashboard.drop("signed out")
                return

    async def _receive(self, dashboard: Dashboard) -> None:
        """Dashboards only listen; what they send is read to notice a close, and bounded."""
        window_start, count = time.monotonic(), 0
        limit = self.settings.max_client_messages_per_s
        while True:
            message: MutableMapping[str, Any] = await dashboard.websocket.receive()
            if message["type"] == "websocket.disconnect":
                dashboard.drop("closed by the client")
                return
            size = len(message.get("text") or message.get("bytes") or b"")
            now = time.monotonic()
            if now - window_start >= 1.0:
                window_start, count = now, 0
            count += 1
            if count > limit or size > MAX_CLIENT_MESSAGE:
                log.warning("dashboard %s disconnected: %s", dashboard.who,
                            "flooding" if count > limit else "message too large")  # fmt: skip
                dashboard.drop("flood")
                return

    @staticmethod
    async def _close(dashboard: Dashboard) -> None:
        if dashboard.websocket.application_state == WebSocketState.DISCONNECTED:
            return
        code = {"flood": FLOOD, "signed out": SIGNED_OUT}.get(dashboard.dropped or "", TOO_SLOW)
        if dashboard.dropped == "closed by the client":
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await dashboard.websocket.close(
                    code, "signed out" if code == SIGNED_OUT else "reconnect and resync"
                )
