"""The knowledge index on Milvus: Milvus Lite in a file by default, a Milvus server by URI.

Why Milvus: one client (pymilvus) and one schema serve both an embedded index (Milvus Lite: no
server, a file under the node's data folder) and a cluster (Milvus Standalone or Distributed:
``uri`` + ``token``), and it does what the knowledge base needs in the engine itself: dense
vectors, BM25 full text computed from the stored text (a server-side function, so nothing
tokenizes in Python), Chinese through the jieba analyzer, and hybrid search with reciprocal rank
fusion. Milvus Lite locks its folder: several nodes on one machine go through one
``milvus-lite server`` (or a Milvus server), never each open the file.

pymilvus blocks, so every call runs on the index's own worker thread, one at a time.

Not flushed after each change, on purpose for now: BM25 statistics are per segment, and a segment
per document made BM25 rank nonsense (the bus question found the opening hours). Unflushed rows
are searched without an index, though: a hybrid search over 5,000 fresh chunks takes 0.53 s p50
(`bench knowledge`; 22 ms over 5,000 flushed ones). Batching flushes with compaction is next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from voiceagent.knowledge.index import Chunk, Hit, KnowledgeIndex, check_document

T = TypeVar("T")
_MAX_TEXT = 8192  # characters of one chunk (Milvus VARCHAR length is in bytes: 3 per CJK char)
_RRF_K = 60  # the usual reciprocal rank fusion constant: 1 / (60 + rank)


class MilvusSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # A path is Milvus Lite in that file (its folder is locked by the one process using it); an
    # http(s) URL is a Milvus server, or a `milvus-lite server` shared by the nodes on a machine.
    uri: str = ".data/knowledge/milvus.db"
    token: SecretStr | None = None
    collection: str = Field("knowledge", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
    # Chinese is cut into words by jieba; English words pass through it as words too.
    analyzer: dict[str, Any] = Field(default_factory=lambda: {"tokenizer": "jieba"})


def _literal(value: str) -> str:
    """A string as a Milvus filter literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class MilvusIndex(KnowledgeIndex):
    """Open with ``await MilvusIndex.open(settings, dimensions)``."""

    def __init__(
        self, client: Any, settings: MilvusSettings, dimensions: int, executor: ThreadPoolExecutor
    ) -> None:
        self._client = client
        self.settings = settings
        self.dimensions = dimensions
        self._executor = executor  # one thread: calls on the client never overlap

    @classmethod
    async def open(cls, settings: MilvusSettings, dimensions: int) -> MilvusIndex:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="milvus")
        loop = asyncio.get_running_loop()
        try:
            client = await loop.run_in_executor(executor, _connect, settings, dimensions)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(client, settings, dimensions, executor)

    async def _run(self, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, lambda: call(*args, **kwargs))

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
        await self._run(self._client.upsert, name, rows)
        stale = f"doc_id == {_literal(doc_id)} and version != {_literal(version)}"
        await self._run(self._client.delete, name, filter=stale)

    async def delete_document(self, doc_id: str) -> None:
        await self._run(self._client.delete, self.settings.collection, filter=f"doc_id == {_literal(doc_id)}")

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

    async def search(self, text: str, vector: np.ndarray, limit: int = 5) -> list[Hit]:
        from pymilvus import AnnSearchRequest, RRFRanker

        if vector.shape != (self.dimensions,):
            raise ValueError(f"query vector is {vector.shape}, expected ({self.dimensions},)")
        requests = [
            AnnSearchRequest(
                data=[vector.astype(np.float32).tolist()], anns_field="dense", param={}, limit=limit * 2
            )
        ]
        if text.strip():
            requests.append(AnnSearchRequest(data=[text], anns_field="sparse", param={}, limit=limit * 2))
        found = await self._run(
            self._client.hybrid_search,
            self.settings.collection,
            requests,
            ranker=RRFRanker(_RRF_K),
            limit=limit,
            output_fields=["doc_id", "version", "ordinal", "title", "text", "dense"],
        )
        query = vector.astype(np.float32)
        return [
            Hit(
                **{k: hit["entity"][k] for k in Chunk.model_fields},
                score=float(hit["distance"]),
                similarity=float(np.dot(np.asarray(hit["entity"]["dense"], dtype=np.float32), query)),
            )
            for hit in found[0]
        ]

    async def close(self) -> None:
        try:
            await self._run(self._client.close)
        finally:
            self._executor.shutdown(wait=False)


def _connect(settings: MilvusSettings, dimensions: int) -> Any:
    """The client, with the collection created if it is missing (and checked if it is not)."""
    from pymilvus import DataType, Function, FunctionType, MilvusClient

    uri = settings.uri
    if "://" not in uri:
        Path(uri).expanduser().parent.mkdir(parents=True, exist_ok=True)
        uri = str(Path(uri).expanduser())
    token = settings.token.get_secret_value() if settings.token else ""
    client = MilvusClient(uri=uri, token=token)
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
        return client
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
    return client
