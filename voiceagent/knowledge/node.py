"""The knowledge base in one process (a server node, or `voiceagent ingest`): the sources that
hand documents in, the ingestion workers on the knowledge topic, the index, and the retriever the
calls consult.

Two phases, because the index needs the embeddings' size and the ingestor the model: the sources
start with the node (an upload is accepted, kept and published while the models still load; the
broker holds the events), the index and the workers once the engines are up. An index server
that is down does not stop the node: the index is opened again every few seconds, the calls
answer without knowledge meanwhile, and the events wait on the broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from voiceagent.engines.base import EmbeddingEngine
from voiceagent.events import AnyEvent, EventBus, EventConsumer, EventUnusable, KnowledgeChangedEvent
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.index import KnowledgeIndex
from voiceagent.knowledge.ingest import Ingestor
from voiceagent.knowledge.milvus import MilvusIndex
from voiceagent.knowledge.retrieval import Retriever
from voiceagent.knowledge.settings import KnowledgeSettings
from voiceagent.knowledge.sources.folder import FolderSource
from voiceagent.knowledge.sources.tables import TableSource
from voiceagent.knowledge.submissions import DocumentSubmitter, SourceDocuments
from voiceagent.store.database import Database

log = logging.getLogger(__name__)
INDEX_RETRY_S = 5.0
OPEN_TIMEOUT_S = 60.0  # a server that accepts the connection and never answers


class IndexUnavailable(RuntimeError):
    """The index is not open (yet): the models are loading, or its server is down."""


class KnowledgeNode:
    def __init__(
        self, settings: KnowledgeSettings, *, bus: EventBus, database: Database, with_sources: bool = True
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.states = DocumentStates(database)
        self.sources = SourceDocuments(database)
        self.submitter = DocumentSubmitter(
            self.sources, self.states, bus.publish, max_bytes=settings.max_document_bytes
        )
        self.retriever = Retriever(settings.retrieval)
        self.index: KnowledgeIndex | None = None
        self.index_error: str | None = "not opened yet"
        self.consumer: EventConsumer | None = None
        self.folder: FolderSource | None = None
        self.tables: list[TableSource] = []
        if with_sources and settings.enabled:
            if settings.folder.path:
                self.folder = FolderSource(settings.folder, self.submitter, self.sources)
            self.tables = [TableSource(t, self.submitter, database) for t in settings.tables]
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """The sources: they only need the store and the bus."""
        if not self.settings.enabled:
            return
        if self.folder is not None:
            await self.folder.start()
        for table in self.tables:
            await table.start()

    def start_index(self, embeddings: EmbeddingEngine) -> None:
        """Once the engines are up: open the index (retrying while its server is down), then
        consult it in calls and ingest into it."""
        if self.settings.enabled:
            self._spawn(self._open_index(embeddings), "knowledge-index")

    async def _open_index(self, embeddings: EmbeddingEngine) -> None:
        while not self._stop.is_set():
            try:
                opening = MilvusIndex.open(self.settings.milvus, embeddings.dimensions)
                self.index = await asyncio.wait_for(opening, OPEN_TIMEOUT_S)
                self.index_error = None
                break
            except Exception as exc:
                self.index_error = f"{type(exc).__name__}: {exc}"
                log.error("knowledge index at %s not open: %s", self.settings.milvus.uri, self.index_error)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), INDEX_RETRY_S)
        else:
            return
        await self._warm_up(self.index, embeddings)
        log.info("knowledge index open at %s", self.settings.milvus.uri)
        self.retriever.attach(self.index, embeddings)
        if self.settings.ingest.enabled:
            await self._ingest(self.index, embeddings)

    @staticmethod
    async def _warm_up(index: KnowledgeIndex, embeddings: EmbeddingEngine) -> None:
        """One lookup before any call's: the first embedding and the first search of a fresh
        process are slow (measured 1.1 s, past the lookup's bound, so the first caller of a new
        node was answered a second late and without notes). Until it is done calls go without."""
        started = time.perf_counter()
        try:
            [vector] = await embeddings.embed_queries(["warming up"])
            await index.search("warming up", vector, limit=1)
        except Exception as exc:  # the lookup itself will say what is wrong, call by call
            log.warning("knowledge lookup warm-up failed: %s: %s", type(exc).__name__, exc)
            return
        log.info("knowledge lookup warmed up in %.2f s", time.perf_counter() - started)

    async def _ingest(self, index: KnowledgeIndex, embeddings: EmbeddingEngine) -> None:
        ingest = self.settings.ingest
        # The bus tags each event with its type: other tags on the topic are someone else's.
        subscription = await self.bus.subscribe_until_stopped(
            ingest.group, ["knowledge"], "knowledge.changed", self._stop
        )
        if subscription is None:
            return
        ingestor = Ingestor(
            index,
            embeddings,
            self.states,
            sources=self.sources,
            chunking=self.settings.chunking,
            max_bytes=self.settings.max_document_bytes,
        )
        self.consumer = EventConsumer(
            subscription,
            _only_knowledge_changes(ingestor),
            dedup=False,  # the ingestor's version check is the dedup, and it survives restarts
            max_attempts=ingest.max_attempts,
            invisible_s=ingest.invisible_s,
            wait_s=2.0,
            concurrency=ingest.concurrency,
        )
        try:
            await self.consumer.run(self._stop)
        finally:
            with contextlib.suppress(Exception):
                await subscription.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def probe(self) -> str:
        """For /readyz: the index answers."""
        if self.index is None:
            raise IndexUnavailable(self.index_error or "not open")
        return f"index open at {self.settings.milvus.uri}"

    async def stop(self) -> None:
        self._stop.set()
        if self.folder is not None:
            await self.folder.stop()
        for table in self.tables:
            await table.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.retriever.detach()
        if self.index is not None:
            await self.index.close()
            self.index = None


def _only_knowledge_changes(ingestor: Ingestor) -> Callable[[AnyEvent], Awaitable[None]]:
    async def handle(event: AnyEvent) -> None:
        if not isinstance(event, KnowledgeChangedEvent):  # published to the wrong topic
            raise EventUnusable("wrong_topic", f"{event.type} on the knowledge topic")
        await ingestor.handle(event)

    return handle
