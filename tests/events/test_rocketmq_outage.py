"""A RocketMQ outage reads as one line when it starts and one when it ends (no broker needed:
the library's own messages, as captured from a real outage, and a real client at a closed port).
The same against the real broker, going away and coming back: test_rocketmq.py."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import grpc
import pytest
from grpc.aio import AioRpcError, Metadata

from tests.events.conftest import Records, event_settings
from voiceagent.events import BrokerUnavailable, OutgoingMessage
from voiceagent.events.factory import create_transport
from voiceagent.events.rocketmq.outage import FUTURES_LOGGER, LIBRARY_LOGGER, OutageFilter

HERE = "127.0.0.1:8081"
PRODUCER = "PRODUCER client_id:vm@1@0@abc"
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:8081: "
    "Failed to connect to remote host: Connection refused"
)


def rpc_error(details: str = REFUSED, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> AioRpcError:
    return AioRpcError(code, Metadata(), Metadata(), details=details)


def library(level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(LIBRARY_LOGGER, level, "client.py", 1, message, None, None)


def heartbeat_failed(where: str = HERE) -> logging.LogRecord:
    return library(logging.ERROR, f"{PRODUCER} send heartbeat to {where} exception, e: {rpc_error()}")


def heartbeat_ok(where: str = HERE) -> logging.LogRecord:
    return library(logging.INFO, f"{PRODUCER} send heartbeat to {where} success.")


def reraise_in_callback(exc: BaseException) -> BaseException:
    """Like the library's heartbeat callback (here: in this file, the 'library' of the test)."""
    try:
        raise exc
    except BaseException as raised:
        return raised


def callback_traceback(exc: BaseException) -> logging.LogRecord:
    """What concurrent.futures logs when a done-callback raises."""
    return logging.LogRecord(
        FUTURES_LOGGER,
        logging.ERROR,
        "_base.py",
        1,
        "exception calling callback for %r",
        ("<Future>",),
        (type(exc), exc, exc.__traceback__),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def said() -> Records:
    return Records()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def fold(said: Records, clock: Clock) -> OutageFilter:
    out = logging.getLogger(f"test.outage.{id(said)}")
    out.propagate = False
    out.setLevel(logging.DEBUG)
    out.addHandler(said)
    return OutageFilter(package_dir=str(Path(__file__).parent), out=out, clock=clock, settle_s=30)


def lines(said: Records) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in said.records]


def test_an_outage_is_one_warning_and_its_end_one_info(
    fold: OutageFilter, said: Records, clock: Clock
) -> None:
    failures = [
        heartbeat_failed(),
        library(logging.ERROR, f"query topic raise exception, {rpc_error()}"),
        library(
            logging.WARNING,
            f"{PRODUCER} read stream from endpoints {HERE} occurred AioRpcError. code: "
            "StatusCode.UNAVAILABLE, message: Stream removed (Socket closed (GOAWAY received))",
        ),
        library(
            logging.WARNING,
            f"{PRODUCER} send setting to {HERE} occurred InvalidStateError: RPC already finished.",
        ),
        library(
            logging.ERROR, "producer select topic:t queue raise exception, failed to fetch topic:t route."
        ),
        callback_traceback(reraise_in_callback(rpc_error())),
        heartbeat_failed(),
    ]
    assert [fold.filter(r) for r in failures] == [False] * len(failures)  # none reaches a handler
    assert lines(said) == [
        (
            "WARNING",
            f"RocketMQ unreachable at {HERE} (UNAVAILABLE: {REFUSED}); the client keeps retrying, "
            "further failures are not logged until it is back",
        )
    ]
    assert fold.down() == {HERE: len(failures) - 1}

    clock.now += 42
    assert fold.filter(heartbeat_ok()) is True  # successes still reach the library's file
    assert fold.filter(heartbeat_ok()) is True
    assert lines(said)[1:] == [
        (
            "INFO",
            f"RocketMQ reachable again at {HERE} after 42.0 s ({len(failures) - 1} failed calls not logged)",
        )
    ]
    assert fold.down() == {}


