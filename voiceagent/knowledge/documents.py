"""Where each document's ingestion stands, in the shared store: queued, indexed (with its chunk
count), failed (with the reason), or deleted. One row per document, for its latest version."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import select

from voiceagent.events.envelope import utcnow
from voiceagent.store.database import Database
from voiceagent.store.models import KnowledgeDocument
from voiceagent.store.records import UtcDatetime

DocumentStateName = Literal["queued", "indexed", "failed", "deleted"]


class DocumentState(BaseModel):
    model_config = ConfigDict(from_attributes=True, frozen=True)

    doc_id: str
    version: str
    state: DocumentStateName
    title: str
    source: str
    chunks: int
    reason: str | None
    detail: str | None
    updated_at: UtcDatetime


class DocumentStates:
    """One short transaction per change; the same on SQLite and PostgreSQL."""

    def __init__(self, database: Database, clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.clock = clock

    async def get(self, doc_id: str) -> DocumentState | None:
        async with self.database.sessions() as session:
            row = await session.get(KnowledgeDocument, doc_id)
            return None if row is None else DocumentState.model_validate(row)

    async def indexed_at(self, doc_id: str, version: str) -> bool:
        """The index already holds ``version`` of the document: ingesting or publishing it again
        would change nothing."""
        state = await self.get(doc_id)
        return state is not None and state.state == "indexed" and state.version == version

    async def list(self, state: DocumentStateName | None = None, limit: int = 100) -> list[DocumentState]:
        query = select(KnowledgeDocument).order_by(KnowledgeDocument.updated_at.desc()).limit(limit)
        if state is not None:
            query = query.where(KnowledgeDocument.state == state)
        async with self.database.sessions() as session:
            return [DocumentState.model_validate(row) for row in (await session.scalars(query)).all()]

    async def queued(self, doc_id: str, version: str, source: str) -> None:
        await self._set(
            doc_id, version=version, state="queued", source=source[:2000], reason=None, detail=None
        )

    async def indexed(self, doc_id: str, version: str, chunks: int, title: str) -> None:
        await self._set(
            doc_id,
            version=version,
            state="indexed",
            chunks=chunks,
            title=title[:300],
            reason=None,
            detail=None,
        )

    async def failed(self, doc_id: str, version: str, reason: str, detail: str) -> None:
        await self._set(
            doc_id, version=version, state="failed", chunks=0, reason=reason[:32], detail=detail[:300]
        )

    async def deleted(self, doc_id: str, version: str) -> None:
        await self._set(doc_id, version=version, state="deleted", chunks=0, reason=None, detail=None)

    async def _set(self, doc_id: str, **values: object) -> None:
        def new() -> KnowledgeDocument:
            return KnowledgeDocument(doc_id=doc_id, title="", source="", chunks=0)

        await self.database.set_row(KnowledgeDocument, doc_id, new, **values, updated_at=self.clock())
