"""knowledge.changed events through the ingestor into a real index (Milvus Lite, e5) with the
documents' states in the store (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
import pytest_asyncio

from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.events.consumer import EventUnusable
from voiceagent.events.envelope import KnowledgeChangedEvent, KnowledgeChangedPayload
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.ingest import Ingestor
from voiceagent.knowledge.milvus import MilvusIndex, MilvusSettings
from voiceagent.store.database import Database

pytestmark = [pytest.mark.models, pytest.mark.integration]
Change = Literal["added", "updated", "deleted"]


class CountingEmbeddings(E5Embeddings):
    """The real e5, counting the passages it embeds (re-ingesting must not embed again)."""

    embedded = 0

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        type(self).embedded += len(texts)
        return await super().embed_passages(texts)


@pytest.fixture(scope="module")
def e5() -> Iterator[CountingEmbeddings]:
    engine = CountingEmbeddings(batch_size=8)
    yield engine
    engine.close()


@pytest_asyncio.fixture
async def ingestor(tmp_path: Path, database: Database, e5: CountingEmbeddings) -> AsyncIterator[Ingestor]:
    index = await MilvusIndex.open(MilvusSettings(uri=str(tmp_path / "milvus.db")), e5.dimensions)
    yield Ingestor(index, e5, DocumentStates(database))
    await index.close()


def changed(
    doc_id: str, source: Path | str, change: Change = "updated", checksum: str = ""
) -> KnowledgeChangedEvent:
    payload = KnowledgeChangedPayload(
        document_id=doc_id, change=change, source=str(source), checksum=checksum
    )
    return KnowledgeChangedEvent(idempotency_key=f"knowledge:{doc_id}:{checksum}", payload=payload)


async def ask(ingestor: Ingestor, question: str) -> list[str]:
    [vector] = await ingestor.embeddings.embed_queries([question])
    return [hit.text for hit in await ingestor.index.search(question, vector, limit=3)]


async def test_a_document_is_indexed_updated_and_deleted(tmp_path: Path, ingestor: Ingestor) -> None:
    page = tmp_path / "hours.md"
    page.write_text(
        "# Opening hours\n\nThe kitchen closes at ten on Saturdays.\n\nParking is free after six.\n"
    )
    await ingestor.handle(changed("hours", page, "added"))
    state = await ingestor.states.get("hours")
    assert state is not None and (state.state, state.title, state.chunks) == ("indexed", "Opening hours", 1)
    assert "Saturdays" in (await ask(ingestor, "When does the kitchen close on Saturday?"))[0]

    page.write_text(
        "# Opening hours\n\nFrom December we open at five in the evening, and close on Mondays.\n"
    )
    await ingestor.handle(changed("hours", page))
    assert not any("Saturdays" in t for t in await ask(ingestor, "When does the kitchen close on Saturday?"))
    updated = await ingestor.states.get("hours")
    assert updated is not None and updated.state == "indexed" and updated.version != state.version

    await ingestor.handle(changed("hours", page, "deleted"))
    assert await ingestor.index.document_chunks("hours") == []
    gone = await ingestor.states.get("hours")
    assert gone is not None and gone.state == "deleted"


async def test_the_same_change_twice_is_one_set_of_chunks_and_one_embedding(
    tmp_path: Path, ingestor: Ingestor, e5: CountingEmbeddings
) -> None:
    page = tmp_path / "menu.txt"
    page.write_text("我们有三道素菜。最受欢迎的是麻婆豆腐。")
    await ingestor.handle(changed("menu", page, "added", checksum="v1"))
    embedded = e5.embedded
    await ingestor.handle(changed("menu", page, "added", checksum="v1"))  # redelivered
    assert e5.embedded == embedded  # nothing embedded again
    assert len(await ingestor.index.document_chunks("menu")) == 1
    assert "素菜" in (await ask(ingestor, "你们有素菜吗？"))[0]


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("menu.pdf", b"%PDF-1.7 binary", "unsupported"),
        ("empty.txt", b"   \n", "empty"),
        ("garbage.txt", b"\x00\x01\x02\x03", "not_text"),
        ("missing.txt", None, "missing"),
    ],
)
async def test_a_document_that_cannot_be_ingested_fails_with_its_reason_and_the_pipeline_goes_on(
    tmp_path: Path, ingestor: Ingestor, name: str, content: bytes | None, reason: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(EventUnusable) as refused:  # the consumer dead-letters it with this reason
        await ingestor.handle(changed("bad", path))
    assert refused.value.reason == reason
    state = await ingestor.states.get("bad")
    assert state is not None and (state.state, state.reason) == ("failed", reason) and state.detail
    good = tmp_path / "good.txt"
    good.write_text("The number 12 bus stops at the door.")
    await ingestor.handle(changed("good", good))  # the next document is ingested as usual
    assert "bus" in (await ask(ingestor, "Which bus goes there?"))[0]
