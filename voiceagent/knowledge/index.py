"""The index behind the knowledge base: a small interface, so the engine can change.

A document is replaced as a whole: its new chunks go in first, then every chunk of another
version goes, so a search never finds the document missing, and never finds a stale chunk once
``replace_document`` has returned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Chunk(BaseModel):
    """One piece of one version of a document, as indexed."""

    model_config = ConfigDict(frozen=True)

    doc_id: str = Field(min_length=1, max_length=256)
    version: str = Field(min_length=1, max_length=128)
    ordinal: int = Field(ge=0, description="position in the document")
    text: str = Field(min_length=1)
    title: str = ""


class Hit(BaseModel):
    """A chunk found for a question, best first; ``score`` orders hits of one search only."""

    model_config = ConfigDict(frozen=True)

    doc_id: str
    version: str
    ordinal: int
    text: str
    title: str
    score: float
    # Cosine of the chunk's embedding to the question's: relevance on an absolute scale, which a
    # fused score (ranks) is not. None when the engine cannot say.
    similarity: float | None = None


# hybrid: both, fused by rank; dense: the embedding alone; sparse: the words alone (BM25).
SearchMode = Literal["hybrid", "dense", "sparse"]


class KnowledgeIndex(ABC):
    """Vector + full-text (BM25) search over chunks, ranked together (reciprocal rank fusion)."""

    dimensions: int

    @abstractmethod
    async def replace_document(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None:
        """Make ``chunks`` (one document, one version; ``vectors`` row by row) the document's
        whole content. Doing it again with the same version changes nothing."""

    @abstractmethod
    async def delete_document(self, doc_id: str) -> None:
        """Remove every chunk of the document (nothing if there is none)."""

    @abstractmethod
    async def search(
        self, text: str, vector: np.ndarray, limit: int = 5, *, mode: SearchMode = "hybrid"
    ) -> list[Hit]:
        """Chunks for a question: its words (BM25) and its embedding, fused; ``mode`` picks one
        side alone (to compare them). Never a chunk of a version replaced before the call."""

    @abstractmethod
    async def document_chunks(self, doc_id: str) -> list[Chunk]:
        """What the index holds for the document, in order."""

    @abstractmethod
    async def close(self) -> None: ...


def check_document(chunks: Sequence[Chunk], vectors: np.ndarray, dimensions: int) -> tuple[str, str]:
    """(doc_id, version) of a well-formed replacement, or ValueError saying what is wrong."""
    if not chunks:
        raise ValueError("a document needs at least one chunk (delete it instead)")
    documents = {(c.doc_id, c.version) for c in chunks}
    if len(documents) != 1:
        raise ValueError(f"chunks of {len(documents)} document versions in one replacement")
    if len({c.ordinal for c in chunks}) != len(chunks):
        raise ValueError("two chunks share an ordinal")
    if vectors.shape != (len(chunks), dimensions):
        raise ValueError(f"vectors are {vectors.shape}, expected ({len(chunks)}, {dimensions})")
    [document] = documents
    return document
