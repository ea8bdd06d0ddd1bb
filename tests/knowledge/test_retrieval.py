"""The retriever as the agent consults it: only passages close to the question become notes, a
slow or broken knowledge base costs the answer nothing but its notes, and the notes fit a budget."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np
import pytest

from voiceagent.engines.base import EmbeddingEngine
from voiceagent.knowledge.index import Chunk, Hit, KnowledgeIndex
from voiceagent.knowledge.retrieval import Retriever
from voiceagent.knowledge.settings import RetrievalSettings
from voiceagent.pipeline.replies import estimate_tokens


class Embeddings(EmbeddingEngine):
    dimensions = 2

    async def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return np.ones((len(texts), 2), dtype=np.float32) / np.sqrt(2)

    async def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("a lookup embeds only the question")


class Index(KnowledgeIndex):
    """Answers every search with ``hits``, after ``delay_s``, or raises ``error``."""

    dimensions = 2

    def __init__(self, hits: list[Hit], delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.hits, self.delay_s, self.error = hits, delay_s, error
        self.searches: list[tuple[str, int]] = []

    async def search(self, text: str, vector: np.ndarray, limit: int = 5, **_: object) -> list[Hit]:
        self.searches.append((text, limit))
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        return self.hits[:limit]

    async def replace_document(self, chunks: Sequence[Chunk], vectors: np.ndarray) -> None: ...
    async def delete_document(self, doc_id: str) -> None: ...
    async def document_chunks(self, doc_id: str) -> list[Chunk]: ...  # type: ignore[empty-body]
    async def close(self) -> None: ...


def hit(doc_id: str, text: str, similarity: float, title: str = "") -> Hit:
    return Hit(
        doc_id=doc_id, version="v1", ordinal=0, text=text, title=title, score=0.03, similarity=similarity
    )


def retriever(index: Index, **settings: object) -> Retriever:
    found = Retriever(RetrievalSettings(**settings))  # type: ignore[arg-type]
    found.attach(index, Embeddings())
    return found


async def test_only_passages_close_to_the_question_become_notes_with_their_sources() -> None:
    index = Index([
        hit("wifi", "The password is bluefrog42.", 0.9, title="Wi-Fi"),
        hit("parking", "Parking is on level -2.", 0.70),  # ranked, but under the floor
    ])  # fmt: skip
    consulted = await retriever(index, min_similarity=0.75).lookup("What is the wifi password?")
    assert consulted.outcome == "found"
    assert [(r.doc_id, r.title, r.score) for r in consulted.references] == [("wifi", "Wi-Fi", 0.9)]
    assert "- Wi-Fi: The password is bluefrog42." in consulted.notes and "level -2" not in consulted.notes
    assert index.searches == [("What is the wifi password?", 10)]  # the contrast pool


async def test_notes_only_when_the_best_passage_stands_out_from_the_rest() -> None:
    alike = [hit(f"doc{i}", f"Fact {i}.", 0.81 - i / 1000) for i in range(10)]  # small talk: all alike
    nothing = await retriever(Index(alike)).lookup("Tell me a joke")
    assert (nothing.outcome, nothing.notes) == ("nothing", "")
    standing_out = [hit("wifi", "The password is bluefrog42.", 0.86), *alike[1:]]
    found = await retriever(Index(standing_out), min_margin=0.025).lookup("What is the wifi password?")
    assert found.outcome == "found" and [r.doc_id for r in found.references] == ["wifi"]  # not the also-rans


async def test_nothing_close_enough_means_no_notes_and_the_agent_answers_as_usual() -> None:
    tiny_base = Index([hit("parking", "Parking is on level -2.", 0.8)])  # as close as e5 rates small talk
    consulted = await retriever(tiny_base).lookup("Hello there!")
    assert (consulted.outcome, consulted.notes, consulted.references) == ("nothing", "", ())
    silent = await retriever(Index([])).lookup("   ")
    assert silent.outcome == "nothing"


@pytest.mark.parametrize(
    ("index", "outcome"),
    [
        (Index([hit("wifi", "The password is bluefrog42.", 0.9)], delay_s=5.0), "timeout"),
        (Index([], error=ConnectionError("index server down")), "failed"),
    ],
    ids=["slow", "down"],
)
async def test_a_slow_or_broken_index_costs_only_the_notes(index: Index, outcome: str) -> None:
    consulted = await retriever(index, timeout_s=0.05).lookup("What is the wifi password?")
    assert (consulted.outcome, consulted.notes, consulted.references) == (outcome, "", ())
    assert consulted.seconds < 5.0  # it did not wait for the slow search


async def test_before_the_index_is_open_every_lookup_is_unavailable() -> None:
    waiting = Retriever(RetrievalSettings())
    assert (await waiting.lookup("What is the wifi password?")).outcome == "unavailable"
    disabled = retriever(Index([hit("wifi", "x", 0.9)]), enabled=False)
    assert (await disabled.lookup("What is the wifi password?")).outcome == "unavailable"


async def test_notes_stop_at_their_budget_with_the_best_passage_first() -> None:
    index = Index([hit(f"doc{i}", f"Fact number {i}. " * 20, 0.9 - i / 100) for i in range(3)])
    consulted = await retriever(index, max_notes_tokens=100).lookup("facts")
    assert "Fact number 0" in consulted.notes and "Fact number 2" not in consulted.notes
    notes = consulted.notes.removeprefix(RetrievalSettings().instructions.split("{notes}")[0])
    assert estimate_tokens(notes) <= 100


async def test_a_passage_longer_than_the_budget_is_cut_not_dropped() -> None:
    index = Index([hit("spa", "水疗中心每天上午十点开门。" * 40, 0.9)])  # one token a character
    consulted = await retriever(index, max_notes_tokens=30).lookup("水疗中心几点开门？")
    assert "水疗中心每天上午十点开门" in consulted.notes and estimate_tokens(consulted.notes) < 80


async def test_the_node_warms_the_lookup_before_calls_consult_it(caplog: pytest.LogCaptureFixture) -> None:
    """A fresh process's first embedding and search are slow (1.1 s measured, past the bound):
    the node runs one before attaching the index, and a failing one only costs a warning."""
    from voiceagent.knowledge.node import KnowledgeNode

    index = Index([])
    await KnowledgeNode._warm_up(index, Embeddings())
    assert index.searches == [("warming up", 1)]
    broken = Index([], error=OSError("index gone"))
    await KnowledgeNode._warm_up(broken, Embeddings())  # logs, does not raise
    assert "knowledge lookup warm-up failed: OSError: index gone" in caplog.text
