"""Events: typed envelopes over RocketMQ (or an in-process bus with the same semantics)."""

from voiceagent.events.bus import (
    BrokerUnavailable,
    BusError,
    InvalidReceipt,
    MessageBus,
    MessageConsumer,
    MessageRejected,
    OutgoingMessage,
    ReceivedMessage,
    TopicNotFound,
)
from voiceagent.events.consumer import EventConsumer, EventUnusable, RetryLater
from voiceagent.events.dedup import Deduplicator
from voiceagent.events.envelope import (
    AskEvent,
    AskPayload,
    EventRejected,
    GreetEvent,
    GreetPayload,
    JobQueuedEvent,
    JobQueuedPayload,
    KnowledgeChangedEvent,
    KnowledgeChangedPayload,
)
from voiceagent.events.eventbus import AnyEvent, Delivery, EventBus, EventSubscription, PublishFailed

__all__ = [
    "AnyEvent",
    "AskEvent",
    "AskPayload",
    "BrokerUnavailable",
    "BusError",
    "Deduplicator",
    "Delivery",
    "EventBus",
    "EventConsumer",
    "EventRejected",
    "EventSubscription",
    "EventUnusable",
    "GreetEvent",
    "GreetPayload",
    "InvalidReceipt",
    "JobQueuedEvent",
    "JobQueuedPayload",
    "KnowledgeChangedEvent",
    "KnowledgeChangedPayload",
    "MessageBus",
    "MessageConsumer",
    "MessageRejected",
    "OutgoingMessage",
    "PublishFailed",
    "ReceivedMessage",
    "RetryLater",
    "TopicNotFound",
]
