"""The knowledge base's settings: its index, how documents are cut, where they come from, and
how the call retrieves from it."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from voiceagent.knowledge.chunking import ChunkingSettings
from voiceagent.knowledge.milvus import MilvusSettings
from voiceagent.knowledge.parsing import MAX_DOCUMENT_BYTES

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestSettings(_Section):
    enabled: bool = True  # this node consumes knowledge.changed events (or run `voiceagent ingest`)
    group: str = "voiceagent-ingest"  # every ingesting node shares it: each change is ingested once
    concurrency: int = Field(2, ge=1)  # documents ingested at once (they share one embeddings engine)
    invisible_s: float = Field(60.0, gt=0)
    max_attempts: int = Field(5, ge=1)  # an index that stays down this many deliveries: dead-lettered


class FolderSourceSettings(_Section):
    """A folder whose files are the documents: added, changed and deleted files become events."""

    path: str | None = None  # None: no folder is watched
    patterns: tuple[str, ...] = ("*.md", "*.markdown", "*.txt", "*.html", "*.htm")
    debounce_s: float = Field(0.3, ge=0)  # changes this close together are one change (editors save twice)


class TableSourceSettings(_Section):
    """A table of a source database whose rows are documents, captured by triggers into a change
    table (no rescans): each changed row becomes one event."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")  # the source's name: doc ids are <name>:<key>
    url: str  # SQLAlchemy async URL: sqlite+aiosqlite:///path.db or postgresql+asyncpg://...
    table: str
    key: str = "id"
    title_column: str | None = None
    text_columns: tuple[str, ...] = Field(min_length=1)
    poll_s: float = Field(1.0, gt=0)

    @field_validator("table", "key", "title_column")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        if value is not None and not _IDENTIFIER.match(value):
            raise ValueError(f"{value!r} is not a plain SQL identifier")
        return value

    @field_validator("text_columns")
    @classmethod
    def _identifiers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for column in value:
            cls._identifier(column)
        return value


class RetrievalSettings(_Section):
    """What the agent is told before it answers: the best chunks for the caller's words."""

    enabled: bool = True
    # Passages handed to the LLM (and shown as sources). One, for the embedded model: it answered
    # as often right from one as from three (bench knowledge_answers), and every passage is read
    # before the first word (~1.2 s for three on a busy core). More for a larger model.
    top_k: int = Field(1, ge=1, le=20)
    # Whether the base knows the answer: the best passage must stand out from the next ones (its
    # e5 cosine this much above their mean, over `contrast_pool` passages) and clear a floor. e5
    # rates everything alike (0.75-0.87 for "tell me a joke"), so no floor alone separates them.
    min_margin: float = Field(0.025, ge=0, le=1)
    contrast_pool: int = Field(10, ge=2, le=50)
    min_similarity: float = Field(0.75, ge=0, le=1)
    # With under 4 passages to contrast (a new, tiny base) the best must be this close instead:
    # questions a passage answers scored 0.90-0.92 against it, small talk 0.76-0.80.
    min_similarity_alone: float = Field(0.84, ge=0, le=1)
    # Notes are read before the first word: ~1,000 English characters, or 250 Chinese ones (the
    # local model reads Chinese byte by byte: 1,500 characters of it took over 10 s on one core).
    max_notes_tokens: int = Field(250, ge=20)
    timeout_s: float = Field(1.0, gt=0)  # slower than this: answer without knowledge rather than late
    instructions: str = (
        "Answer from these notes when they cover the question; do not make up facts they do not "
        "state.\nNotes:\n{notes}"
    )


class KnowledgeSettings(_Section):
    enabled: bool = True
    milvus: MilvusSettings = MilvusSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    max_document_bytes: int = Field(MAX_DOCUMENT_BYTES, ge=1)
    ingest: IngestSettings = IngestSettings()
    folder: FolderSourceSettings = FolderSourceSettings()
    tables: tuple[TableSourceSettings, ...] = ()
    retrieval: RetrievalSettings = RetrievalSettings()
