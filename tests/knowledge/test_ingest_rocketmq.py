"""Knowledge changes through the real RocketMQ broker: published knowledge.changed events are
consumed by an EventConsumer running the ingestor (real e5, Milvus Lite, SQLite): a document
becomes retrievable, and one that cannot be read is dead-lettered with its reason while the
pipeline goes on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import require_service
from tests.events.conftest import ROCKETMQ_ENV, event_settings
from tests.events.test_contract import dead_letter_reader, drain
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.events import EventBus, EventConsumer, KnowledgeChangedEvent, KnowledgeChangedPayload
from voiceagent.events.eventbus import DLQ_REASON
from voiceagent.events.factory import create_transport
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.ingest import Ingestor
from voiceagent.knowledge.milvus import MilvusIndex, MilvusSettings
from voiceagent.store.database import Database

pytestmark = [pytest.mark.rocketmq, pytest.mark.models, pytest.mark.integration]


@pytest.fixture
async def bus() -> AsyncIterator[EventBus]:
    settings = event_settings("rocketmq", require_service("RocketMQ", ROCKETMQ_ENV))
    transport = create_transport(settings)
    await transport.start()
    yield EventBus(transport, settings)
    await transport.close()


async def test_published_changes_are_ingested_and_a_bad_document_is_dead_lettered(
    tmp_path: Path, bus: EventBus, sqlite_database: Database, e5: E5Embeddings
) -> None:
    run = uuid.uuid4().hex[:10]
    tag, group = f"kb-{run}", f"ingest-{run}"
    subscription = await bus.subscribe(group, ["knowledge"], tag)
    letters = await dead_letter_reader(bus, lambda prefix: f"{prefix}-{run}")
    index = await MilvusIndex.open(MilvusSettings(uri=str(tmp_path / "milvus.db")), e5.dimensions)
    ingestor = Ingestor(index, e5, DocumentStates(sqlite_database))
    consumer = EventConsumer(subscription, ingestor.handle, concurrency=2, invisible_s=10.0, wait_s=1.0)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.create_task(consumer.run(stop))
    try:
        bad, good = tmp_path / "menu.pdf", tmp_path / "menu.md"
        bad.write_bytes(b"%PDF-1.7 ...")
        good.write_text("# Menu\n\n我们有三道素菜，最受欢迎的是麻婆豆腐。The risotto is vegetarian.\n")
        for doc_id, path in (("menu-pdf", bad), ("menu", good)):
            payload = KnowledgeChangedPayload(
                document_id=doc_id, change="added", source=str(path), checksum="v1"
            )
            await bus.publish(KnowledgeChangedEvent(idempotency_key=f"{doc_id}:v1", payload=payload), tag=tag)
        deadline = time.monotonic() + 60  # a deadline for the broker round trips, not a latency bound
        while consumer.stats.handled + consumer.stats.dead_lettered < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert (consumer.stats.handled, consumer.stats.dead_lettered) == (1, 1)
        states = ingestor.states
        indexed, failed = await states.get("menu"), await states.get("menu-pdf")
        assert indexed is not None and indexed.state == "indexed" and indexed.chunks == 1
        assert failed is not None and (failed.state, failed.reason) == ("failed", "unsupported")
        [vector] = await e5.embed_queries(["你们有素菜吗？"])
        assert "素菜" in (await index.search("你们有素菜吗？", vector))[0].text
        [letter] = await drain(letters, group, 1)
        assert letter.properties[DLQ_REASON] == "unsupported"
    finally:
        stop.set()
        await loop
        await subscription.close()
        await index.close()
