"""Event-bus fixtures: every contract test runs on the in-process bus and on the real RocketMQ.

Each test gets its own consumer groups and tags, so tests never see each other's messages on the
shared broker topics (a new RocketMQ group may start at the earliest or the latest offset).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.conftest import require_service
from voiceagent.config import EventSettings, LocalBrokerSettings, RocketMQSettings
from voiceagent.events import EventBus, MessageBus
from voiceagent.events.factory import create_transport
from voiceagent.events.rocketmq.broker import LocalBroker

ROCKETMQ_ENV = "VA_TEST_ROCKETMQ_ENDPOINT"


def restartable_broker() -> LocalBroker:
    """The broker `make test` started, to stop and start again from this very process: a broker
    (re)started here is this process's child, so only this process can reap it when it stops."""
    endpoint = require_service("RocketMQ", ROCKETMQ_ENV)
    settings = event_settings("rocketmq", endpoint)
    local = LocalBrokerSettings(data_dir=os.environ["VA_TEST_ROCKETMQ_DATA_DIR"])
    return LocalBroker(
        RocketMQSettings(endpoints=endpoint, local=local),
        {t.name: t.message_type for t in settings.topics.values()},
        say=print,
    )


def event_settings(backend: str, endpoint: str = "127.0.0.1:8081", **overrides: object) -> EventSettings:
    fields: dict[str, object] = {"publish_backoff_s": 0.01, "publish_backoff_max_s": 0.05, **overrides}
    return EventSettings(
        backend=backend,  # type: ignore[arg-type]
        rocketmq=RocketMQSettings(endpoints=endpoint),
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture(
    params=[
        pytest.param("inprocess", id="inprocess"),
        pytest.param("rocketmq", id="rocketmq", marks=[pytest.mark.rocketmq, pytest.mark.integration]),
    ]
)
def backend_settings(request: pytest.FixtureRequest) -> EventSettings:
    if request.param == "rocketmq":
        return event_settings("rocketmq", require_service("RocketMQ", ROCKETMQ_ENV))
    return event_settings("inprocess")


@pytest.fixture
async def transport(backend_settings: EventSettings) -> AsyncIterator[MessageBus]:
    bus = create_transport(backend_settings)
    await bus.start()
    yield bus
    await bus.close()


@pytest.fixture
def event_bus(transport: MessageBus, backend_settings: EventSettings) -> EventBus:
    return EventBus(transport, backend_settings)


@pytest.fixture
def unique() -> Callable[[str], str]:
    """unique("group") -> "group-3f2a9c..." : names no other test (or earlier run) uses."""
    run = uuid.uuid4().hex[:10]
    return lambda prefix: f"{prefix}-{run}"


@pytest.fixture
def fast_client_schedulers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The RocketMQ client heartbeats every 10 s and refreshes routes every 30 s; tests that watch
    those background calls fail run them every 0.3 s instead (clients created in the test). The
    5-minute settings sync stays as it is: writes into a dead stream would pile up pending."""
    import rocketmq.v5.client.client as client_module
    import rocketmq.v5.client.client_route_manager as route_module
    from rocketmq.v5.client.scheduler import ClientScheduler

    def fast(
        name: str, target: Callable[[], None], initial_delay: float, delay: float, loop: Any = None
    ) -> Any:
        return ClientScheduler(name, target, min(initial_delay, 0.2), min(delay, 0.3), loop)

    monkeypatch.setattr(client_module, "ClientScheduler", fast)
    monkeypatch.setattr(route_module, "ClientScheduler", fast)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def library_log() -> Iterator[Records]:
    """What reaches the client library's own handlers (its log file), after any filter."""
    from voiceagent.events.rocketmq.outage import LIBRARY_LOGGER

    handler = Records()
    logger = logging.getLogger(LIBRARY_LOGGER)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
