"""Event-bus figures, real RocketMQ next to the in-process bus: publish rate and delivery latency."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid

from bench.results import Metric, metric, percentile
from voiceagent.config import EventSettings, RocketMQSettings
from voiceagent.events import EventBus, GreetEvent, GreetPayload
from voiceagent.events.factory import create_transport

BURST_EVENTS = 20_000
SINGLE_EVENTS = 3_000
SINGLE_IN_FLIGHT = 256
LATENCY_EVENTS = 300
LATENCY_RATE_PER_S = 50


def _event(i: int) -> GreetEvent:
    return GreetEvent(payload=GreetPayload(user_id=f"user-{i}", reason="returning user with an open booking"))


async def _publish_burst(bus: EventBus, tag: str) -> float:
    events = [_event(i) for i in range(BURST_EVENTS)]
    started = time.perf_counter()
    await bus.publish_many(events, tag=tag)
    return BURST_EVENTS / (time.perf_counter() - started)


async def _publish_one_by_one(bus: EventBus, tag: str) -> float:
    in_flight = asyncio.Semaphore(SINGLE_IN_FLIGHT)

    async def one(i: int) -> None:
        async with in_flight:
            await bus.publish(_event(i), tag=tag)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(SINGLE_EVENTS)))
    return SINGLE_EVENTS / (time.perf_counter() - started)


async def _latency(bus: EventBus, tag: str) -> list[float]:
    """Steady publishing; a long-polling consumer notes when each event arrives."""
    subscription = await bus.subscribe(f"bench-latency-{uuid.uuid4().hex[:8]}", ["outreach"], tag)
    sent_at: dict[str, float] = {}
    latencies: list[float] = []

    async def consume() -> None:
        while len(latencies) < LATENCY_EVENTS:
            for delivery in await subscription.receive(max_messages=32, wait_s=2):
                latencies.append(time.perf_counter() - sent_at[delivery.event.id])
                await subscription.ack(delivery)

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(1.0)  # the long poll is parked before the first event
    for i in range(LATENCY_EVENTS):
        event = _event(i)
        sent_at[event.id] = time.perf_counter()
        await bus.publish(event, tag=tag)
        await asyncio.sleep(1 / LATENCY_RATE_PER_S)
    await asyncio.wait_for(consumer, 60)
    await subscription.close()
    return latencies


async def _measure(settings: EventSettings) -> dict[str, float]:
    transport = create_transport(settings)
    await transport.start()
    bus = EventBus(transport, settings)
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        await bus.publish_many([_event(i) for i in range(200)], tag=tag)  # warm routes and channels
        burst = await _publish_burst(bus, tag)
        single = await _publish_one_by_one(bus, tag)
        latencies = await _latency(bus, f"{tag}-latency")
    finally:
        await transport.close()
    return {
        "burst": burst,
        "single": single,
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "mean": statistics.fmean(latencies),
    }


def run() -> dict[str, Metric]:
    results: dict[str, Metric] = {}
    backends = {"inprocess": EventSettings(backend="inprocess")}
    endpoint = os.environ.get("VA_TEST_ROCKETMQ_ENDPOINT")
    if endpoint:
        backends["rocketmq"] = EventSettings(
            backend="rocketmq", rocketmq=RocketMQSettings(endpoints=endpoint)
        )
    for name, settings in backends.items():
        figures = asyncio.run(_measure(settings))
        where = "real RocketMQ 5.3.3 on loopback" if name == "rocketmq" else "in-process bus"
        results[f"events_published_{name}_per_s"] = metric(
            figures["burst"],
            "events/s",
            ">= 5000" if name == "rocketmq" else "",
            f"{where}; one process, publish_many of {BURST_EVENTS} typed events"
            + (" (64 per gRPC call)" if name == "rocketmq" else ""),
        )
        results[f"events_published_one_by_one_{name}_per_s"] = metric(
            figures["single"],
            "events/s",
            "",
            f"{where}; publish() per event, {SINGLE_IN_FLIGHT} in flight",
        )
        results[f"event_delivery_latency_{name}_p50_ms"] = metric(
            figures["p50"] * 1000,
            "ms",
            "<= 20",
            f"{where}; publish → long-polling consumer, {LATENCY_EVENTS} events at {LATENCY_RATE_PER_S}/s",
        )
        results[f"event_delivery_latency_{name}_p99_ms"] = metric(
            figures["p99"] * 1000, "ms", "<= 100", where
        )
    return results
