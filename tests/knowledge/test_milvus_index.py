"""The knowledge index on Milvus Lite with real e5 embeddings: hybrid retrieval in English and
Chinese, each side alone (search modes), replacement and deletion without stale chunks even with
the background flush at work, the flusher's life, and the server path (a separately started
`milvus-lite server`, the stand-in for a Milvus server here)."""

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
from voiceagent.knowledge.index import Chunk, KnowledgeIndex, SearchMode
from voiceagent.knowledge.milvus import MilvusIndex, MilvusSettings, _fuse

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


async def ask(
    index: KnowledgeIndex, e5: E5Embeddings, question: str, mode: SearchMode = "hybrid"
) -> list[str]:
    [vector] = await e5.embed_queries([question])
    return [hit.text for hit in await index.search(question, vector, limit=3, mode=mode)]


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


async def test_each_side_alone_dense_by_meaning_sparse_by_words(index: MilvusIndex, e5: E5Embeddings) -> None:
    await add(index, e5, "hours", "v1", HOURS_V1)
    await add(index, e5, "parking", "v1", PARKING)
    await add(index, e5, "menu", "v1", MENU_ZH)
    # The words alone: only chunks sharing a word with the question, best first.
    assert "bus" in (await ask(index, e5, "number 12", mode="sparse"))[0]
    assert "提拉米苏" in (await ask(index, e5, "提拉米苏", mode="sparse"))[0]
    assert await ask(index, e5, "zzyzx", mode="sparse") == []
    assert await ask(index, e5, "   ", mode="sparse") == []
    # The embedding alone: a paraphrase with no word in common still finds its chunk.
    assert "bus" in (await ask(index, e5, "How do I get to you by public transport?", mode="dense"))[0]
    [vector] = await e5.embed_queries(["How do I get to you by public transport?"])
    hits = await index.search("", vector, limit=3, mode="dense")
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(h.similarity is not None and abs(h.similarity - h.score) < 1e-4 for h in hits)
    # Hybrid (the default) still answers both kinds, and says how close each chunk is by meaning.
    hybrid = await index.search("Which bus goes to the restaurant?", vector, limit=3)
    assert "bus" in hybrid[0].text and all(h.similarity is not None for h in hybrid)


def test_fusion_ranks_what_both_sides_found_first_and_breaks_ties_by_the_embedding() -> None:
    def hits(*ids: str) -> list[dict[str, object]]:
        return [{"id": pk, "distance": 0.0, "entity": {}} for pk in ids]

    # "zz" and "aa" are each first on one side only: a tie, which the embedding's side wins
    # whatever their keys; "both" is on both sides, so ahead of either.
    fused = _fuse(hits("zz", "both", "d3"), hits("aa", "both", "s3"), limit=4)
    assert [h["id"] for h in fused] == ["both", "zz", "aa", "d3"]
    assert [h["distance"] for h in fused] == sorted((h["distance"] for h in fused), reverse=True)
    assert _fuse(hits("a"), [], limit=5)[0]["id"] == "a" and _fuse([], [], limit=5) == []


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


# -- the background flush (Milvus Lite) ---------------------------------------------------------


def unit_vectors(count: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((count, E5Embeddings.dimensions)).astype(np.float32)
    normalised: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return normalised


def document(doc_id: str, version: str, words: str, count: int) -> list[Chunk]:
    return [
        Chunk(doc_id=doc_id, version=version, ordinal=i, text=f"{words} part {i} of {doc_id}")
        for i in range(count)
    ]


async def wait_for_flushes(index: MilvusIndex, count: int, within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while index.flushes < count:
            await asyncio.sleep(0.02)


async def test_the_flusher_runs_while_the_index_is_open_and_stops_with_it(tmp_path: Path) -> None:
    settings = MilvusSettings(uri=str(tmp_path / "milvus.db"), flush_rows=1000, flush_after_s=0.3)
    index = await MilvusIndex.open(settings, E5Embeddings.dimensions)
    flusher = index._flusher
    assert index.lite and flusher is not None and not flusher.done()
    await asyncio.sleep(0.5)
    assert index.flushes == 0  # nothing written, nothing to flush
    await index.replace_document(document("a", "v1", "alpha", 3), unit_vectors(3, 1))
    await wait_for_flushes(index, 1)  # a few rows: flushed once they are flush_after_s old
    await index.replace_document(document("b", "v1", "beta", 3), unit_vectors(3, 2))
    async with asyncio.timeout(5):  # with a flush still to come: close() neither waits for it nor hangs
        await index.close()
    assert flusher.done()
    reopened = await MilvusIndex.open(settings, E5Embeddings.dimensions)  # nothing was lost
    try:
        assert len(await reopened.document_chunks("b")) == 3
    finally:
        await reopened.close()


async def test_a_burst_is_flushed_at_once_and_found_right_after(tmp_path: Path) -> None:
    settings = MilvusSettings(uri=str(tmp_path / "milvus.db"), flush_rows=100, flush_after_s=60)
    index = await MilvusIndex.open(settings, E5Embeddings.dimensions)
    try:
        vectors = unit_vectors(600, 3)
        for n in range(6):  # 600 rows, far past flush_rows: no waiting for flush_after_s
            chunks = document(f"burst-{n}", "v1", f"keyword{n} burst", 100)
            await index.replace_document(chunks, vectors[n * 100 : (n + 1) * 100])
        last = document("fresh", "v1", "kumquat", 2)
        await index.replace_document(last, unit_vectors(2, 4))  # 2 rows: left for flush_after_s
        for mode in ("dense", "sparse", "hybrid"):  # what was just written is there, by each side
            [hit] = await index.search("kumquat", unit_vectors(2, 4)[0], limit=1, mode=mode)
            assert (hit.doc_id, hit.ordinal) == ("fresh", 0)
        await wait_for_flushes(index, 1)
        assert 0 < index.unflushed < settings.flush_rows  # the burst's rows went; the last wait
        [hit] = await index.search("keyword3 part 42", vectors[342], limit=1)
        assert (hit.doc_id, hit.ordinal) == ("burst-3", 42)
    finally:
        await index.close()


async def test_a_search_right_after_a_replacement_never_sees_the_old_version(tmp_path: Path) -> None:
    # Flushes as often as possible, so that old versions sit in flushed segments and their
    # deletion in the unflushed part, or both in one flush, in turn.
    settings = MilvusSettings(uri=str(tmp_path / "milvus.db"), flush_rows=4, flush_after_s=0.01)
    index = await MilvusIndex.open(settings, E5Embeddings.dimensions)
    try:
        await index.replace_document(document("other", "v1", "quince jam", 4), unit_vectors(4, 5))
        vectors = unit_vectors(3, 6)
        for n in range(12):
            version = f"v{n}"
            await index.replace_document(document("hours", version, "quince opening hours", 3), vectors)
            # The question is the old version's own words and vector: a stale chunk would win.
            for mode in ("hybrid", "dense", "sparse"):
                hits = await index.search("quince opening hours part 0", vectors[0], limit=5, mode=mode)
                assert {h.version for h in hits if h.doc_id == "hours"} == {version}, (n, mode)
            if n % 3 == 0:
                await asyncio.sleep(0.05)  # let a flush land between this version and the next
        assert index.flushes >= 3
    finally:
        await index.close()
