"""The knowledge index on Milvus: Milvus Lite in a file by default, a Milvus server by URI.

Why Milvus: one client (pymilvus) and one schema serve both an embedded index (Milvus Lite: no
server, a file under the node's data folder) and a cluster (Milvus Standalone or Distributed:
``uri`` + ``token``), and it does what the knowledge base needs in the engine itself: dense
vectors, BM25 full text computed from the stored text (a server-side function, so nothing
tokenizes in Python), Chinese through the jieba analyzer, and hybrid search with reciprocal rank
fusion. Milvus Lite locks its folder: several nodes on one machine go through one
``milvus-lite server`` (or a Milvus server), never each open the file.

pymilvus blocks, so every call runs on the index's own worker thread, one at a time, in order: a
search made after ``replace_document`` returned runs after its upsert and its deletion of the
other versions, and the collection is Strong, so it sees the new version and none of the old,
flushed or not (a flush changes how fast rows are searched, never which).

Flushing (Milvus Lite only: a server seals, indexes and compacts segments itself, and rate-limits
flush calls). Milvus Lite searches unflushed rows by scanning them in Python at every search,
~0.25 ms per row for a hybrid search: 10,000 unflushed chunks took 1.65 s per search (e5 side
0.48 s, BM25 1.35 s), the same chunks flushed 37 ms; 1,000 unflushed rows add ~0.27 s. But its
BM25 statistics (document count, IDF, average length) are per segment, unflushed rows being one
more, and scores are compared across segments as they are, so chunks among few rows score low
next to a big segment's (a Milvus server sums the statistics of all a shard's segments: its IDF
oracle). So a background task flushes in batches: once ``flush_rows`` (128) rows are unflushed
(a burst: at once), else ``flush_after_s`` (30 s) after the first of them (a trickle of edits
shares a segment instead of one per document), then searches once after a big flush so that the
new segment's BM25 postings are built before a caller's search needs them. Milvus Lite merges
segments itself after a flush (four of a size; ``client.compact`` is a no-op there), so segments
grow with the knowledge base; the newest rows stay in small ones until then.

Fusion, measured on the shipped questions (tests/fixtures/knowledge: 21 English, 21 Chinese, over
87 chunks of <= 250 characters) among 10,000 filler chunks; recall@5 en/zh, then hit@1 en/zh:

  where the documents' chunks are   e5 alone     BM25 alone   Milvus' RRF  RRF here
  in one segment with the rest      19/19 14/12  13/19 10/12  18/20 13/11  18/20 13/11
  a segment of their own (batched)  19/19 14/12  10/17  8/12  17/20 10/12  19/20 14/12
  a segment each (flush per doc)    19/19 14/12  10/13  8/9   17/16 10/8   19/17 14/9

Both fuse each side's best 2 x limit by RRF (k 60); they differ in ties, which are common: a
chunk only one side found ties with one only the other found at the same rank. Milvus (Lite)
orders those by primary key (``filler-...`` before ``restaurant_hours-...``), so the fusion is
done here, the embedding's order deciding (both searches in one call on the worker: +5-10 ms at
10,000 chunks). More candidates a side did not help: x3 within one question, x4 one less in
places, x6 up to three less (BM25's long tail; with the earlier 800-character chunks x4 gained two
at hit@1 where BM25 was sound). A weighted fusion (WeightedRanker 0.5/0.5) found less (recall
15/19, 13/19, 13/16) and normalises scores differently on Milvus Lite and a server; RRF uses
ranks only. And batched flushes beat one per document for BM25 (10/17 against 10/13). With
chunks this short, BM25 adds little to e5 on these questions; it is there for names, numbers and
codes.

As it runs (`bench knowledge`: production settings, 10,000 chunks): a hybrid search p50 36 ms,
p95 52 ms, right after a 1,000-row burst p50 45 ms, p95 60 ms; a changed document searchable with
its new content and none of its old 0.9 s p50, 1.3 s p95 after the file changed (e5 most of it).
Milvus Lite's limit: its per-search bookkeeping is Python over every row, so at 100,000 chunks a
hybrid search takes 0.52 s p50, 0.98 s p95; past some 20,000 chunks use a Milvus server (the same
code, ``uri`` + ``token``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from voiceagent.knowledge.index import Chunk, Hit, KnowledgeIndex, SearchMode, check_document

log = logging.getLogger(__name__)

T = TypeVar("T")
_MAX_TEXT = 8192  # characters of one chunk (Milvus VARCHAR length is in bytes: 3 per CJK char)
_RRF_K = 60  # the usual reciprocal rank fusion constant: 1 / (60 + rank)
_CANDIDATES = 2  # a hybrid search fuses each side's best limit x this (see the module's note)
_WARM_ROWS = 500  # a flush of at least this many rows is followed by a warm-up search
_RETRY_S = 5.0  # after a failed flush
_CLOSE_WAIT_S = 10.0  # for the worker to finish what it is doing before the client closes
_FIELDS = ["doc_id", "version", "ordinal", "title", "text", "dense"]


class MilvusSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A path is Milvus Lite in that file (its folder is locked by the one process using it); an
    # http(s) URL is a Milvus server, or a `milvus-lite server` shared by the nodes on a machine.
    uri: str = ".data/knowledge/milvus.db"
    token: SecretStr | None = None
    collection: str = Field("knowledge", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    # Chinese is cut into words by jieba; English words pass through it as words too.
    analyzer: dict[str, Any] = Field(default_factory=lambda: {"tokenizer": "jieba"})
    # Milvus Lite only (a server seals and indexes on its own): unflushed rows are flushed once
    # there are this many (each costs every search ~0.25 ms)...
    flush_rows: int = Field(128, ge=1)
    # ...or once the oldest of them is this old, so a few stay unflushed for a while at most.
    flush_after_s: float = Field(30.0, gt=0)


def _literal(value: str) -> str:
    """A string as a Milvus filter literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class MilvusIndex(KnowledgeIndex):
    """Open with ``await MilvusIndex.open(settings, dimensions)``; ``close()`` it."""

    def __init__(
        self,
        client: Any,
        settings: MilvusSettings,
        dimensions: int,
        executor: ThreadPoolExecutor,
        *,
        lite: bool = False,
    ) -> None:
        self._client = client
        self.settings = settings
        self.dimensions = dimensions
        self._executor = executor  # one thread: calls on the client never overlap
        self.lite = lite
        self._unflushed = 0  # rows (and deletions) written since the last flush
        self._oldest_unflushed = 0.0  # monotonic time of the first of them
        self._written = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self.flushes = 0  # done so far (Milvus Lite)

    @classmethod
    async def open(cls, settings: MilvusSettings, dimensions: int) -> MilvusIndex:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus")
        loop = asyncio.get_running_loop()
        try:
            client, lite = await loop.run_in_executor(executor, _connect, settings, dimensions)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        index = cls(client, settings, dimensions, executor, lite=lite)
        if lite:
            index._flusher = asyncio.create_task(index._flush_in_batches(), name="milvus-flush")
        return index

    @property
    def unflushed(self) -> int:
        """Rows (and deletions) written since the last flush: searched without an index."""
        return self._unflushed

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: call(*args, **kwargs))

    async def _write(self, rows: int, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A write, counted for the flusher. Counted as it is queued: a flush queued after it
        (the worker runs calls in order) is then sure to include it."""
        if not self._unflushed:
            self._oldest_unflushed = time.monotonic()
        self._unflushed += rows
        self._written.set()
        return await self._run(call, *args, **kwargs)

    async def replace_document(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        doc_id, version = check_document(chunks, vectors, self.dimensions)
        too_long = [c.ordinal for c in chunks if len(c.text.encode()) > _MAX_TEXT]
        if too_long:
            raise ValueError(f"chunk(s) {too_long} over {_MAX_TEXT} bytes")
        rows = [
            {
                "id": f"{doc_id}#{chunk.ordinal}@{version}",
                "doc_id": doc_id,
                "version": version,
                "ordinal": chunk.ordinal,
                "title": chunk.title,
                "text": chunk.text,
                "dense": vector.astype(np.float32).tolist(),
            }
            for chunk, vector in zip(chunks, vectors, strict=True)
        ]
        name = self.settings.collection
        await self._write(len(rows), self._client.upsert, name, rows)
        stale = f"doc_id == {_literal(doc_id)} and version != {_literal(version)}"
        await self._write(1, self._client.delete, name, filter=stale)

    async def delete_document(self, doc_id: str) -> None:
        await self._write(
            1, self._client.delete, self.settings.collection, filter=f"doc_id == {_literal(doc_id)}"
        )

    async def document_chunks(self, doc_id: str) -> list[Chunk]:
        rows = await self._run(
            self._client.query,
            self.settings.collection,
            filter=f"doc_id == {_literal(doc_id)}",
            output_fields=["doc_id", "version", "ordinal", "title", "text"],
        )
        return sorted(
            (Chunk(**{k: row[k] for k in Chunk.model_fields}) for row in rows), key=lambda c: c.ordinal
        )

    async def search(
        self, text: str, vector: np.ndarray, limit: int = 5, *, mode: SearchMode = "hybrid"
    ) -> list[Hit]:
        if vector.shape != (self.dimensions,):
            raise ValueError(f"query vector is {vector.shape}, expected ({self.dimensions},)")
        query = vector.astype(np.float32)
        words = bool(text.strip())
        if mode == "sparse" and not words:
            return []
        if mode == "hybrid" and words:
            # Both sides in one call on the worker (one state of the index), fused here.
            dense, sparse = await self._run(self._both_sides, text, query, limit * _CANDIDATES)
            found = _fuse(dense, sparse, limit)
        else:
            found = await self._run(self._one_side, text if mode == "sparse" else query, limit)
        return [
            Hit(
                **{k: hit["entity"][k] for k in Chunk.model_fields},
                score=float(hit["distance"]),
                similarity=float(np.dot(np.asarray(hit["entity"]["dense"], dtype=np.float32), query)),
            )
            for hit in found
        ]

    def _one_side(self, query: str | np.ndarray, limit: int) -> list[dict[str, Any]]:
        """On the worker thread: BM25 for words, the embedding for a vector."""
        if isinstance(query, str):
            data, side = [query], "sparse"
        else:
            data, side = [query.tolist()], "dense"
        found = self._client.search(
            self.settings.collection, data=data, anns_field=side, limit=limit, output_fields=_FIELDS
        )
        return list(found[0])

    def _both_sides(self, text: str, query: np.ndarray, limit: int) -> tuple[list[Any], list[Any]]:
        return self._one_side(query, limit), self._one_side(text, limit)

    async def _flush_in_batches(self) -> None:
        """Milvus Lite: flush once ``flush_rows`` rows are unflushed, or ``flush_after_s`` after
        the first of them, whichever comes first (see the module's note for why)."""
        while True:
            if not self._unflushed:
                self._written.clear()
                await self._written.wait()
                continue
            due = self._oldest_unflushed + self.settings.flush_after_s - time.monotonic()
            if self._unflushed < self.settings.flush_rows and due > 0:
                self._written.clear()  # a write wakes it to count again
                try:
                    async with asyncio.timeout(due):
                        await self._written.wait()
                except TimeoutError:
                    pass
                continue
            rows, oldest = self._unflushed, self._oldest_unflushed
            self._unflushed = 0
            try:
                await self._run(self._flush_and_warm, rows >= _WARM_ROWS)
                self.flushes += 1
            except Exception as exc:  # the index still answers (slower): try again later
                log.warning("knowledge index: flush failed (%s: %s); retrying", type(exc).__name__, exc)
                self._unflushed += rows
                self._oldest_unflushed = oldest
                await asyncio.sleep(_RETRY_S)

    def _flush_and_warm(self, warm: bool) -> None:
        """On the worker thread: flush, then (``warm``) search once, so that Milvus Lite builds a
        big new segment's BM25 postings now (it does at a segment's first search), not in a
        caller's search (1,000 rows: +0.1-0.5 s; a warm-up search costs one search)."""
        name = self.settings.collection
        self._client.flush(name)
        if warm:
            self._client.search(name, data=["warm"], anns_field="sparse", limit=1, output_fields=["doc_id"])

    async def close(self) -> None:
        """Stops the flusher (unflushed rows are safe in Milvus' log), then closes the client
        once the worker is done with the call in hand, waiting for it ``_CLOSE_WAIT_S`` at most."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        try:
            async with asyncio.timeout(_CLOSE_WAIT_S):
                await self._run(self._client.close)
        except TimeoutError:
            log.warning("knowledge index: the worker is still busy; closing without waiting")
        finally:
            self._executor.shutdown(wait=False)


def _fuse(dense: list[dict[str, Any]], sparse: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Reciprocal rank fusion of the two sides' hits (``distance`` becomes the fused score). A
    chunk only one side found ties with one only the other found at the same rank, which is
    common; the embedding's order decides then (Milvus' own fusion orders ties by primary key)."""
    unfound = (len(dense), len(sparse))  # the rank of a chunk a side did not find
    ranks: dict[Any, list[int]] = {}
    hits: dict[Any, dict[str, Any]] = {}
    for side, found in enumerate((dense, sparse)):
        for rank, hit in enumerate(found):
            ranks.setdefault(hit["id"], list(unfound))[side] = rank
            hits.setdefault(hit["id"], hit)

    def score(pk: Any) -> float:
        return sum(
            1 / (_RRF_K + 1 + rank) for rank, last in zip(ranks[pk], unfound, strict=True) if rank < last
        )

    best = sorted(ranks, key=lambda pk: (-score(pk), ranks[pk]))[:limit]
    return [{**hits[pk], "distance": score(pk)} for pk in best]


class _UnimplementedByMilvusLite(logging.Filter):
    """pymilvus 3 asks the embedded Milvus Lite for a timestamp it does not serve, falls back by
    itself, and the in-process gRPC server logs each refusal as an ERROR with a traceback: noise
    that reads like a failure at every start. Only that refusal is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NotImplementedError) and "AllocTimestamp" in _last_frame(record))


def _last_frame(record: logging.LogRecord) -> str:
    traceback = record.exc_info[2] if record.exc_info else None
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    return traceback.tb_frame.f_code.co_name if traceback is not None else ""


def _quiet_milvus_lite() -> None:
    grpc_server = logging.getLogger("grpc._server")
    if not any(isinstance(f, _UnimplementedByMilvusLite) for f in grpc_server.filters):
        grpc_server.addFilter(_UnimplementedByMilvusLite())
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # which CPU build it tried, at INFO


def _connect(settings: MilvusSettings, dimensions: int) -> tuple[Any, bool]:
    """The client, with the collection created if it is missing (and checked if it is not), and
    whether the server is Milvus Lite."""
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    _quiet_milvus_lite()
    uri = settings.uri
    if "://" not in uri:
        Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        uri = str(Path(uri).expanduser())
    token = settings.token.get_secret_value() if settings.token else ""
    client = MilvusClient(uri=uri, token=token)
    lite = str(client.get_server_version()).startswith("milvus_lite")
    name = settings.collection
    if client.has_collection(name):
        fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
        dim = int(fields.get("dense", {}).get("params", {}).get("dim", -1))
        if dim != dimensions:
            client.close()
            raise ValueError(
                f"collection {name!r} at {settings.uri} holds {dim}-d vectors, not {dimensions}-d"
            )
        client.load_collection(name)
        return client, lite
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.VARCHAR, max_length=512, is_primary=True)
    schema.add_field("doc_id", DataType.VARCHAR, max_length=256)
    schema.add_field("version", DataType.VARCHAR, max_length=128)
    schema.add_field("ordinal", DataType.INT64)
    schema.add_field("title", DataType.VARCHAR, max_length=1024)
    schema.add_field(
        "text",
        DataType.VARCHAR,
        max_length=_MAX_TEXT,
        enable_analyzer=True,
        analyzer_params=settings.analyzer,
    )
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dimensions)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
    )
    index = client.prepare_index_params()
    index.add_index("dense", index_type="FLAT", metric_type="COSINE")
    index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
    return client, lite
