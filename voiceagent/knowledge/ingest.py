"""``knowledge.changed`` events in, an up-to-date index out: read → parse → chunk → embed → index.

The handler is what an ``EventConsumer`` on the knowledge topic runs (its ``concurrency`` bounds
how many documents are ingested at once). Its answers to the consumer:
- returns: done (indexed, deleted, or already indexed at that version: re-ingesting is a no-op);
- raises ``EventUnusable``: the document can never be ingested as it is (unsupported, not text,
  empty, too large, missing): its state is ``failed`` with the reason, the event goes to the
  dead-letter topic with it, and the pipeline goes on;
- raises ``RetryLater`` (the index or the embeddings failed): the state is ``failed`` with
  ``index_unavailable`` / ``embeddings_failed`` until a redelivery succeeds; after the consumer's
  ``max_attempts`` the event is dead-lettered (the document stays as it was in the index).

Documents handed in by the sources (``store:<doc_id>``, see submissions.py) are read from the
shared store, and what is ingested is the store's *current* version, not the event's: RocketMQ may
deliver an older change after a newer one, and two nodes may ingest two changes of one document
at once. After writing the index the store is checked again, and a document that changed
meanwhile is ingested again, so the index converges on the newest version whatever the order.

An event naming a file (someone else's publisher) is read from that path; its version is the
event's checksum, or the content's SHA-256, so the same content twice is indexed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import NoReturn

from voiceagent.engines.base import EmbeddingEngine
from voiceagent.events.consumer import EventUnusable, RetryLater
from voiceagent.events.envelope import KnowledgeChangedEvent
from voiceagent.knowledge.chunking import ChunkingSettings, chunk_text
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.index import Chunk, KnowledgeIndex
from voiceagent.knowledge.parsing import MAX_DOCUMENT_BYTES, DocumentRefused, ParsedDocument, parse_document
from voiceagent.knowledge.submissions import STORE_SOURCE, SourceDocuments

log = logging.getLogger(__name__)

SourceReader = Callable[[str], Awaitable[bytes]]


class SourceMissing(LookupError):
    """The event names a source that is not there (any more)."""


async def read_file(source: str) -> bytes:
    """The default reader: ``source`` is a path (or a file:// URL) on this machine."""
    path = Path(source.removeprefix("file://"))
    try:
        return await asyncio.to_thread(path.read_bytes)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise SourceMissing(f"{source}: {exc.strerror or exc}") from None


class Ingestor:
    def __init__(
        self,
        index: KnowledgeIndex,
        embeddings: EmbeddingEngine,
        states: DocumentStates,
        *,
        read_source: SourceReader = read_file,
        sources: SourceDocuments | None = None,
        chunking: ChunkingSettings | None = None,
        max_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self.index = index
        self.embeddings = embeddings
        self.states = states
        self.read_source = read_source
        self.sources = sources or SourceDocuments(states.database)
        self.chunking = chunking or ChunkingSettings()
        self.max_bytes = max_bytes

    async def handle(self, event: KnowledgeChangedEvent) -> None:
        payload = event.payload
        if payload.source.startswith(STORE_SOURCE):
            await self._sync_from_store(payload.document_id)
            return
        doc_id = payload.document_id
        if payload.change == "deleted":
            await self._delete(doc_id, payload.checksum or "-")
            return
        try:
            data = await self.read_source(payload.source)
        except SourceMissing as exc:
            await self._refuse(doc_id, payload.checksum or "-", "missing", str(exc))
        version = payload.checksum or hashlib.sha256(data).hexdigest()[:32]
        if await self._indexed_at(doc_id, version):
            return
        await self._ingest(doc_id, version, data, payload.source, Path(payload.source).name)

    async def _sync_from_store(self, doc_id: str) -> None:
        """Make the index hold what the store holds for ``doc_id`` now (see the module's note)."""
        first = True
        while True:
            current = await self.sources.get(doc_id)
            if current is None:
                await self._refuse(doc_id, "-", "missing", "no such document in the store")
            if current.deleted or current.content is None:
                await self._delete(doc_id, current.version)
            elif first and await self._indexed_at(doc_id, current.version):
                return
            else:
                source = f"{STORE_SOURCE}{doc_id}"
                await self._ingest(doc_id, current.version, current.content, source, current.filename)
            after = await self.sources.get(doc_id)
            if after is None or (after.version, after.deleted) == (current.version, current.deleted):
                return
            log.info("knowledge: %s changed while it was ingested; again at %s", doc_id, after.version)
            first = False

    async def _indexed_at(self, doc_id: str, version: str) -> bool:
        if await self.states.indexed_at(doc_id, version):
            log.info("knowledge: %s already indexed at %s", doc_id, version)
            return True
        return False

    @contextlib.asynccontextmanager
    async def _failing_as(self, doc_id: str, version: str, reason: str) -> AsyncIterator[None]:
        """An engine's failure: stored as the document's state, and the event left for later."""
        try:
            yield
        except Exception as exc:
            detail = f"{type(exc).__name__}: {exc}"
            await self.states.failed(doc_id, version, reason, detail)
            raise RetryLater(f"{doc_id}: {reason}: {detail}") from exc

    async def _delete(self, doc_id: str, version: str) -> None:
        async with self._failing_as(doc_id, version, "index_unavailable"):
            await self.index.delete_document(doc_id)
        await self.states.deleted(doc_id, version)
        log.info("knowledge: %s deleted", doc_id)

    async def _ingest(self, doc_id: str, version: str, data: bytes, source: str, filename: str) -> None:
        await self.states.queued(doc_id, version, source)
        try:
            # Parsing and chunking a document of megabytes is CPU work: off the event loop.
            document, pieces = await asyncio.to_thread(self._prepare, data, filename)
        except DocumentRefused as exc:
            await self._replaced_by_nothing(doc_id, version)
            await self._refuse(doc_id, version, exc.reason, exc.detail)
        if not pieces:
            await self._replaced_by_nothing(doc_id, version)
            await self._refuse(doc_id, version, "empty", "no sentence in it")
        chunks = [
            Chunk(doc_id=doc_id, version=version, ordinal=i, text=text, title=document.title)
            for i, text in enumerate(pieces)
        ]
        async with self._failing_as(doc_id, version, "embeddings_failed"):
            vectors = await self.embeddings.embed_passages([chunk.text for chunk in chunks])
        async with self._failing_as(doc_id, version, "index_unavailable"):
            await self.index.replace_document(chunks, vectors)
        await self.states.indexed(doc_id, version, len(chunks), document.title)
        log.info("knowledge: %s indexed at %s, %d chunk(s)", doc_id, version, len(chunks))

    async def _replaced_by_nothing(self, doc_id: str, version: str) -> None:
        """A replacement that cannot be used still replaces: the owner withdrew the old text, and
        answering from it would be answering from what they replaced."""
        async with self._failing_as(doc_id, version, "index_unavailable"):
            await self.index.delete_document(doc_id)

    def _prepare(self, data: bytes, filename: str) -> tuple[ParsedDocument, list[str]]:
        document = parse_document(data, filename=filename, max_bytes=self.max_bytes)
        return document, chunk_text(document.text, self.chunking)

    async def _refuse(self, doc_id: str, version: str, reason: str, detail: str) -> NoReturn:
        await self.states.failed(doc_id, version, reason, detail)
        log.warning("knowledge: %s refused (%s: %s)", doc_id, reason, detail)
        raise EventUnusable(reason, detail)
