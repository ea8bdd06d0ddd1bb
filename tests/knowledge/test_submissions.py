"""Sources hand documents in: the content is kept as the current version and a knowledge.changed
event says so (on SQLite and PostgreSQL); then the ingestor makes the index hold what the store
holds, whatever order the events come in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.events import KnowledgeChangedEvent, PublishFailed
from voiceagent.events.consumer import EventUnusable, RetryLater
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.index import Chunk
from voiceagent.knowledge.ingest import Ingestor
from voiceagent.knowledge.milvus import MilvusIndex, MilvusSettings
from voiceagent.knowledge.parsing import DocumentRefused
from voiceagent.knowledge.submissions import DocumentSubmitter, SourceDocuments, idempotency_key, version_of
from voiceagent.store.database import Database


class Recorder:
    """The bus, as the submitter sees it: what was published, or a broker that is down."""

    def __init__(self) -> None:
        self.events: list[KnowledgeChangedEvent] = []
        self.down = False

    async def __call__(self, event: KnowledgeChangedEvent) -> None:
        if self.down:
            raise PublishFailed("broker unreachable after 6 attempt(s)")
        self.events.append(event)


@pytest.fixture
def published() -> Recorder:
    return Recorder()


@pytest.fixture
def submitter(database: Database, published: Recorder) -> DocumentSubmitter:
    return DocumentSubmitter(SourceDocuments(database), DocumentStates(database), published, max_bytes=1000)


async def test_a_submission_is_kept_then_published_with_a_key_of_id_and_version(
    submitter: DocumentSubmitter, published: Recorder
) -> None:
    nine = b"# FAQ\n\nWe open at nine."
    first = await submitter.submit("faq.md", nine, filename="faq.md", origin="api")
    again = await submitter.submit("faq.md", nine, filename="faq.md", origin="api")
    ten = b"# FAQ\n\nWe open at ten."
    changed = await submitter.submit("faq.md", ten, filename="faq.md", origin="api")
    assert (first.change, first.unchanged) == ("added", False)
    assert (again.unchanged, changed.change) == (True, "updated")
    assert [e.idempotency_key for e in published.events] == [
        f"faq.md@{version_of(nine)}",
        f"faq.md@{version_of(nine)}",  # the same change: the same key
        f"faq.md@{changed.version}",
    ]
    [payload] = {e.payload.source for e in published.events}
    assert payload == "store:faq.md"
    kept = await submitter.sources.get("faq.md")
    assert kept is not None and kept.content == ten and kept.version == changed.version
    state = await submitter.states.get("faq.md")
    assert state is not None and (state.state, state.version) == ("queued", changed.version)


async def test_a_delete_is_published_once_known_and_refused_when_not(
    submitter: DocumentSubmitter, published: Recorder
) -> None:
    assert await submitter.delete("never.md") is None
    added = await submitter.submit("menu.md", b"Soup of the day.", filename="menu.md", origin="api")
    deleted = await submitter.delete("menu.md")
    assert deleted is not None and deleted.change == "deleted"
    assert published.events[-1].idempotency_key == f"menu.md@{added.version}:deleted"
    kept = await submitter.sources.get("menu.md")
    assert kept is not None and kept.deleted and kept.content is None


async def test_an_oversized_document_is_refused_before_anything_is_kept(
    submitter: DocumentSubmitter, published: Recorder
) -> None:
    with pytest.raises(DocumentRefused) as refused:
        await submitter.submit("big.txt", b"x" * 1001, filename="big.txt", origin="api")
    assert refused.value.reason == "too_large"
    assert await submitter.sources.get("big.txt") is None and published.events == []
    state = await submitter.states.get("big.txt")
    assert state is not None and (state.state, state.reason) == ("failed", "too_large")


async def test_a_broker_that_is_down_leaves_the_document_kept_and_its_state_saying_so(
    submitter: DocumentSubmitter, published: Recorder
) -> None:
    published.down = True
    with pytest.raises(PublishFailed):
        await submitter.submit("hours.md", b"Open at nine.", filename="hours.md", origin="api")
    state = await submitter.states.get("hours.md")
    assert state is not None and (state.state, state.reason) == ("failed", "publish_failed")
    published.down = False  # handing it in again heals it
    await submitter.submit("hours.md", b"Open at nine.", filename="hours.md", origin="api")
    assert len(published.events) == 1


def test_a_long_document_id_still_makes_a_key_within_its_limit() -> None:
    key = idempotency_key("d" * 256, "0" * 32, deleted=True)
    assert len(key) <= 128 and key.endswith(f"@{'0' * 32}:deleted")
    assert key != idempotency_key("d" * 255 + "e", "0" * 32, deleted=True)


# -- the ingestor reads the store ------------------------------------------------------------


class SlowFirstEmbeddings(E5Embeddings):
    """The real e5, held up once (at `hold`), so another change can overtake an ingestion."""

    hold: asyncio.Event | None = None
    reached: asyncio.Event | None = None

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        hold, type(self).hold = type(self).hold, None
        if hold is not None and self.reached is not None:
            self.reached.set()
            await hold.wait()
        return await super().embed_passages(texts)


@pytest.fixture
def slow_e5() -> Iterator[SlowFirstEmbeddings]:
    engine = SlowFirstEmbeddings(batch_size=8)
    yield engine
    engine.close()


@pytest.fixture
async def index(tmp_path: Path, slow_e5: SlowFirstEmbeddings) -> AsyncIterator[MilvusIndex]:
    index = await MilvusIndex.open(MilvusSettings(uri=str(tmp_path / "milvus.db")), slow_e5.dimensions)
    yield index
    await index.close()


def ingestor_for(submitter: DocumentSubmitter, index: MilvusIndex, e5: E5Embeddings) -> Ingestor:
    return Ingestor(index, e5, submitter.states, sources=submitter.sources)


async def texts(index: MilvusIndex, doc_id: str) -> list[str]:
    return [c.text for c in await index.document_chunks(doc_id)]


@pytest.mark.models
async def test_events_delivered_out_of_order_leave_the_newest_version(
    submitter: DocumentSubmitter, published: Recorder, index: MilvusIndex, slow_e5: SlowFirstEmbeddings
) -> None:
    ingestor = ingestor_for(submitter, index, slow_e5)
    await submitter.submit("wifi.md", b"The password is apple.", filename="wifi.md", origin="api")
    await submitter.submit("wifi.md", b"The password is banana.", filename="wifi.md", origin="api")
    older, newer = published.events
    await ingestor.handle(newer)
    await ingestor.handle(older)  # RocketMQ brought the older change last: nothing goes back
    assert await texts(index, "wifi.md") == ["The password is banana."]
    await submitter.delete("wifi.md")
    await submitter.submit("wifi.md", b"The password is cherry.", filename="wifi.md", origin="api")
    delete, readd = published.events[2:]
    await ingestor.handle(readd)
    await ingestor.handle(delete)  # a delete overtaken by a re-add does not remove it
    assert await texts(index, "wifi.md") == ["The password is cherry."]
    state = await submitter.states.get("wifi.md")
    assert state is not None and (state.state, state.chunks) == ("indexed", 1)


@pytest.mark.models
async def test_a_change_that_lands_during_an_ingestion_is_ingested_after_it(
    submitter: DocumentSubmitter, published: Recorder, index: MilvusIndex, slow_e5: SlowFirstEmbeddings
) -> None:
    ingestor = ingestor_for(submitter, index, slow_e5)
    await submitter.submit("hours.md", b"We open at nine.", filename="hours.md", origin="api")
    SlowFirstEmbeddings.hold, SlowFirstEmbeddings.reached = asyncio.Event(), asyncio.Event()
    hold, reached = SlowFirstEmbeddings.hold, SlowFirstEmbeddings.reached
    first = asyncio.create_task(ingestor.handle(published.events[0]))
    await reached.wait()  # the first ingestion read "nine" and is embedding it
    await submitter.submit("hours.md", b"We open at ten.", filename="hours.md", origin="api")
    await ingestor.handle(published.events[1])  # another worker indexes "ten" meanwhile
    hold.set()
    await first  # writes "nine", sees the store moved on, and ingests "ten" again
    assert await texts(index, "hours.md") == ["We open at ten."]


@pytest.mark.models
async def test_a_replacement_that_cannot_be_used_removes_the_old_text(
    submitter: DocumentSubmitter, published: Recorder, index: MilvusIndex, slow_e5: SlowFirstEmbeddings
) -> None:
    ingestor = ingestor_for(submitter, index, slow_e5)
    await submitter.submit("menu.md", b"Soup of the day.", filename="menu.md", origin="api")
    await ingestor.handle(published.events[-1])
    await submitter.submit("menu.md", b"\x00\x01\x02binary\xff" * 10, filename="menu.md", origin="api")
    with pytest.raises(EventUnusable) as refused:
        await ingestor.handle(published.events[-1])
    assert refused.value.reason == "not_text"
    assert await texts(index, "menu.md") == []
    state = await submitter.states.get("menu.md")
    assert state is not None and (state.state, state.reason) == ("failed", "not_text")


async def test_content_already_indexed_is_not_published_again(
    submitter: DocumentSubmitter, published: Recorder
) -> None:
    first = await submitter.submit("faq.md", b"We open at nine.", filename="faq.md", origin="api")
    await submitter.states.indexed("faq.md", first.version, chunks=1, title="FAQ")
    again = await submitter.submit("faq.md", b"We open at nine.", filename="faq.md", origin="api")
    assert (again.unchanged, again.event_id, len(published.events)) == (True, None, 1)
    state = await submitter.states.get("faq.md")
    assert state is not None and state.state == "indexed"  # not queued again for nothing


class DownIndex(MilvusIndex):
    """The real index, whose server is down while ``down`` is set."""

    down = False

    async def replace_document(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        if self.down:
            raise ConnectionError("Milvus at http://127.0.0.1:19530 refused the connection")
        await super().replace_document(chunks, vectors)


@pytest.mark.models
async def test_an_index_that_is_down_leaves_a_failed_state_and_the_change_for_redelivery(
    tmp_path: Path, submitter: DocumentSubmitter, published: Recorder, slow_e5: SlowFirstEmbeddings
) -> None:
    index = await DownIndex.open(MilvusSettings(uri=str(tmp_path / "down.db")), slow_e5.dimensions)
    try:
        ingestor = ingestor_for(submitter, index, slow_e5)
        await submitter.submit("hours.md", b"We open at nine.", filename="hours.md", origin="api")
        index.down = True
        with pytest.raises(RetryLater):  # left unacked: the broker brings it back
            await ingestor.handle(published.events[-1])
        state = await submitter.states.get("hours.md")
        assert state is not None and (state.state, state.reason) == ("failed", "index_unavailable")
        assert state.detail is not None and "refused the connection" in state.detail
        index.down = False
        await ingestor.handle(published.events[-1])  # the redelivery, once the server is back
        assert await texts(index, "hours.md") == ["We open at nine."]
    finally:
        await index.close()
