"""The knowledge base as the agent consults it: the caller's words → the best passages → notes
handed to the model before it answers, with their sources.

Hybrid ranking orders the passages, but its scores are ranks, not relevance: a question the
base knows nothing about still gets a "best" passage. Nor does e5's cosine say it alone: it rates
"tell me a joke" 0.75-0.87 against a hotel's documents, as high as many real questions. What
separates them (bench knowledge_answers) is contrast: a passage that answers the question stands
out from the next best ones, while for small talk all are alike. So notes are given only when the
best passage's cosine is ``min_margin`` above the mean of the rest of the ``contrast_pool`` best
(and above a ``min_similarity`` floor), and they are the passages within ``min_margin`` of
the best; otherwise the model gets no notes and answers as it would
without a knowledge base (small talk stays small talk).

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
from voiceagent.pipeline.replies import estimate_tokens
from voiceagent.store.records import Reference

log = logging.getLogger(__name__)


class Retriever:
    """Usable once :meth:`attach` hands it the index and the embeddings (both come up after the
    node starts); until then every lookup is ``unavailable``."""

    def __init__(self, settings: RetrievalSettings, clock: Callable[[], float] = time.perf_counter) -> None:
        self.settings = settings
        self.clock = clock
        self._index: KnowledgeIndex | None = None
        self.embeddings: EmbeddingEngine | None = None

    def attach(self, index: KnowledgeIndex, embeddings: EmbeddingEngine) -> None:
        self._index, self.embeddings = index, embeddings

    def detach(self) -> None:
        self._index = self.embeddings = None

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

        index, embeddings = self._index, self.embeddings
        if not self.settings.enabled or index is None or embeddings is None:
            return outcome("unavailable")
        if not question.strip():
            return outcome("nothing")
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                [vector] = await embeddings.embed_queries([question])
                pool = max(self.settings.top_k, self.settings.contrast_pool)
                hits = await index.search(question, vector, limit=pool)
        except TimeoutError:
            log.warning("knowledge lookup slower than %.1f s: answering without it", self.settings.timeout_s)
            return outcome("timeout")
        except Exception as exc:
            log.warning("knowledge lookup failed (%s: %s): answering without it", type(exc).__name__, exc)
            return outcome("failed")
        relevant = self._relevant(hits)
        return outcome("found" if relevant else "nothing", relevant)

    def _relevant(self, hits: Sequence[Hit]) -> list[Hit]:
        if not hits:
            return []
        ranked = sorted((_similarity(h) for h in hits), reverse=True)
        best, rest = ranked[0], ranked[1:]
        if len(rest) < 3:  # too few to contrast: only a close passage counts
            if best < self.settings.min_similarity_alone:
                return []
        elif best - sum(rest) / len(rest) < self.settings.min_margin:
            return []  # nothing stands out: the base does not know this
        # The passages that stand out with the best one, in the hybrid ranking's order.
        floor = max(self.settings.min_similarity, best - self.settings.min_margin)
        return [h for h in hits if _similarity(h) >= floor][: self.settings.top_k]

    def _notes(self, hits: Sequence[Hit]) -> str:
        if not hits:
            return ""
        budget, lines = self.settings.max_notes_tokens, list[str]()
        for hit in hits:
            line = f"- {hit.title}: {hit.text}" if hit.title else f"- {hit.text}"
            cost = estimate_tokens(line)
            if lines and cost > budget:
                break
            lines.append(_first_tokens(line, budget) if cost > budget else line)
            budget -= cost
        return self.settings.instructions.format(notes="\n".join(lines))


def _similarity(hit: Hit) -> float:
    return hit.similarity if hit.similarity is not None else 0.0


def _first_tokens(text: str, tokens: int) -> str:
    """The longest start of ``text`` of at most ``tokens`` (estimated), not cutting a word."""
    low, high = 0, len(text)
    while low < high:  # the estimate only grows with the text
        middle = (low + high + 1) // 2
        low, high = (middle, high) if estimate_tokens(text[:middle]) <= tokens else (low, middle - 1)
    cut = text[:low]
    if low < len(text) and text[low].isascii() and text[low].isalnum() and " " in cut:
        cut = cut.rsplit(" ", 1)[0]  # mid-word: back to the last whole one
    return cut
