"""Answers from the knowledge base, as a caller hears them: how often is the spoken answer right,
and what does consulting the knowledge base cost before the first word?

The documents shipped for the tests (tests/fixtures/knowledge/docs) are ingested into Milvus Lite
with e5, as a node does. Each question of tests/fixtures/knowledge/questions.yaml that has an
`answer` (the words a right answer must say) is put to the production path: `Agent.reply` with
the `Retriever` (the default `knowledge.retrieval` settings) and the embedded SmolLM2 at
temperature 0, its text shaped by `SpokenReply` (what TTS would say). Variants:

- `notes` (the default: notes in a system message right before the question, grounded sampling:
  no repeat penalty while answering from notes);
- `in_question` (the notes inside the question's own message);
- `penalized` (the default placement, but the local server's repeat penalty kept: what answering
  from notes looked like before grounded sampling);
- `no_knowledge` (the agent without a knowledge base: the baseline).

A tool the model calls instead of notes injected up front was not measured: SmolLM2-135M does not
call tools, and a tool round costs a second LLM pass before the first word.

Relevance: `min_similarity` gates which passages become notes. Its figures: the share of the
questions whose right document clears it, and the share of off-topic questions (OFF_TOPIC, small
talk and general knowledge the documents do not cover) that still get notes.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.results import Metric, metric, percentile
from voiceagent.config import load_settings
from voiceagent.engines.base import EngineError, LLMEngine
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.engines.llm.local_server import LocalLLMServer, local_engine
from voiceagent.knowledge.chunking import ChunkingSettings, chunk_text
from voiceagent.knowledge.index import Chunk
from voiceagent.knowledge.milvus import MilvusIndex, MilvusSettings
from voiceagent.knowledge.parsing import parse_document
from voiceagent.knowledge.retrieval import Retriever
from voiceagent.knowledge.settings import RetrievalSettings
from voiceagent.pipeline.agent import Agent
from voiceagent.pipeline.knowledge import Consulted
from voiceagent.pipeline.replies import SpokenReply
from voiceagent.pipeline.settings import ConversationSettings

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "knowledge"
OFF_TOPIC = [
    "Hello, how are you today?",
    "Can you tell me a joke?",
    "What is the capital of France?",
    "How far away is the moon?",
    "Who wrote Romeo and Juliet?",
    "What's two plus two?",
    "Thanks, that's all for now.",
    "你好，今天怎么样？",
    "给我讲个笑话吧。",
    "中国的首都是哪里？",
    "一年有多少天？",
    "谢谢，再见。",
]


@dataclass
class Answer:
    question: dict[str, Any]
    text: str
    consulted: Consulted | None
    first_token_s: float

    @property
    def right(self) -> bool:
        said = self.text.lower()
        return any(str(key).lower() in said for key in _keys(self.question["answer"]))


def _keys(answer: Any) -> list[Any]:
    return answer if isinstance(answer, list) else [answer]


def load_questions() -> list[dict[str, Any]]:
    questions: list[dict[str, Any]] = yaml.safe_load((FIXTURES / "questions.yaml").read_text())
    return questions


async def build_index(index: MilvusIndex, e5: E5Embeddings, chunking: ChunkingSettings | None = None) -> int:
    chunks = 0
    for path in sorted((FIXTURES / "docs").iterdir()):
        document = parse_document(path.read_bytes(), filename=path.name)
        pieces = chunk_text(document.text, chunking)
        batch = [
            Chunk(doc_id=path.stem, version="v1", ordinal=i, text=t, title=document.title)
            for i, t in enumerate(pieces)
        ]
        await index.replace_document(batch, await e5.embed_passages(pieces))
        chunks += len(batch)
    return chunks


async def ask(
    llm: LLMEngine, settings: ConversationSettings, retriever: Retriever | None, question: dict[str, Any]
) -> Answer:
    """One question through the production path, on a fresh conversation."""
    agent = Agent(llm, settings, knowledge=retriever)
    reply = SpokenReply(settings.reply, first_clause_words=settings.first_clause_words)
    consulted: list[Consulted] = []
    started = time.perf_counter()
    first: float | None = None
    spoken: list[str] = []
    deltas = agent.reply(question["question"], on_consulted=consulted.append)
    try:
        async with contextlib.aclosing(deltas):
            async for delta in deltas:
                first = first if first is not None else time.perf_counter() - started
                spoken += reply.push(delta)
                if reply.stop_reason is not None:
                    break
    except EngineError as exc:  # the call would say its fallback line: not an answer
        print(f"  {question['question']!r}: {exc}", flush=True)
        return Answer(question, "", consulted[0] if consulted else None, float("nan"))
    spoken += reply.flush()
    lookup = consulted[0] if consulted else None
    llm_s = (first or 0.0) - (lookup.seconds if lookup else 0.0)
    return Answer(question, " ".join(spoken), lookup, llm_s)


async def _run() -> dict[str, Metric]:
    base = load_settings()
    llm_settings = base.llm.model_copy(update={"temperature": 0.0})
    questions = [q for q in load_questions() if q.get("answer")]
    server = LocalLLMServer(llm_settings.local)
    await server.start()
    grounded = local_engine(llm_settings, server)
    penalized_settings = llm_settings.model_copy(
        update={"grounded_extra_body": {"repeat_penalty": llm_settings.local.repeat_penalty}}
    )
    penalized = local_engine(penalized_settings, server)
    e5 = E5Embeddings(batch_size=8)
    out: dict[str, Metric] = {}
    with tempfile.TemporaryDirectory() as tmp:
        index = await MilvusIndex.open(MilvusSettings(uri=str(Path(tmp) / "milvus.db")), e5.dimensions)
        try:
            chunks = await build_index(index, e5)
            retriever = Retriever(RetrievalSettings())
            retriever.attach(index, e5)
            await _relevance(out, retriever, questions, index, e5)
            conversation = ConversationSettings()
            in_question = conversation.model_copy(update={"notes_placement": "question"})
            variants: dict[str, tuple[LLMEngine, ConversationSettings, Retriever | None]] = {
                "notes": (grounded, conversation, retriever),
                "in_question": (grounded, in_question, retriever),
                "penalized": (penalized, conversation, retriever),
                "no_knowledge": (grounded, conversation, None),
            }
            answers: dict[str, list[Answer]] = {}
            for name, (llm, settings, used) in variants.items():
                answers[name] = [await ask(llm, settings, used, q) for q in questions]
                for a in answers[name]:
                    mark = "+" if a.right else "-"
                    print(f"  {name} {mark} {a.question['question']} -> {a.text[:150]!r}", flush=True)
                right = sum(a.right for a in answers[name]) / len(questions)
                print(f"knowledge answers {name:12} right {right:.2f}", flush=True)
            _figures(out, answers, chunks, len(questions))
        finally:
            await index.close()
            await grounded.aclose()
            await penalized.aclose()
            e5.close()
            await server.stop()
    return out


async def _relevance(
    out: dict[str, Metric],
    retriever: Retriever,
    questions: list[dict[str, Any]],
    index: MilvusIndex,
    e5: E5Embeddings,
) -> None:
    """How well the relevance gate (min_margin over the contrast pool, min_similarity) tells the
    questions the documents answer from small talk, at the default and nearby margins."""

    async def gate(margin: float) -> tuple[float, float]:
        candidate = Retriever(retriever.settings.model_copy(update={"min_margin": margin}))
        candidate.attach(index, e5)
        kept = [
            any(r.doc_id == q["doc"] for r in (await candidate.lookup(q["question"])).references)
            for q in questions
        ]
        leaked = [(await candidate.lookup(q)).outcome == "found" for q in OFF_TOPIC]
        return sum(kept) / len(kept), sum(leaked) / len(leaked)

    for margin in (0.0, 0.015, 0.02, 0.025, 0.03):
        kept, leaked = await gate(margin)
        print(f"  min_margin {margin}: right document in the notes {kept:.2f}, off topic noted {leaked:.2f}")
    kept, leaked = await gate(retriever.settings.min_margin)
    lookups = [(await retriever.lookup(q["question"])).seconds for q in questions]
    out["knowledge_lookup_p50_s"] = metric(percentile(lookups, 50), "s", "info", "e5 query + hybrid search")
    out["knowledge_lookup_p95_s"] = metric(percentile(lookups, 95), "s", "< 0.1")
    note = f"min_margin {retriever.settings.min_margin}"
    out["knowledge_notes_from_right_doc_ratio"] = metric(kept, "ratio", ">= 0.8", note)
    out["knowledge_notes_off_topic_ratio"] = metric(leaked, "ratio", "<= 0.1", f"{len(OFF_TOPIC)} questions")


def _figures(out: dict[str, Metric], answers: dict[str, list[Answer]], chunks: int, count: int) -> None:
    def share(name: str, keep: Callable[[Answer], bool] = lambda a: True) -> float:
        kept = [a for a in answers[name] if keep(a)]
        return sum(a.right for a in kept) / max(1, len(kept))

    note = f"{count} questions (EN+ZH) over the shipped documents ({chunks} chunks), SmolLM2-135M greedy"
    out["knowledge_answer_right_ratio"] = metric(share("notes"), "ratio", "info", note)
    out["knowledge_answer_right_in_question_ratio"] = metric(share("in_question"), "ratio", "info")
    out["knowledge_answer_right_penalized_ratio"] = metric(share("penalized"), "ratio", "info")
    out["knowledge_answer_right_without_knowledge_ratio"] = metric(share("no_knowledge"), "ratio", "info")
    for language, english in (("en", True), ("zh", False)):
        in_language = share("notes", lambda a, english=english: a.question["question"].isascii() == english)
        out[f"knowledge_answer_right_{language}_ratio"] = metric(in_language, "ratio", "info")
    with_notes = [a.first_token_s for a in answers["notes"] if a.consulted and a.consulted.notes and a.text]
    without = [a.first_token_s for a in answers["no_knowledge"] if a.text]
    out["knowledge_llm_first_token_with_notes_p50_s"] = metric(percentile(with_notes, 50), "s", "info")
    out["knowledge_llm_first_token_without_notes_p50_s"] = metric(percentile(without, 50), "s", "info")


def run() -> dict[str, Metric]:
    return asyncio.run(_run())
