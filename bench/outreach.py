"""Outreach end to end: `POST /api/outreach` → the first audible prompt audio at the caller.

Two `voiceagent serve` nodes (real VAD, ASR, TTS; PostgreSQL and the real RocketMQ broker that
`make bench` starts), an aiortc caller on node B idle in its call, and the events sent to node A:
so each event is decided on A, routed through the broker to B by its tag, claimed in the shared
ledger and spoken at B's next safe point. Latency = POST sent → first received 20 ms frame above
AUDIBLE. The caller is aiortc, not Chromium: the browser adds its jitter buffer (~20-60 ms).

Then routed events/s: a burst of events for callers spread over both nodes, each sent to the
other node, until every one is settled: heard and acked, or superseded by a newer ask for the same user while
it waited (what is measured is routing and settlement, not speech).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

import httpx
import numpy as np

from bench.calls_common import log, p50
from bench.results import Metric, metric, percentile

PROMPTS = 12
AUDIBLE = 500  # int16 peak: the prompt's voice, not comfort noise or silence
BURST_CALLERS = 4  # per node
BURST_EVENTS = 200


async def _first_audible(call: object, since: float, within_s: float = 30.0) -> float:
    from tests.transport.client import RemoteCall

    assert isinstance(call, RemoteCall)
    async with asyncio.timeout(within_s):
        while True:
            for received in call.received:
                if received.at >= since and np.abs(np.frombuffer(received.pcm, dtype="<i2")).max() >= AUDIBLE:
                    return received.at
            await asyncio.sleep(0.005)


async def _until_settled(
    http: httpx.AsyncClient,
    event_ids: list[str],
    within_s: float = 300.0,
    settled: tuple[str, ...] = ("heard", "acked"),
) -> None:
    pending = set(event_ids)
    async with asyncio.timeout(within_s):
        while pending:
            for event_id in list(pending):
                status = (await http.get(f"/api/outreach/{event_id}")).json()["status"]
                if status in settled:
                    pending.discard(event_id)
            await asyncio.sleep(0.2)


async def _run() -> dict[str, Metric]:
    from tests.outreach.cluster import start_cluster
    from tests.transport.client import SpeechSource, call_server

    results: dict[str, Metric] = {}
    with start_cluster("bench") as cluster:
        loop = asyncio.get_running_loop()
        user = f"bench-{uuid.uuid4().hex[:6]}"
        call = await call_server(cluster.b.base_url, SpeechSource(), user_id=user, within_s=30)
        latencies: list[float] = []
        breakdown: dict[tuple[str, str], list[float]] = {
            ("post", "decided"): [],
            ("decided", "published"): [],
            ("published", "routed"): [],
            ("routed", "spoken"): [],
            ("spoken", "audio"): [],
        }
        async with httpx.AsyncClient(base_url=cluster.a.base_url, timeout=30) as http:
            await asyncio.sleep(3.0)  # registered, and past the first heartbeat
            for n in range(PROMPTS):
                since = loop.time()
                response = await http.post(
                    "/api/outreach", json={"user_id": user, "type": "greet", "text": f"Hello number {n}."}
                )
                response.raise_for_status()
                heard_at = await _first_audible(call, since)
                latencies.append(heard_at - since)
                event_id = response.json()["event_id"]
                await _until_settled(http, [event_id])
                stages = (await http.get(f"/api/outreach/{event_id}")).json()["stages"]
                at = {s["stage"]: datetime.fromisoformat(s["at"]).timestamp() for s in stages}
                # Wall clocks of the API process, node B and this one agree (one machine).
                posted = time.time() - (loop.time() - since)
                heard_wall = time.time() - (loop.time() - heard_at)
                for (a, b), spans in breakdown.items():
                    spans.append((at[b] if b != "audio" else heard_wall) - (at[a] if a != "post" else posted))
                await asyncio.sleep(1.0)
        await call.close()
        log(f"publish to first audio: {[round(x, 3) for x in latencies]}")
        step_note = ", ".join(f"{a}→{b} {p50(v) * 1e3:.0f} ms" for (a, b), v in breakdown.items())
        log(f"p50 per step: {step_note}")
        results["outreach_publish_to_first_audio_p50_s"] = metric(
            p50(latencies),
            "s",
            "<= 0.3",
            f"p50 of {PROMPTS}, API on node A, call on node B, aiortc caller; p50 per step: {step_note}",
        )
        results["outreach_publish_to_first_audio_p90_s"] = metric(
            percentile(latencies, 90), "s", "", f"p90 of {PROMPTS}"
        )

        callers = {node: [f"burst-{i}-{uuid.uuid4().hex[:6]}" for i in range(BURST_CALLERS)] for node in "ab"}
        calls = [
            await call_server(getattr(cluster, node).base_url, SpeechSource(), user_id=u, within_s=30)
            for node, users in callers.items()
            for u in users
        ]
        await asyncio.sleep(3.0)
        try:
            async with (
                httpx.AsyncClient(base_url=cluster.a.base_url, timeout=60) as on_a,
                httpx.AsyncClient(base_url=cluster.b.base_url, timeout=60) as on_b,
            ):
                started = time.perf_counter()
                sends = []
                for n in range(BURST_EVENTS):
                    node = "ab"[n % 2]
                    target = callers[node][n // 2 % BURST_CALLERS]
                    via = on_b if node == "a" else on_a  # always decided on the other node
                    body = {"user_id": target, "type": "ask", "text": "Okay?", "expires_in_s": 600}
                    sends.append(via.post("/api/outreach", json=body))
                ids = [r.json()["event_id"] for r in await asyncio.gather(*sends)]
                published_s = time.perf_counter() - started
                # A newer ask for a user replaces one still waiting (superseded): settled too.
                await _until_settled(on_a, ids, within_s=900, settled=("heard", "acked", "superseded"))
                total_s = time.perf_counter() - started
        finally:
            await asyncio.gather(*(c.close() for c in calls))
        results["outreach_routed_events_per_s"] = metric(
            BURST_EVENTS / total_s,
            "events/s",
            "",
            f"{BURST_EVENTS} events, {2 * BURST_CALLERS} callers on 2 nodes, each event sent to the other "
            f"node, until all heard (published in {published_s:.1f} s); bounded by speaking one prompt "
            "per call at a time",
        )
    return results


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for name, m in run().items():
        print(f"{name:40} {m.value:10.4g} {m.unit:8} {m.note}")
