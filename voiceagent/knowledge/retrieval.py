"""The knowledge base as the agent consults it: the caller's words → the best passages → notes
handed to the model before it answers, with their sources.

Hybrid ranking orders the passages, but its scores are ranks, not relevance: a question the
base knows nothing about still gets a "best" passage. So a passage must also be close to the
question by meaning (e5 cosine ≥ ``min_similarity``) to be used; when none is, the model gets no
notes and answers as it would without a knowledge base (small talk stays small talk).

A lookup never holds a turn up for long and never fails it: slower than ``timeout_s`` or
failing, the agent answers without knowledge, and the outcome says why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from voiceagent.engines.base import EmbeddingEngine
from voiceagent.knowledge.index import Hit, KnowledgeIndex
from voiceagent.knowledge.settings import RetrievalSettings
from voiceagent.pipeline.knowledge import Consulted, LookupOutcome
from voiceagent.store.records import Reference

log = logging.getLogger(__name__)


class Retriever:
    """Usable once :meth:`attach` hands it the index and the embeddings (both come up after the
    node starts); until then every lookup is ``unavailable``."""

    def __init__(self, settings: RetrievalSettings, clock: Callable[[], float] = time.perf_counter) -> None:
        self.settings = settings
        self.clock = clock
        self._index: KnowledgeIndex | None = None
        self._embeddings: EmbeddingEngine | None = None

    def attach(self, index: KnowledgeIndex, embeddings: EmbeddingEngine) -> None:
        self._index, self._embeddings = index, embeddings

    def detach(self) -> None:
        self._index = self._embeddings = None

    async def lookup(self, question: str) -> Consulted:
        started = self.clock()

        def outcome(kind: LookupOutcome, hits: Sequence[Hit] = ()) -> Consulted:
            references = tuple(
                Reference(
                    doc_id=h.doc_id, title=h.title, ordinal=h.ordinal, score=_similarity(h), text=h.text
                )
                for h in hits
            )
            return Consulted(
                outcome=kind, notes=self._notes(hits), references=references, seconds=self.clock() - started
            )

        index, embeddings = self._index, self._embeddings
        if not self.settings.enabled or index is None or embeddings is None:
            return outcome("unavailable")
        if not question.strip():
            return outcome("nothing")
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                [vector] = await embeddings.embed_queries([question])
                hits = await index.search(question, vector, limit=self.settings.top_k)
        except TimeoutError:
            log.warning("knowledge lookup slower than %.1f s: answering without it", self.settings.timeout_s)
            return outcome("timeout")
        except Exception as exc:
            log.warning("knowledge lookup failed (%s: %s): answering without it", type(exc).__name__, exc)
            return outcome("failed")
        relevant = [h for h in hits if _similarity(h) >= self.settings.min_similarity]
        return outcome("found" if relevant else "nothing", relevant)

    def _notes(self, hits: Sequence[Hit]) -> str:
        if not hits:
            return ""
        budget, lines = self.settings.max_context_chars, list[str]()
        for hit in hits:
            line = f"- {hit.title}: {hit.text}" if hit.title else f"- {hit.text}"
            if lines and len(line) > budget:
                break
            lines.append(line[:budget])
            budget -= len(line) + 1
        return self.settings.instructions.format(notes="\n".join(lines))


def _similarity(hit: Hit) -> float:
    return hit.similarity if hit.similarity is not None else 0.0
