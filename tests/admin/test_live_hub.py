"""The live fan-out is bounded: a slow or dead dashboard is dropped (and told to resync) without
holding up the others or the publisher; a flooding client is cut off; a full node says so."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.websockets import WebSocketState

from voiceagent.admin.live import FLOOD, FULL, SIGNED_OUT, TOO_SLOW, LiveHub
from voiceagent.admin.schemas import LiveUpdate
from voiceagent.admin.settings import AdminSettings
from voiceagent.events.envelope import utcnow


class FakeSocket:
    """Just enough of Starlette's WebSocket; ``stalled`` never finishes a send (a dead peer)."""

    def __init__(self, stalled: bool = False) -> None:
        self.stalled = stalled
        self.sent: list[dict[str, Any]] = []
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed: tuple[int, str | None] | None = None
        self.application_state = WebSocketState.CONNECTING

    async def accept(self) -> None:
        self.application_state = WebSocketState.CONNECTED

    async def send_text(self, text: str) -> None:
        if self.stalled:
            await asyncio.Event().wait()
        self.sent.append(json.loads(text))

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)
        self.application_state = WebSocketState.DISCONNECTED
        self.incoming.put_nowait({"type": "websocket.disconnect"})


def _hub(**settings: Any) -> LiveHub:
    """A hub whose feed is already following the store (tests/admin/test_queries_and_feed.py)."""
    hub = LiveHub(AdminSettings(**settings), "here")
    hub.following.set()
    return hub


def _updates(n: int) -> list[LiveUpdate]:
    return [LiveUpdate(type="resync", at=utcnow(), node_id=f"n{i}") for i in range(n)]


async def _until(condition: Any) -> None:
    async with asyncio.timeout(5):  # only a hang (a defect) takes this long
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_slow_dashboard_is_dropped_and_the_others_get_everything() -> None:
    hub = _hub(client_queue=8, send_timeout_s=30)
    fast, slow = FakeSocket(), FakeSocket(stalled=True)
    serving = [asyncio.create_task(hub.serve(s, name)) for s, name in ((fast, "fast"), (slow, "slow"))]
    await _until(lambda: len(hub.dashboards) == 2 and fast.sent)
    assert fast.sent[0]["type"] == "hello" and fast.sent[0]["node_id"] == "here"

    for batch in range(5):  # publishing is synchronous: it can never wait for a client
        hub.publish(_updates(3))
        assert hub.published == 3 * (batch + 1)
        await asyncio.sleep(0.01)  # the fast one keeps up; the stalled one falls 15 behind
    await _until(lambda: slow.closed is not None)
    assert slow.closed is not None and slow.closed[0] == TOO_SLOW
    await _until(lambda: len(fast.sent) == 1 + 15)
    assert [m["node_id"] for m in fast.sent[1:4]] == ["n0", "n1", "n2"]
    assert hub.drops >= 1 and len(hub.dashboards) == 1

    fast.incoming.put_nowait({"type": "websocket.disconnect"})
    await asyncio.gather(*serving)
    assert not hub.dashboards and not hub.watched.is_set()


async def test_a_peer_that_stops_reading_is_dropped_after_the_send_timeout() -> None:
    hub = _hub(send_timeout_s=0.2)
    dead = FakeSocket(stalled=True)
    serving = asyncio.create_task(hub.serve(dead, "dead"))
    await _until(lambda: dead.closed is not None)
    assert dead.closed is not None and dead.closed[0] == TOO_SLOW
    await serving


async def test_a_dashboard_whose_sign_in_ends_is_closed_and_a_blinking_store_keeps_it() -> None:
    hub = _hub(recheck_s=0.02)
    answers: asyncio.Queue[bool | Exception] = asyncio.Queue()
    for answer in (True, OSError("store down"), True):
        answers.put_nowait(answer)
    asked = 0

    async def signed_in() -> bool:
        nonlocal asked
        asked += 1
        answer = answers.get_nowait() if not answers.empty() else False  # then: revoked
        if isinstance(answer, Exception):
            raise answer
        return answer

    socket = FakeSocket()
    await hub.serve(socket, "revoked", signed_in)  # returns once closed
    assert asked == 4 and socket.closed == (SIGNED_OUT, "signed out")
    assert not hub.dashboards and not hub.watched.is_set()


async def test_a_flooding_client_is_cut_off_and_a_full_node_refuses() -> None:
    hub = _hub(max_client_messages_per_s=5, max_dashboards=1)
    flooder = FakeSocket()
    serving = asyncio.create_task(hub.serve(flooder, "flooder"))
    await _until(lambda: hub.dashboards)
    turned_away = FakeSocket()
    await hub.serve(turned_away, "second")
    assert turned_away.closed is not None and turned_away.closed[0] == FULL
    assert turned_away.application_state == WebSocketState.DISCONNECTED and not turned_away.sent

    for _ in range(50):
        flooder.incoming.put_nowait({"type": "websocket.receive", "text": "x"})
    await serving
    assert flooder.closed is not None and flooder.closed[0] == FLOOD

    big = FakeSocket()
    serving = asyncio.create_task(hub.serve(big, "big"))
    big.incoming.put_nowait({"type": "websocket.receive", "text": "x" * 10_000})
    await serving
    assert big.closed is not None and big.closed[0] == FLOOD


async def test_a_dashboard_is_accepted_only_once_the_feed_reads_from_now() -> None:
    """The page reads the API when its socket opens: accepting before the feed has its starting
    point would let a change fall between that read and the first update."""
    hub = LiveHub(AdminSettings(), "here")
    socket = FakeSocket()
    serving = asyncio.create_task(hub.serve(socket, "early"))
    await _until(hub.watched.is_set)  # the feed is asked to start...
    await asyncio.sleep(0.2)
    assert socket.application_state == WebSocketState.CONNECTING  # ...and the socket waits for it
    hub.following.set()
    await _until(lambda: socket.sent)
    assert socket.sent[0]["type"] == "hello"
    socket.incoming.put_nowait({"type": "websocket.disconnect"})
    await serving
