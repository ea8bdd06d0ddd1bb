"""The knowledge tests' shared pieces: a real e5 engine (one per test: it loads in a quarter of a
second, and its worker pool's semaphore belongs to one event loop), and a node's knowledge base on
the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service
from tests.events.conftest import ROCKETMQ_ENV, event_settings
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.events import EventBus
from voiceagent.events.factory import create_transport
from voiceagent.knowledge.milvus import MilvusSettings
from voiceagent.knowledge.node import KnowledgeNode
from voiceagent.knowledge.settings import IngestSettings, KnowledgeSettings
from voiceagent.store.database import Database

# Broker round trips and ingestion on a busy machine: only a lost event crosses it.
SETTLE_S = 60.0


@pytest.fixture
def e5() -> Iterator[E5Embeddings]:
    engine = E5Embeddings(batch_size=8)
    yield engine
    engine.close()


NodeFactory = Callable[..., Awaitable[KnowledgeNode]]


@pytest.fixture
async def knowledge_node(
    tmp_path: Path, sqlite_database: Database, e5: E5Embeddings
) -> AsyncIterator[NodeFactory]:
    """``await knowledge_node(**settings)``: a node's knowledge base on the real RocketMQ broker
    (its own ingest group), real e5 and Milvus Lite under ``tmp_path``, its workers subscribed."""
    started: list[tuple[KnowledgeNode, Any]] = []

    async def start(**settings: Any) -> KnowledgeNode:
        events = event_settings("rocketmq", require_service("RocketMQ", ROCKETMQ_ENV))
        transport = create_transport(events)
        await transport.start()
        knowledge = KnowledgeSettings(
            milvus=MilvusSettings(uri=str(tmp_path / "milvus.db")),
            ingest=IngestSettings(group=f"ingest-{uuid.uuid4().hex[:10]}", invisible_s=10.0),
            **settings,
        )
        node = KnowledgeNode(knowledge, bus=EventBus(transport, events), database=sqlite_database)
        started.append((node, transport))
        await node.start()
        node.start_index(e5)
        async with asyncio.timeout(SETTLE_S):  # the workers joined their group: publishing may start
            while node.consumer is None:
                await asyncio.sleep(0.05)
        return node

    yield start
    for node, transport in started:
        await node.stop()
        await transport.close()


async def settled(node: KnowledgeNode, doc_id: str, *wanted: str, version: str | None = None) -> Any:
    """The document's state once it is one of ``wanted`` (at ``version``, if given)."""
    async with asyncio.timeout(SETTLE_S):
        while True:
            state = await node.states.get(doc_id)
            if state is not None and state.state in wanted and version in (None, state.version):
                return state
            await asyncio.sleep(0.1)


async def eventually(probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool]) -> Any:
    """``probe()``'s first value that is ``ok`` (a deadline only a lost change crosses)."""
    async with asyncio.timeout(SETTLE_S):
        while not ok(value := await probe()):
            await asyncio.sleep(0.1)
    return value
