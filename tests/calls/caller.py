"""Callers of a CallManager in this process: real aiortc peers over loopback, signaling by a
direct call to ``CallManager.start`` (what ``POST /api/calls`` does, minus HTTP)."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
from dataclasses import dataclass
from typing import Any

from tests.transport.client import RemoteCall, SpeechSource, place_call, tone
from voiceagent.calls.session import RECLAIM_EVERY_S, CallManager, CallStore
from voiceagent.observability.metrics import Metrics
from voiceagent.pipeline.settings import ConversationSettings
from voiceagent.testing.fakes import FakeEngineSource
from voiceagent.transport.settings import TransportSettings
from voiceagent.transport.tracks import IN_RATE
from voiceagent.transport.webrtc import WebRTCGateway

# A tone is speech to the fake engines (any voiced audio is one question, see AnyVoiceASR).
QUESTION = tone(300.0, 0.8, IN_RATE, amplitude=0.5)


@dataclass
class Caller:
    call: RemoteCall
    mic: SpeechSource

    @property
    def call_id(self) -> str:
        return self.call.call_id

    @property
    def events(self) -> list[dict[str, Any]]:
        return self.call.events

    def ask(self) -> int:
        """Say the question; returns the index of the next event, to wait for what follows."""
        since = len(self.events)
        self.mic.say(QUESTION)
        return since

    async def wait_event(
        self, kind: str, since: int = 0, within_s: float = 20.0, **match: Any
    ) -> dict[str, Any]:
        # Generous: only a deaf call takes this long.
        return await self.call.wait_event(kind, since, within_s=within_s, **match)

    def lose_network(self) -> None:
        """No more RTP from the caller, and no goodbye either."""
        self.call.track.sending.clear()

    async def hang_up(self, say_so: bool = False) -> None:
        """Close this peer; ``say_so`` first says "hangup" on the events channel, as the page does."""
        if say_so:
            await self.call.say({"kind": "hangup"})
        await self.call.close()


async def dial(manager: CallManager, user_id: str | None = None) -> Caller:
    mic = SpeechSource()

    async def direct(sdp: str) -> tuple[str, str]:
        session, answer = await manager.start(sdp, "offer", user_id)
        return session.id, answer

    return Caller(await place_call(direct, mic), mic)


@dataclass(frozen=True)
class Footprint:
    """What a node holds, read *before* a garbage collection (what only the cyclic collector
    would free counts: it runs rarely, so native resources held by cycles pile up), except
    ``objects``, counted after one."""

    tasks: int
    python_threads: int  # besides the default executor's, which grows lazily up to its fixed size
    executor_threads: int
    native_threads: int  # every OS thread of the process (FFmpeg filter graphs start their own)
    fds: int
    sessions: int
    gateway_calls: int
    objects: int

    @staticmethod
    def now(manager: CallManager, count_objects: bool = True) -> Footprint:
        names = [t.name for t in threading.enumerate()]
        counts = {
            "tasks": len(asyncio.all_tasks()),
            "python_threads": sum(1 for n in names if not n.startswith("asyncio_")),
            "executor_threads": sum(1 for n in names if n.startswith("asyncio_")),
            "native_threads": len(os.listdir("/proc/self/task")),
            "fds": len(os.listdir("/proc/self/fd")),
            "sessions": len(manager.sessions) + len(manager._tasks),
            "gateway_calls": len(manager.gateway.calls),
        }
        if not count_objects:
            return Footprint(**counts, objects=-1)
        gc.collect()
        return Footprint(**counts, objects=len(gc.get_objects()))


async def call_ending_one_of_three_ways(manager: CallManager, n: int) -> None:
    caller = await dial(manager, user_id=f"leak-{n}")
    if n % 3 == 0:  # hung up by the server while the agent speaks
        since = caller.ask()
        await caller.wait_event("state", since, state="speaking")
        await manager.hang_up(caller.call_id)
        await caller.hang_up()
    elif n % 3 == 1:  # the caller vanishes mid-question; the dead-peer watchdog ends the call
        caller.ask()
        await asyncio.sleep(0.3)
        await caller.hang_up()
        async with asyncio.timeout(15):
            while caller.call_id in manager.sessions:
                await asyncio.sleep(0.05)
    else:  # connects and hangs up at once
        await caller.hang_up()
        await manager.hang_up(caller.call_id)


def fake_call_manager(
    store: CallStore, metrics: Metrics, *, max_calls: int, dead_peer_s: float
) -> CallManager:
    """A node's calls layer with the long-running fake engines: no model, no runtime."""
    transport = TransportSettings(max_calls=max_calls, dead_peer_timeout_s=dead_peer_s, connect_timeout_s=5.0)
    return CallManager(
        gateway=WebRTCGateway(transport),
        engines=FakeEngineSource(),
        store=store,
        metrics=metrics,
        settings=ConversationSettings(),
        node_id="test-node",
    )


async def run_calls(manager: CallManager, numbers: range, at_once: int) -> None:
    """Calls numbered ``numbers``, ``at_once`` at a time, each ending one of three ways."""
    for first in numbers[::at_once]:
        batch = range(first, min(first + at_once, numbers.stop))
        await asyncio.gather(*(call_ending_one_of_three_ways(manager, n) for n in batch))


async def settle(manager: CallManager, baseline: Footprint) -> Footprint:
    """Wait (boundedly, and without collecting garbage) for teardown that finishes in the
    background: aiortc closes sockets and tasks a little after a peer connection closes, and the
    node collects ended calls' garbage at most every RECLAIM_EVERY_S."""
    for _ in range(int((RECLAIM_EVERY_S + 10) * 10)):
        now = Footprint.now(manager, count_objects=False)
        settled = (
            now.sessions == 0
            and now.tasks <= baseline.tasks
            and now.fds <= baseline.fds
            and now.native_threads <= baseline.native_threads
        )
        if settled:
            break
        await asyncio.sleep(0.1)
    return Footprint.now(manager)
