"""Pick the transport named by the configuration."""

from __future__ import annotations

from voiceagent.config import EventSettings
from voiceagent.events.bus import MessageBus
from voiceagent.events.inprocess import InProcessBus


def create_transport(settings: EventSettings) -> MessageBus:
    topics = {t.name: t.message_type for t in settings.topics.values()}
    if settings.backend == "rocketmq":
        from voiceagent.events.rocketmq.client import RocketMQBus  # grpc is heavy: load on demand

        return RocketMQBus(settings.rocketmq, topics)
    return InProcessBus(topics)
