"""Every source (the HTTP API, a watched folder, a source table) hands documents in here: the
content is kept in the shared store as the document's current version, then a
``knowledge.changed`` event says so on the bus.

Why the store and not a path in the event: any node's ingestor can read it (a folder or an upload
lives on one machine), and it is the one place that says which version is current. RocketMQ may
deliver an older change after a newer one, or two nodes may ingest two changes of one document at
once; the ingestor always ingests what the store holds *now* and checks again after writing, so
the index ends at the newest version whatever the order (see ingest.py).

The idempotency key is ``<doc_id>@<version>`` (``…:deleted`` for a delete): the same content
handed in twice is one change.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from voiceagent.events.envelope import KnowledgeChangedEvent, KnowledgeChangedPayload, utcnow
from voiceagent.knowledge.documents import DocumentStates
from voiceagent.knowledge.parsing import DocumentRefused
from voiceagent.store.database import Database
from voiceagent.store.models import KnowledgeSource
from voiceagent.store.records import UtcDatetime

log = logging.getLogger(__name__)

STORE_SOURCE = "store:"  # an event whose source starts so reads the document from the store
Publish = Callable[[KnowledgeChangedEvent], Awaitable[object]]


def version_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()[:32]


def idempotency_key(doc_id: str, version: str, deleted: bool = False) -> str:
    """``<doc_id>@<version>[:deleted]``; a doc id too long for the key's 128 characters is hashed."""
    suffix = f"@{version}" + (":deleted" if deleted else "")
    if len(doc_id) + len(suffix) > 128:
        doc_id = "sha256:" + hashlib.sha256(doc_id.encode()).hexdigest()[:40]
    return doc_id + suffix


class SourceRecord(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    doc_id: str
    version: str
    filename: str
    origin: str
    content: bytes | None
    deleted: bool
    updated_at: UtcDatetime


class SourceDocuments:
    """The ``knowledge_sources`` table: one row per document, its latest submitted content."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.clock = clock

    async def get(self, doc_id: str) -> SourceRecord | None:
        async with self.database.sessions() as session:
            row = await session.get(KnowledgeSource, doc_id)
            return None if row is None else SourceRecord.model_validate(row)

    async def ids(self, origin_prefix: str) -> set[str]:
        """Live (not deleted) documents whose origin starts with ``origin_prefix``."""
        query = select(KnowledgeSource.doc_id).where(
            KnowledgeSource.origin.startswith(origin_prefix, autoescape=True),
            KnowledgeSource.deleted.is_(False),
        )
        async with self.database.sessions() as session:
            return set((await session.scalars(query)).all())

    async def put(self, doc_id: str, version: str, filename: str, origin: str, content: bytes) -> None:
        await self._set(
            doc_id,
            version=version,
            filename=filename[:300],
            origin=origin[:2000],
            content=content,
            deleted=False,
        )

    async def mark_deleted(self, doc_id: str) -> SourceRecord | None:
        """The row as it was (None: never submitted); its content is dropped."""
        async with self.database.sessions.begin() as session:
            row = await session.get(KnowledgeSource, doc_id, with_for_update=True)
            if row is None:
                return None
            before = SourceRecord.model_validate(row)
            row.deleted, row.content, row.updated_at = True, None, self.clock()
            return before

    async def _set(self, doc_id: str, **values: object) -> None:
        def new() -> KnowledgeSource:
            return KnowledgeSource(doc_id=doc_id)

        await self.database.set_row(KnowledgeSource, doc_id, new, **values, updated_at=self.clock())


class Submitted(BaseModel):
    """What a source's change became: the event that carries it, and whether the content was
    already the current version. Unchanged content already indexed is not published again (no
    ``event_id``); unchanged content not yet indexed is, which heals a lost publish."""

    model_config = ConfigDict(frozen=True)

    doc_id: str
    version: str
    change: Literal["added", "updated", "deleted"]
    event_id: str | None
    idempotency_key: str
    unchanged: bool = False


class DocumentSubmitter:
    def __init__(
        self, sources: SourceDocuments, states: DocumentStates, publish: Publish, *, max_bytes: int
    ) -> None:
        self.sources = sources
        self.states = states
        self.publish = publish
        self.max_bytes = max_bytes

    async def submit(self, doc_id: str, content: bytes, *, filename: str, origin: str) -> Submitted:
        """Keep ``content`` as the document's current version and publish the change. A document
        over the size limit is refused here (``DocumentRefused``), before anything is kept; every
        other judgement (format, encoding, emptiness) is the ingestor's, which records it."""
        if not doc_id or len(doc_id) > 256:
            raise ValueError("a document id is 1 to 256 characters")
        if len(content) > self.max_bytes:
            refused = DocumentRefused("too_large", f"{len(content)} bytes > {self.max_bytes}")
            await self.states.failed(doc_id, "-", refused.reason, refused.detail)
            raise refused
        version = version_of(content)
        current = await self.sources.get(doc_id)
        unchanged = current is not None and not current.deleted and current.version == version
        change: Literal["added", "updated"] = "updated" if current and not current.deleted else "added"
        if unchanged and await self.states.indexed_at(doc_id, version):
            key = idempotency_key(doc_id, version)
            return Submitted(
                doc_id=doc_id,
                version=version,
                change=change,
                event_id=None,
                idempotency_key=key,
                unchanged=True,
            )
        await self.sources.put(doc_id, version, filename, origin, content)
        return await self._publish(doc_id, version, change, unchanged=unchanged)

    async def delete(self, doc_id: str) -> Submitted | None:
        """None: no such document was ever submitted."""
        before = await self.sources.mark_deleted(doc_id)
        if before is None:
            return None
        return await self._publish(doc_id, before.version, "deleted", unchanged=before.deleted)

    async def _publish(
        self, doc_id: str, version: str, change: Literal["added", "updated", "deleted"], *, unchanged: bool
    ) -> Submitted:
        key = idempotency_key(doc_id, version, deleted=change == "deleted")
        payload = KnowledgeChangedPayload(
            document_id=doc_id, change=change, source=f"{STORE_SOURCE}{doc_id}", checksum=version
        )
        event = KnowledgeChangedEvent(idempotency_key=key, payload=payload)
        if change != "deleted":
            await self.states.queued(doc_id, version, payload.source)
        try:
            await self.publish(event)
        except Exception as exc:
            # Kept in the store but not announced: the state says so; submitting again heals it.
            await self.states.failed(doc_id, version, "publish_failed", f"{type(exc).__name__}: {exc}")
            raise
        log.info("knowledge: %s %s at %s (event %s)", doc_id, change, version, event.id)
        return Submitted(
            doc_id=doc_id,
            version=version,
            change=change,
            event_id=event.id,
            idempotency_key=key,
            unchanged=unchanged,
        )