def test_stragglers_after_a_recovery_are_no_new_outage_but_a_later_failure_is(
    fold: OutageFilter, said: Records, clock: Clock
) -> None:
    fold.filter(heartbeat_failed())
    fold.filter(heartbeat_ok())
    clock.now += 5  # another client's channel is still in reconnect back-off
    assert fold.filter(heartbeat_failed()) is False
    assert [level for level, _ in lines(said)] == ["WARNING", "INFO"]
    clock.now += 60
    fold.filter(heartbeat_failed())
    assert [level for level, _ in lines(said)] == ["WARNING", "INFO", "WARNING"]


def test_endpoints_are_down_and_back_independently(fold: OutageFilter, said: Records) -> None:
    other = "10.0.0.7:8081"
    fold.filter(heartbeat_failed())
    fold.filter(heartbeat_failed(other))
    fold.filter(heartbeat_ok(other))
    fold.filter(heartbeat_failed())
    assert fold.down() == {HERE: 1}
    assert [m.split(" (")[0] for _, m in lines(said)] == [
        f"RocketMQ unreachable at {HERE}",
        f"RocketMQ unreachable at {other}",
        f"RocketMQ reachable again at {other} after 0.0 s",
    ]


def test_a_route_lookup_ends_the_outage_of_its_clients_access_point(
    fold: OutageFilter, said: Records
) -> None:
    """Route lookups go to the configured access point and name only the client."""
    access = "127.0.0.1:9999"
    fold.watch("vm@1@0@abc", access)
    fold.filter(
        library(logging.ERROR, f"query topic raise exception, {rpc_error(REFUSED.replace(HERE, access))}")
    )
    fold.filter(library(logging.INFO, f"{PRODUCER} update topic:t route, route info: message_queues:(q)"))
    assert [m.split(" (")[0] for _, m in lines(said)] == [
        f"RocketMQ unreachable at {access}",
        f"RocketMQ reachable again at {access} after 0.0 s",
    ]


def test_what_is_not_an_outage_is_left_alone(fold: OutageFilter, said: Records) -> None:
    not_ours = callback_traceback(reraise_in_callback(RuntimeError("someone else's callback")))
    assert OutageFilter(package_dir="/nowhere").filter(not_ours) is True
    assert fold.filter(library(logging.INFO, f"{PRODUCER} send setting to {HERE} success.")) is True
    refused = f"{PRODUCER} send heartbeat to {HERE} error, code:40100, message:unauthorized."
    assert fold.filter(library(logging.ERROR, refused)) is True
    missing = "producer select topic:t queue raise exception, failed to fetch topic:t route."
    assert fold.filter(library(logging.ERROR, missing)) is True  # a missing topic, no outage on
    # A library callback failing for another reason: one line, not a traceback.
    denied = rpc_error("denied", grpc.StatusCode.PERMISSION_DENIED)
    assert fold.filter(callback_traceback(reraise_in_callback(denied))) is False
    assert lines(said) == [("WARNING", "RocketMQ client background call failed: PERMISSION_DENIED: denied")]
    assert fold.down() == {}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_client_at_a_closed_port_says_so_once(
    caplog: pytest.LogCaptureFixture, library_log: Records
) -> None:
    """The real client library, nothing listening: one warning however often it fails (its
    start-up route lookup, then each send's)."""
    caplog.set_level(logging.INFO, logger="voiceagent.events.rocketmq")
    where = f"127.0.0.1:{_closed_port()}"
    transport = create_transport(event_settings("rocketmq", where))
    await transport.start()
    try:
        for _ in range(3):
            with pytest.raises(BrokerUnavailable):
                await transport.send(OutgoingMessage(topic="voiceagent-outreach", body=b"x"))
    finally:
        await transport.close()
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "voiceagent.events.rocketmq"]
    about = [(level, message) for level, message in said if where in message]
    assert len(about) == 1 and about[0][0] == "WARNING", said
    assert about[0][1].startswith(f"RocketMQ unreachable at {where} (UNAVAILABLE: failed to connect")
    assert not [r for r in caplog.records if r.name == FUTURES_LOGGER]
    assert not [r for r in library_log.records if r.levelno >= logging.WARNING and where in r.getMessage()]
