"""What only the real broker can show: restarts, unreachable proxies, its own limits."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import require_service
from tests.events.conftest import ROCKETMQ_ENV, Records, event_settings, restartable_broker
from tests.events.grpc_relay import Relay
from voiceagent.events import (
    BrokerUnavailable,
    EventBus,
    GreetEvent,
    GreetPayload,
    MessageRejected,
    OutgoingMessage,
    PublishFailed,
)
from voiceagent.events.factory import create_transport
from voiceagent.events.rocketmq import outage
from voiceagent.events.rocketmq.outage import FUTURES_LOGGER

pytestmark = [pytest.mark.rocketmq, pytest.mark.integration]
Unique = Callable[[str], str]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_unreachable_broker_fails_publishing_clearly_after_backoff() -> None:
    settings = event_settings(
        "rocketmq", f"127.0.0.1:{_closed_port()}", publish_retries=3, publish_backoff_s=0.05
    )
    transport = create_transport(settings)
    await transport.start()  # the client connects lazily: start succeeds, sends fail
    bus = EventBus(transport, settings)
    started = time.monotonic()
    try:
        with pytest.raises(PublishFailed, match=r"broker unreachable after 4 attempt\(s\)"):
            await bus.publish(GreetEvent(payload=GreetPayload(user_id="alice")))
    finally:
        await transport.close()
    assert time.monotonic() - started < 30  # retried with backoff, did not hang


async def test_broker_limits_are_our_errors() -> None:
    settings = event_settings("rocketmq", require_service("RocketMQ", ROCKETMQ_ENV))
    transport = create_transport(settings)
    await transport.start()
    topic = settings.topics["outreach"].name
    try:
        with pytest.raises(MessageRejected, match=r"exceeds|size"):
            await transport.send(OutgoingMessage(topic=topic, body=b"x" * (4 * 1024 * 1024 + 1)))
        with pytest.raises(MessageRejected):
            await transport.send(OutgoingMessage(topic=topic, body=b""))
    finally:
        await transport.close()


async def test_a_broker_restart_loses_no_event_acknowledged_as_sent(unique: Unique) -> None:
    settings = event_settings("rocketmq", require_service("RocketMQ", ROCKETMQ_ENV))
    broker = restartable_broker()
    transport = create_transport(settings)
    await transport.start()
    bus = EventBus(transport, settings)
    tag = unique("restart")
    subscription = await bus.subscribe(unique("g"), ["outreach"], tag)
    try:
        before = [GreetEvent(payload=GreetPayload(user_id=f"before-{i}")) for i in range(50)]
        await bus.publish_many(before, tag=tag)  # each acknowledged by the broker

        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(broker.start)

        after = [GreetEvent(payload=GreetPayload(user_id=f"after-{i}")) for i in range(50)]
        # The client's gRPC channel reconnects on its own back-off (seconds, growing while the
        # broker was down): until then a publish fails, and nothing of it counts as sent.
        async with asyncio.timeout(90):
            while True:
                try:
                    await bus.publish_many(after, tag=tag)
                    break
                except PublishFailed:
                    await asyncio.sleep(1)

        seen: set[str] = set()
        deadline = time.monotonic() + 90
        while len(seen) < 100 and time.monotonic() < deadline:
            try:
                deliveries = await subscription.receive(max_messages=32, wait_s=2)
            except Exception:  # the consumer rebuilds itself after the restart
                await asyncio.sleep(0.5)
                continue
            for delivery in deliveries:
                seen.add(delivery.event.id)
                await subscription.ack(delivery)
        assert seen == {e.id for e in before + after}
    finally:
        await subscription.close()
        await transport.close()


@pytest.mark.usefixtures("fast_client_schedulers")
async def test_a_broker_outage_reads_as_one_line_and_its_end_as_another(
    caplog: pytest.LogCaptureFixture, library_log: Records, unique: Unique
) -> None:
    """The broker goes away under a producer and a consumer (heartbeats every 0.3 s here), then
    comes back: one WARNING, one INFO, no traceback per heartbeat; sending works again."""
    caplog.set_level(logging.INFO, logger=outage.log.name)
    relay = Relay(require_service("RocketMQ", ROCKETMQ_ENV))
    await relay.start()
    settings = event_settings("rocketmq", relay.address)
    transport = create_transport(settings)
    topic = settings.topics["outreach"].name
    consumer = None
    try:
        await transport.start()
        consumer = await transport.consumer(unique("g"), {topic: unique("t")})
        await transport.send(OutgoingMessage(topic=topic, body=b"before"))
        filter_ = outage.installed()
        assert filter_ is not None, "the transport installs the filter"

        before = len(library_log.records)
        await relay.stop()  # nothing listens there any more
        async with asyncio.timeout(60):
            while filter_.down().get(relay.address, 0) < 10:  # >= 10 failed calls folded
                await asyncio.sleep(0.1)
        with pytest.raises(BrokerUnavailable):
            await transport.send(OutgoingMessage(topic=topic, body=b"during"))

        await relay.start()  # the same port again, in front of the same broker
        async with asyncio.timeout(60):
            while relay.address in filter_.down():
                await asyncio.sleep(0.1)
        async with asyncio.timeout(60):
            while True:  # each client's channel reconnects on its own gRPC back-off
                try:
                    await transport.send(OutgoingMessage(topic=topic, body=b"after"))
                    break
                except BrokerUnavailable:
                    await asyncio.sleep(0.5)
        outage_records = library_log.records[before:]
    finally:
        if consumer is not None:
            await consumer.close()
        await transport.close()
        await relay.close()

    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == outage.log.name]
    about = [
        (level, message.split(" (")[0].split(" after")[0])
        for level, message in said
        if relay.address in message
    ]
    assert about == [
        ("WARNING", f"RocketMQ unreachable at {relay.address}"),
        ("INFO", f"RocketMQ reachable again at {relay.address}"),
    ], said
    assert not [r for r in caplog.records if r.name == FUTURES_LOGGER], "a traceback per heartbeat"
    failures = [r for r in outage_records if r.levelno >= logging.WARNING and relay.address in r.getMessage()]
    assert not failures, [r.getMessage() for r in failures]  # nor a line each in the library's file


def test_broker_command_reports_the_running_broker(tmp_path: Path) -> None:
    require_service("RocketMQ", ROCKETMQ_ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICEAGENT_")}
    env["VOICEAGENT_EVENTS__ROCKETMQ__LOCAL__DATA_DIR"] = os.environ["VA_TEST_ROCKETMQ_DATA_DIR"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "voiceagent", "broker", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    status = cli("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "gRPC 127.0.0.1:8081: listening" in status.stdout
    again = cli("start")
    assert again.returncode == 0 and "already running" in again.stdout

    env["VOICEAGENT_EVENTS__ROCKETMQ__LOCAL__DATA_DIR"] = str(tmp_path / "never-started")
    assert cli("status").returncode == 3
