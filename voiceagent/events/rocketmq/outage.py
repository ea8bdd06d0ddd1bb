"""One WARNING when RocketMQ becomes unreachable and one INFO when it is back, instead of a
traceback for every failed heartbeat, route refresh and telemetry write while it is down.

What ``rocketmq-python-client`` 5.1.2 does during an outage (found by stopping a real broker):
- its logger ``rocketmq-python-client`` (its own rotating file ~/logs/rocketmq_python, not
  propagated) gets an ERROR or WARNING for every failed heartbeat (every 10 s per client), route
  refresh (every 30 s per client), settings write and broken telemetry stream, and for every
  send or receive that fails;
- its heartbeat callback re-raises, so ``concurrent.futures`` logs "exception calling callback"
  with a full traceback to the root logger (the console) for every failed heartbeat.

``OutageFilter`` sits on both loggers. It drops those failures, says once per endpoint that the
broker is unreachable, and once that it is back when a heartbeat or route lookup next succeeds;
the client's own retries are untouched. The library only gives text, so the endpoint and reason
are read from its messages (pinned at 5.1.2).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

LIBRARY_LOGGER = "rocketmq-python-client"
FUTURES_LOGGER = "concurrent.futures"
UNKNOWN = "the broker"  # a failure that names no endpoint

log = logging.getLogger("voiceagent.events.rocketmq")

# The broker is down or restarting, not "this request was wrong": worth folding.
_UNREACHABLE = re.compile(
    r"StatusCode\.(?:UNAVAILABLE|DEADLINE_EXCEEDED)|failed to connect|Connection refused"
    r"|Connection reset|Stream removed|Socket closed|RPC already finished|GOAWAY|Broken pipe"
    r"|Deadline Exceeded",
    re.IGNORECASE,
)
# Follow-ups of a failed call that name no endpoint: folded while an outage is on, kept
# otherwise (a missing topic also fails the route fetch).
_SYMPTOM = re.compile(
    r"AioRpcError|InvalidStateError|failed to fetch topic|route raise exception when client startup"
    r"|run out of attempt times"
)
# Calls that only succeed after a round trip (a settings write "succeeds" into a dead stream).
_SUCCESS = re.compile(r"send heartbeat to \S+ success|update topic:\S+ route, route info")
_ENDPOINT = re.compile(
    r"(?:\bto |\bendpoints |ipv[46]:|dns:|channel\[)(?P<at>\[[0-9a-fA-F:.]+\]:\d+|[^\s,>\"'\[\]]+?:\d+)\b"
)
_CLIENT_ID = re.compile(r"client_id:(?P<id>[^\s,]+)")
_STATUS = re.compile(r"StatusCode\.(?P<code>\w+)")
_DETAILS = re.compile(r'details = "(?P<details>[^"]*)"')
_MESSAGE = re.compile(r"message: (?P<details>[^\n]*)")


@dataclass
class _Outage:
    started: float
    suppressed: int = 0


def endpoint_key(endpoints: str) -> str:
    """The first address of a client's configured endpoints, as the library's messages name it."""
    first = re.split(r"[;,]", endpoints.strip())[0].strip().lower()
    return re.sub(r"^(?:ipv[46]:|dns:(?:///)?)", "", first)


def _reason(text: str) -> str:
    """The gRPC status and its details when the message carries them, else the message itself."""
    status = _STATUS.search(text)
    details = _DETAILS.search(text) or _MESSAGE.search(text)
    if status and details:
        return f"{status['code']}: {details['details'].strip()}"
    return " ".join(text.split())[:200]


class OutageFilter(logging.Filter):
    """Folds the client library's failure records into one line per outage and endpoint.

    Once an endpoint is down, every library warning naming it is a symptom and is dropped. Right
    after it is back, clients whose gRPC channel is still in reconnect back-off keep failing for
    a while: failures within ``settle_s`` of a recovery are dropped too rather than reported as
    a new outage. Thread safe: the library logs from its I/O loop and scheduler threads.
    """

    def __init__(
        self,
        package_dir: str | None = None,
        out: logging.Logger = log,
        clock: Callable[[], float] = time.monotonic,
        settle_s: float = 30.0,
    ) -> None:
        super().__init__()
        self._package_dir = package_dir
        self._out = out
        self._clock = clock
        self._settle_s = settle_s
        self._lock = threading.Lock()
        self._outages: dict[str, _Outage] = {}
        self._recovered: dict[str, float] = {}  # endpoint -> when it was last back
        self._clients: dict[str, str] = {}  # client_id -> endpoint key of its access point

    def watch(self, client_id: str, endpoints: str) -> None:
        """Route lookups name only the client: tie its id to the access point it talks to."""
        with self._lock:
            self._clients[client_id] = endpoint_key(endpoints)

    def forget(self, client_id: str) -> None:
        with self._lock:
            self._clients.pop(client_id, None)

    def down(self) -> dict[str, int]:
        """Endpoints currently unreachable, each with the failures folded since it went down."""
        with self._lock:
            return {where: outage.suppressed for where, outage in self._outages.items()}

    def filter(self, record: logging.LogRecord) -> bool:
        # A filter that raised would break the library call that is logging: never let it.
        try:
            return self._filter(record)
        except Exception:  # pragma: no cover - defensive
            return True

    def _filter(self, record: logging.LogRecord) -> bool:
        if record.name == FUTURES_LOGGER:
            return self._callback_error(record)
        if record.levelno >= logging.WARNING:
            text = record.getMessage()
            return not self._failed(self._where(text), text)
        if record.levelno == logging.INFO and _SUCCESS.search(text := record.getMessage()):
            self._succeeded(self._where(text))
        return True

    def _where(self, text: str) -> str:
        """The endpoint a message is about: named in it, or the access point of its client."""
        if found := _ENDPOINT.search(text):
            return endpoint_key(found["at"])
        if (client := _CLIENT_ID.search(text)) is not None:
            with self._lock:
                known = self._clients.get(client["id"].rstrip("."))
            if known:
                return known
        return UNKNOWN

    def _callback_error(self, record: logging.LogRecord) -> bool:
        """``concurrent.futures`` logs a traceback when a future's callback raises; the library's
        heartbeat callback re-raises every RPC error it has already logged itself."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not self._from_library(exc):
            return True
        text = f"{type(exc).__name__}: {exc}"
        if not self._failed(self._where(text), text):
            # Not an outage: still worth a line, but not a traceback.
            self._out.warning("RocketMQ client background call failed: %s", _reason(text))
        return False

    def _from_library(self, exc: BaseException) -> bool:
        if self._package_dir is None:
            return False
        return any(
            Path(frame.f_code.co_filename).is_relative_to(self._package_dir)
            for frame, _ in traceback.walk_tb(exc.__traceback__)
        )

    def _failed(self, where: str, text: str) -> bool:
        """Fold a failure record into an outage (True) or leave it alone (False)."""
        unreachable = _UNREACHABLE.search(text) is not None
        symptom = unreachable or _SYMPTOM.search(text) is not None
        with self._lock:
            now = self._clock()
            if where == UNKNOWN and self._outages and symptom:
                where = next(iter(self._outages))  # most likely the outage already reported
            if (outage := self._outages.get(where)) is not None:
                outage.suppressed += 1  # anything the library says about a down endpoint
                return True
            settling = {k for k, at in self._recovered.items() if now - at < self._settle_s}
            if symptom and (where in settling or (where == UNKNOWN and settling)):
                return True  # a channel still in reconnect back-off after the recovery
            if not unreachable:
                return False
            self._outages[where] = _Outage(now)
        self._out.warning(
            "RocketMQ unreachable at %s (%s); the client keeps retrying, further failures are "
            "not logged until it is back",
            where,
            _reason(text),
        )
        return True

    def _succeeded(self, where: str) -> None:
        with self._lock:
            now = self._clock()
            ended = [(k, self._outages.pop(k)) for k in (where, UNKNOWN) if k in self._outages]
            if ended:
                self._recovered[where] = now
        for key, outage in ended:
            self._out.info(
                "RocketMQ reachable again at %s after %.1f s (%d failed calls not logged)",
                where if key == UNKNOWN else key,
                now - outage.started,
                outage.suppressed,
            )


_installed: OutageFilter | None = None
_install_lock = threading.Lock()


def install(package_dir: str) -> OutageFilter:
    """Put one process-wide OutageFilter on the library's and on concurrent.futures' loggers."""
    global _installed
    with _install_lock:
        if _installed is None:
            _installed = OutageFilter(package_dir)
            logging.getLogger(LIBRARY_LOGGER).addFilter(_installed)
            logging.getLogger(FUTURES_LOGGER).addFilter(_installed)
        return _installed


def watch(client_id: str, endpoints: str) -> None:
    """Tell the installed filter which access point a new client talks to."""
    if _installed is not None:
        _installed.watch(client_id, endpoints)


def forget(client_id: str) -> None:
    if _installed is not None:
        _installed.forget(client_id)


def installed() -> OutageFilter | None:
    """The process-wide filter, once a RocketMQ client has been used."""
    return _installed
