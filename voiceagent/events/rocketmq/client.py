"""MessageBus on a real RocketMQ 5 broker through ``rocketmq-python-client`` (gRPC).

The client is thread based. Sends use its ``send_async`` futures (no thread held per message);
receive/ack/extend block, so they run on this bus's own worker pool, never on the event loop and
never on asyncio's small default executor that engines share. Every client error leaves here as
one of the project's BusError types. While the broker is down the client library's own noise
(a traceback per failed heartbeat) is folded into one line per outage (see outage.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from voiceagent.config import RocketMQSettings
from voiceagent.events.bus import (
    BrokerUnavailable,
    BusError,
    InvalidReceipt,
    MessageBus,
    MessageConsumer,
    MessageRejected,
    MessageType,
    OutgoingMessage,
    ReceivedMessage,
    TopicNotFound,
)
from voiceagent.events.rocketmq import outage

log = logging.getLogger(__name__)
T = TypeVar("T")

INVALID_RECEIPT_HANDLE = 40012  # apache.rocketmq.v2.Code
MIN_INVISIBLE_S = 1.0  # the local broker's proxy allows 1 s; a stock proxy wants 10 s
BATCH_SIZE = 64  # messages per gRPC call in send_many; events are ~0.5-2 KB


def _client() -> Any:
    import rocketmq  # grpc and protobuf: imported only when the broker is actually used

    outage.install(str(Path(rocketmq.__file__).parent))
    return rocketmq


def map_error(exc: BaseException, action: str) -> BusError:
    """The client raises bare Exceptions, grpc errors and its own ClientExceptions: sort them."""
    if isinstance(exc, BusError):
        return exc
    from rocketmq.v5.exception import (
        BadRequestException,
        ClientException,
        IllegalArgumentException,
        NotFoundException,
        PayloadTooLargeException,
    )

    text = f"{action}: {type(exc).__name__}: {exc}"
    if isinstance(exc, NotFoundException):
        return TopicNotFound(text)
    if isinstance(exc, BadRequestException) and exc.code == INVALID_RECEIPT_HANDLE:
        return InvalidReceipt(text)
    if isinstance(exc, BadRequestException | IllegalArgumentException | PayloadTooLargeException):
        return MessageRejected(text)
    if isinstance(exc, ClientException):
        # Internal errors (e.g. the proxy's "settings is null" after a restart) are transient.
        return BrokerUnavailable(text)
    # Route lookups fail with a bare Exception, dead channels with grpc.aio.AioRpcError.
    return BrokerUnavailable(text)


class RocketMQBus(MessageBus):
    def __init__(
        self, settings: RocketMQSettings, topics: Mapping[str, MessageType], workers: int = 32
    ) -> None:
        self.settings = settings
        self.topics = dict(topics)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rocketmq")
        self._producer: Any = None
        self._consumers: list[RocketMQConsumer] = []
        self._queues: dict[str, Any] = {}  # topic -> the client's round-robin queue selector

    def configuration(self) -> Any:
        rocketmq = _client()
        credentials = rocketmq.Credentials(
            self.settings.access_key, self.settings.secret_key.get_secret_value()
        )
        # The client does integer arithmetic on this (a float breaks every route lookup).
        timeout = max(1, math.ceil(self.settings.request_timeout_s))
        return rocketmq.ClientConfiguration(self.settings.endpoints, credentials, request_timeout=timeout)

    async def blocking(self, call: Callable[[], T], action: str) -> T:
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, call)
        except Exception as exc:
            raise map_error(exc, action) from exc

    async def start(self) -> None:
        if self._producer is not None:
            return
        rocketmq = _client()
        producer = rocketmq.Producer(self.configuration(), tuple(self.topics))
        # startup() returns at once even with the proxy down; sends then fail and are retried.
        outage.watch(producer.client_id, self.settings.endpoints)
        await self.blocking(producer.startup, "starting producer")
        self._producer = producer

    async def close(self) -> None:
        for consumer in list(self._consumers):
            await consumer.close()
        if self._producer is not None:
            producer, self._producer = self._producer, None
            outage.forget(producer.client_id)
            try:
                await self.blocking(producer.shutdown, "stopping producer")
            except BusError as exc:
                log.warning("producer shutdown: %s", exc)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _to_client_message(self, message: OutgoingMessage) -> Any:
        rocketmq = _client()
        out = rocketmq.Message()
        out.topic = message.topic
        out.body = message.body
        if message.tag:
            out.tag = message.tag
        for key in message.keys:
            out.keys = key  # the client appends one key per assignment
        for name, value in message.properties.items():
            out.add_property(name, value)
        if message.deliver_at is not None:
            # Whole seconds only: round up so a delayed message never arrives early.
            out.delivery_timestamp = math.ceil(message.deliver_at.timestamp())
        return out

    async def send(self, message: OutgoingMessage) -> str:
        if self._producer is None:
            raise BusError("RocketMQ bus not started")
        if not message.body:
            raise MessageRejected("RocketMQ refuses empty bodies")
        try:
            future = self._producer.send_async(self._to_client_message(message))
            receipt = await asyncio.wrap_future(future)
        except Exception as exc:
            raise map_error(exc, f"sending to {message.topic}") from exc
        return str(receipt.message_id)

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Batch what RocketMQ can batch: one gRPC call per up to BATCH_SIZE messages with the
        same topic, tag and properties (the per-call cost, not the bytes, limits a Python
        producer: ~2.7k msg/s one by one, ~25k/s batched here). The broker stores a batch under
        its first message's id and keys, so batched messages carry no keys and share one id:
        identity belongs in the body (event envelopes carry id and idempotency key). Delayed
        messages cannot be batched and go one by one. Returns ids in input order."""
        ids: list[str] = [""] * len(messages)
        groups: dict[tuple[str, str, tuple[tuple[str, str], ...]], list[int]] = {}
        singles: list[int] = []
        for index, message in enumerate(messages):
            if message.deliver_at is None and message.body:
                key = (message.topic, message.tag, tuple(sorted(message.properties.items())))
                groups.setdefault(key, []).append(index)
            else:
                singles.append(index)
        jobs: list[tuple[list[int], Awaitable[list[str]]]] = []
        for indices in groups.values():
            for start in range(0, len(indices), BATCH_SIZE):
                chunk = indices[start : start + BATCH_SIZE]
                jobs.append((chunk, self._send_batch([messages[i] for i in chunk])))
        jobs += [([i], self._send_one(messages[i])) for i in singles]
        results = await asyncio.gather(*(job for _, job in jobs))
        for (indices, _), batch_ids in zip(jobs, results, strict=True):
            for index, message_id in zip(indices, batch_ids, strict=True):
                ids[index] = message_id
        return ids

    async def _send_one(self, message: OutgoingMessage) -> list[str]:
        return [await self.send(message)]

    async def _send_batch(self, messages: list[OutgoingMessage]) -> list[str]:
        from rocketmq.grpc_protocol import SendMessageRequest
        from rocketmq.v5.util.messaging_result_checker import MessagingResultChecker

        producer = self._producer
        if producer is None:
            raise BusError("RocketMQ bus not started")
        if len(messages) == 1:
            return [await self.send(messages[0])]
        topic = messages[0].topic
        try:
            queue = await self._queue_for(topic)
            request = SendMessageRequest()
            for message in messages:
                client_message = self._to_client_message(message.model_copy(update={"keys": ()}))
                # The client's own per-message preparation (id, type, size checks), pinned 5.1.2.
                producer._Producer__wrap_sending_message(client_message, False)
                request.messages.append(producer._Producer__send_req(client_message).messages[0])
            future = producer.rpc_client.send_message_async(
                queue.endpoints, request, producer.sign(), timeout=self.configuration().request_timeout
            )
            response = await asyncio.wrap_future(future)
            MessagingResultChecker.check(response.status)
        except Exception as exc:
            self._queues.pop(topic, None)  # the route may have changed (broker restart)
            raise map_error(exc, f"sending a batch of {len(messages)} to {topic}") from exc
        # One entry for the whole batch; consumers see its first message's id on every message.
        batch_id = str(request.messages[0].system_properties.message_id)
        return [batch_id] * len(messages)

    async def _queue_for(self, topic: str) -> Any:
        selector = self._queues.get(topic)
        if selector is None:
            from rocketmq.v5.client.balancer import QueueSelector

            route = await self.blocking(
                lambda: self._producer._retrieve_topic_route_data(topic), f"looking up route of {topic}"
            )
            selector = self._queues[topic] = QueueSelector.producer_queue_selector(route)
        return selector.select_next_queue()

    async def consumer(self, group: str, subscriptions: Mapping[str, str]) -> MessageConsumer:
        consumer = RocketMQConsumer(self, group, dict(subscriptions))
        await consumer.connect()
        self._consumers.append(consumer)
        return consumer

    def forget(self, consumer: RocketMQConsumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)


