"""The message transport every event rides on, with RocketMQ 5's SimpleConsumer semantics.

Both implementations (the real broker, and the in-process bus for the embedded default) keep the
same contract, checked by one test suite: consumer groups each see every message whose tag
matches their filter; within a group a received message is invisible for a while and comes back
(attempt + 1) unless acked; delayed messages appear no earlier than their time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

MessageType = Literal["NORMAL", "DELAY", "FIFO", "MIXED"]


class BusError(RuntimeError):
    """Base of every error the event layer raises; callers never see a client library's own."""


class BrokerUnavailable(BusError):
    """The broker did not answer (down, restarting, unreachable): worth retrying."""


class TopicNotFound(BusError):
    pass


class InvalidReceipt(BusError):
    """Ack/extend on a delivery that already timed out and was handed out again."""


class MessageRejected(BusError):
    """The broker refused this message for what it is (too large, wrong type): do not retry."""


class OutgoingMessage(BaseModel):
    model_config = ConfigDict(frozen=True)

    topic: str
    body: bytes
    tag: str = ""
    keys: tuple[str, ...] = ()
    properties: Mapping[str, str] = Field(default_factory=dict)
    deliver_at: datetime | None = None


class ReceivedMessage(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    topic: str
    body: bytes
    tag: str
    keys: tuple[str, ...]
    properties: Mapping[str, str]
    message_id: str
    delivery_attempt: int
    # Whatever the implementation needs to ack this very delivery (not the message in general).
    receipt: Any = Field(exclude=True, repr=False)


class MessageConsumer(ABC):
    """One member of a consumer group, pulling at its own pace."""

    @abstractmethod
    async def receive(
        self, max_messages: int = 16, invisible_s: float = 30.0, wait_s: float = 5.0
    ) -> list[ReceivedMessage]:
        """Wait up to ``wait_s`` for at least one message; each is hidden for ``invisible_s``."""

    @abstractmethod
    async def ack(self, message: ReceivedMessage) -> None: ...

    @abstractmethod
    async def extend(self, message: ReceivedMessage, invisible_s: float) -> None:
        """Keep a message hidden longer while its handler is still working on it."""

    @abstractmethod
    async def close(self) -> None: ...


class MessageBus(ABC):
    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def send(self, message: OutgoingMessage) -> str:
        """Return the message id once the broker has stored the message."""

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        return [await self.send(m) for m in messages]

    @abstractmethod
    async def consumer(self, group: str, subscriptions: Mapping[str, str]) -> MessageConsumer:
        """Join ``group`` reading ``{topic: tag filter}``; the filter is ``*`` or ``a||b``."""


def tag_matches(expression: str, tag: str) -> bool:
    expression = expression.strip()
    return expression in ("", "*") or tag in {t.strip() for t in expression.split("||")}
