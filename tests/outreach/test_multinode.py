"""Outreach across nodes, for real: two `voiceagent serve` processes (real VAD, ASR and TTS; a
scripted OpenAI-compatible LLM), one PostgreSQL they share, the real RocketMQ broker, and aiortc
callers dialling in over HTTP as a browser would.

- an event for a user whose call is on node B is spoken on node B only, whichever node took it;
- the same decision published twice (API and CLI, one idempotency key) is spoken once;
- an expired event is never spoken;
- node B killed with SIGKILL mid-prompt: the user calls again, on node A, and hears the prompt
  there, exactly once (B's claim lapses; nothing waits for B to come back).
Each test uses its own user ids, so events of other runs left on the broker never match.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.outreach.cluster import INVISIBLE_S, Cluster, start_cluster
from tests.serve_process import ServeProcess
from tests.transport.client import RemoteCall, SpeechSource, call_server

pytestmark = [pytest.mark.integration, pytest.mark.models, pytest.mark.rocketmq, pytest.mark.postgres]

LONG_NEWS = (
    "Hello again. Your order left our warehouse this morning. It travels with the express courier. "
    "It should reach you on Friday before noon. You can track it on the website."
)
SHORT_NEWS = "Hello again. Your refund is on its way."
# Generous: prompts are a few seconds of audio; only a lost or stuck prompt takes this long.
DEADLINE_S = 60.0
EXPIRES_S = 8.0  # long enough to be routed (an event already expired on arrival is dead-lettered)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with start_cluster("node", tmp_path_factory.mktemp("multinode")) as cluster:
        yield cluster


def user(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def dial(node: ServeProcess, user_id: str) -> RemoteCall:
    return await call_server(node.base_url, SpeechSource(), user_id=user_id, within_s=30)


async def registered(node: ServeProcess, user_id: str) -> None:
    """Until the shared registry places the user's call (a node registers as the call starts)."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            async with httpx.AsyncClient(base_url=node.base_url) as http:
                calls = (await http.get("/api/calls")).json()
            if any(c["user_id"] == user_id for c in calls):
                await asyncio.sleep(1.0)  # one heartbeat past the registration
                return
            await asyncio.sleep(0.1)


async def send(node: ServeProcess, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=node.base_url, timeout=30) as http:
        response = await http.post("/api/outreach", json=body)
    assert response.status_code == 202, response.text
    return dict(response.json())


async def event_status(node: ServeProcess, event_id: str, *wanted: str) -> dict[str, Any]:
    async with asyncio.timeout(DEADLINE_S):
        while True:
            async with httpx.AsyncClient(base_url=node.base_url) as http:
                record = (await http.get(f"/api/outreach/{event_id}")).json()
            if record["status"] in wanted:
                return dict(record)
            await asyncio.sleep(0.2)


def prompts(call: RemoteCall) -> list[dict[str, Any]]:
    return [e for e in call.events if e.get("kind") == "turn" and e.get("initiator") == "agent"]


async def test_an_event_for_a_call_on_node_b_is_spoken_on_node_b_only(cluster: Cluster) -> None:
    ann, bob = user("ann"), user("bob")
    on_b, on_a = await dial(cluster.b, ann), await dial(cluster.a, bob)
    try:
        await registered(cluster.b, ann)
        sent = await send(cluster.a, user_id=ann, type="greet", text=SHORT_NEWS)  # decided on A
        assert sent["routed_to"] == cluster.b_id  # A published it tagged for B
        turn = await on_b.wait_event("turn", 0, within_s=DEADLINE_S, initiator="agent")
        assert (turn["agent_text_heard"], turn["event_id"]) == (SHORT_NEWS, sent["event_id"])
        record = await event_status(cluster.a, sent["event_id"], "acked")
        speakers = {s["node_id"] for s in record["stages"] if s["stage"] in ("routed", "spoken", "heard")}
        assert speakers == {sent["routed_to"]}
        assert not [e for e in on_a.events if e.get("kind") == "agent_text"]  # Bob's call is quiet
    finally:
        await asyncio.gather(on_b.close(), on_a.close())


async def test_the_same_decision_published_twice_is_spoken_once(cluster: Cluster) -> None:
    cara = user("cara")
    call = await dial(cluster.a, cara)
    try:
        await registered(cluster.a, cara)
        key = f"ask:{cara}:parcel"
        first = await send(
            cluster.a, user_id=cara, type="ask", text="Did your parcel arrive?", idempotency_key=key
        )
        second = await send(
            cluster.b, user_id=cara, type="ask", text="Did your parcel arrive?", idempotency_key=key
        )
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "voiceagent", "outreach", "send", "--user", cara, "--ask",
             "Did your parcel arrive?", "--key", key],
            env={**{k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}, **cluster.env},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        assert second["duplicate"] and second["event_id"] == first["event_id"]
        assert first["event_id"] in cli.stdout and '"duplicate": true' in cli.stdout
        await event_status(cluster.a, first["event_id"], "acked")
        await asyncio.sleep(2 * INVISIBLE_S)  # two invisible times: any redelivery would have been spoken
        assert [t["agent_text"] for t in prompts(call)] == ["Did your parcel arrive?"]
    finally:
        await call.close()


async def test_an_expired_event_is_never_spoken(cluster: Cluster) -> None:
    dan = user("dan")
    sent = await send(cluster.a, user_id=dan, type="greet", text=SHORT_NEWS, expires_in_s=EXPIRES_S)
    await event_status(cluster.a, sent["event_id"], "pending")  # no call anywhere: it waits...
    await asyncio.sleep(EXPIRES_S)  # ...until it expires
    call = await dial(cluster.b, dan)
    try:
        await registered(cluster.b, dan)
        await asyncio.sleep(3.0)  # a pending prompt opens a call within a second of quiet
        assert not prompts(call) and not [e for e in call.events if e.get("kind") == "agent_text"]
    finally:
        await call.close()


async def test_node_b_killed_mid_prompt_the_prompt_is_heard_once_after_reconnecting(cluster: Cluster) -> None:
    eve = user("eve")
    first = await dial(cluster.b, eve)
    try:
        await registered(cluster.b, eve)
        sent = await send(cluster.a, user_id=eve, type="greet", text=LONG_NEWS)
        await first.wait_event("agent_text", 0, within_s=DEADLINE_S)  # B is speaking it...
        os.kill(cluster.b.proc.pid, signal.SIGKILL)  # ...and dies
        cluster.b.proc.wait(30)
    finally:
        await first.close()
    assert not prompts(first)  # never heard to the end there

    second = await dial(cluster.a, eve)  # she calls again, on the node that is left
    try:
        turn = await second.wait_event("turn", 0, within_s=DEADLINE_S, initiator="agent")
        assert (turn["agent_text_heard"], turn["event_id"], turn["index"]) == (LONG_NEWS, sent["event_id"], 1)
        record = await event_status(cluster.a, sent["event_id"], "heard", "acked")
        assert [s["stage"] for s in record["stages"]].count("heard") == 1
        await asyncio.sleep(2 * INVISIBLE_S)
        assert len(prompts(second)) == 1
    finally:
        await second.close()