class RocketMQConsumer(MessageConsumer):
    """A SimpleConsumer that is rebuilt when the broker restarts under it (the client's own
    consumer never recovers: every receive then fails with "settings is null")."""

    def __init__(self, bus: RocketMQBus, group: str, subscriptions: dict[str, str]) -> None:
        self.bus = bus
        self.group = group
        self.subscriptions = subscriptions
        self._client: Any = None
        self._broken = False
        self._lock = asyncio.Lock()  # one long poll at a time: await_duration is per client

    async def connect(self) -> None:
        rocketmq = _client()
        expressions = {
            topic: rocketmq.FilterExpression(tag or "*") for topic, tag in self.subscriptions.items()
        }
        client = rocketmq.SimpleConsumer(self.bus.configuration(), self.group, expressions, await_duration=5)
        outage.watch(client.client_id, self.bus.settings.endpoints)
        await self.bus.blocking(client.startup, f"joining group {self.group}")
        # The first receive races the settings handshake; wait for it like the client should.
        settings_ready = getattr(client, "_init_settings_event", None)
        if settings_ready is not None:
            await self.bus.blocking(lambda: settings_ready.wait(5), "waiting for consumer settings")
        self._client = client
        self._broken = False

    async def _reconnect(self) -> None:
        old, self._client = self._client, None
        if old is not None:
            outage.forget(old.client_id)
            with contextlib.suppress(BusError):
                await self.bus.blocking(old.shutdown, f"dropping consumer {self.group}")
        await self.connect()

    async def receive(
        self, max_messages: int = 16, invisible_s: float = 30.0, wait_s: float = 5.0
    ) -> list[ReceivedMessage]:
        async with self._lock:
            if self._broken or self._client is None:
                await self._reconnect()
            client = self._client
            client.await_duration = max(1, math.ceil(wait_s))  # the proxy's long-poll floor is 1 s
            invisible = max(MIN_INVISIBLE_S, invisible_s)
            try:
                messages = await self.bus.blocking(
                    lambda: client.receive(max_messages, math.ceil(invisible)), f"receiving for {self.group}"
                )
            except BrokerUnavailable:
                self._broken = True
                raise
            except TopicNotFound:
                raise
        return [self._convert(m) for m in messages or []]

    def _convert(self, message: Any) -> ReceivedMessage:
        return ReceivedMessage(
            topic=message.topic,
            body=bytes(message.body),
            tag=message.tag or "",
            keys=tuple(message.keys or ()),
            properties=dict(message.properties or {}),
            message_id=str(message.message_id),
            delivery_attempt=int(message.delivery_attempt),
            receipt=(self._client, message),
        )

    async def ack(self, message: ReceivedMessage) -> None:
        client, raw = message.receipt
        await self.bus.blocking(lambda: client.ack(raw), f"acking {message.message_id}")

    async def extend(self, message: ReceivedMessage, invisible_s: float) -> None:
        client, raw = message.receipt
        seconds = math.ceil(max(MIN_INVISIBLE_S, invisible_s))
        await self.bus.blocking(
            lambda: client.change_invisible_duration(raw, seconds), f"extending {message.message_id}"
        )

    async def close(self) -> None:
        self.bus.forget(self)
        client, self._client = self._client, None
        if client is not None:
            outage.forget(client.client_id)
            try:
                await self.bus.blocking(client.shutdown, f"leaving group {self.group}")
            except BusError as exc:
                log.warning("consumer shutdown: %s", exc)
