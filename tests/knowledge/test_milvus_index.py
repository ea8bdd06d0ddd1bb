"""The knowledge index on Milvus Lite with real e5 embeddings: hybrid retrieval in English and
Chinese, replacement and deletion without stale chunks, and the server path (a separately
started `milvus-lite server`, the stand-in for a Milvus server here)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.knowledge.chunking import ChunkingSettings, chunk_text
from voiceagent.knowledge.index import Chunk, KnowledgeIndex
from voiceagent.knowledge.milvus import MilvusIndex, MilvusSettings

pytestmark = [pytest.mark.models, pytest.mark.integration]

HOURS_V1 = (
    "Opening hours. The restaurant opens at noon every day. The kitchen closes at ten on Saturdays "
    "and at nine on other days. Reservations for groups of six or more need a deposit."
)
HOURS_V2 = (
    "Opening hours. From December the restaurant opens at five in the evening and is closed on Mondays."
)
PARKING = "Getting here. Parking is free behind the building after six. The number 12 bus stops at the door."
MENU_ZH = (
    "菜单。我们有三道素菜，最受欢迎的是麻婆豆腐。所有的面包都可以做成无麸质的。甜点有提拉米苏和意式奶冻。"
)


async def add(index: KnowledgeIndex, e5: E5Embeddings, doc_id: str, version: str, text: str) -> list[Chunk]:
    pieces = chunk_text(text, ChunkingSettings(max_chars=120, overlap_chars=40))
    chunks = [
        Chunk(doc_id=doc_id, version=version, ordinal=i, text=t, title=doc_id) for i, t in enumerate(pieces)
    ]
    await index.replace_document(chunks, await e5.embed_passages([c.text for c in chunks]))
    return chunks


async def ask(index: KnowledgeIndex, e5: E5Embeddings, question: str) -> list[str]:
    [vector] = await e5.embed_queries([question])
    return [hit.text for hit in await index.search(question, vector, limit=3)]


@pytest_asyncio.fixture
async def index(tmp_path: Path) -> AsyncIterator[MilvusIndex]:
    opened = await MilvusIndex.open(
        MilvusSettings(uri=str(tmp_path / "kb" / "milvus.db")), E5Embeddings.dimensions
    )
    yield opened
    await opened.close()


async def check_retrieval(index: KnowledgeIndex, e5: E5Embeddings) -> None:
    await add(index, e5, "hours", "v1", HOURS_V1)
    await add(index, e5, "parking", "v1", PARKING)
    await add(index, e5, "menu", "v1", MENU_ZH)
    assert "Saturdays" in (await ask(index, e5, "When does the kitchen close on Saturday?"))[0]
    assert "bus" in (await ask(index, e5, "Which bus goes to the restaurant?"))[0]
    assert "素菜" in (await ask(index, e5, "你们有素菜吗？"))[0]
    assert "无麸质" in " ".join((await ask(index, e5, "面包有无麸质的吗？"))[:2])


async def test_questions_in_english_and_chinese_find_the_right_chunk(
    index: MilvusIndex, e5: E5Embeddings
) -> None:
    await check_retrieval(index, e5)


async def test_a_replaced_document_leaves_no_stale_chunk_and_the_same_version_twice_is_one_set(
    index: MilvusIndex, e5: E5Embeddings
) -> None:
    first = await add(index, e5, "hours", "v1", HOURS_V1)
    await add(index, e5, "hours", "v1", HOURS_V1)  # the same event delivered twice
    assert await index.document_chunks("hours") == first
    await add(index, e5, "parking", "v1", PARKING)
    second = await add(index, e5, "hours", "v2", HOURS_V2)
    assert await index.document_chunks("hours") == second  # v1 is gone, as soon as it returns
    found = await ask(index, e5, "When does the kitchen close on Saturday?")
    assert not any("Saturdays" in text for text in found)
    assert "Mondays" in " ".join(found)


async def test_a_deleted_document_is_not_found(index: MilvusIndex, e5: E5Embeddings) -> None:
    await add(index, e5, "parking", "v1", PARKING)
    await add(index, e5, "hours", "v1", HOURS_V1)
    await index.delete_document("parking")
    await index.delete_document("never-added")  # nothing to do, no error
    assert await index.document_chunks("parking") == []
    assert not any("bus" in text for text in await ask(index, e5, "Which bus goes to the restaurant?"))


async def test_bad_replacements_are_refused_before_anything_changes(
    index: MilvusIndex, e5: E5Embeddings
) -> None:
    chunks = await add(index, e5, "hours", "v1", HOURS_V1)
    good = await e5.embed_passages([c.text for c in chunks])
    with pytest.raises(ValueError, match="expected"):
        await index.replace_document(chunks, good[:, :10])
    mixed = [*chunks, Chunk(doc_id="other", version="v1", ordinal=99, text="x")]
    with pytest.raises(ValueError, match="document versions"):
        await index.replace_document(mixed, np.zeros((len(mixed), E5Embeddings.dimensions), np.float32))
    with pytest.raises(ValueError, match="at least one chunk"):
        await index.replace_document([], np.zeros((0, E5Embeddings.dimensions), np.float32))
    assert await index.document_chunks("hours") == chunks


async def test_an_index_of_other_dimensions_is_refused(tmp_path: Path) -> None:
    settings = MilvusSettings(uri=str(tmp_path / "milvus.db"))
    await (await MilvusIndex.open(settings, 384)).close()
    with pytest.raises(ValueError, match="384-d vectors, not 768-d"):
        await MilvusIndex.open(settings, 768)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest_asyncio.fixture
async def milvus_server(tmp_path: Path) -> AsyncIterator[str]:
    """A `milvus-lite server` process: the same gRPC protocol as a Milvus server."""
    executable = shutil.which("milvus-lite") or str(Path(sys.executable).with_name("milvus-lite"))
    port = _free_port()
    data = tmp_path / "server"
    process = await asyncio.create_subprocess_exec(
        executable, "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(60):  # start-up deadline, not a latency bound
            while True:
                assert process.returncode is None, f"milvus-lite server exited with {process.returncode}"
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def test_the_same_code_works_against_a_milvus_server(milvus_server: str, e5: E5Embeddings) -> None:
    settings = MilvusSettings(uri=milvus_server)
    index = await MilvusIndex.open(settings, E5Embeddings.dimensions)
    try:
        await check_retrieval(index, e5)
    finally:
        await index.close()
    # A second node opening the same server sees the same knowledge.
    other = await MilvusIndex.open(settings, E5Embeddings.dimensions)
    try:
        assert [c.doc_id for c in await other.document_chunks("menu")] == ["menu"]
        assert "bus" in (await ask(other, e5, "Which bus goes to the restaurant?"))[0]
    finally:
        await other.close()
