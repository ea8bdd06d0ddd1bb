"""The knowledge index's speed and retrieval quality: Milvus Lite (the embedded default) with the
e5 engine, as the ingestor and the call will use them.

- ingestion: chunks per second through chunking, e5 (batched) and the index;
- search at 5,000 chunks: the hybrid query alone, and with the question's embedding (what a
  turn would wait for before the LLM);
- quality: 24 written questions (12 English, 12 Chinese) over 12 short documents, each asked
  about a fact only one document holds: hit@1 and hit@3, hybrid against vector-only.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

from bench.results import Metric, metric, percentile
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.knowledge.chunking import chunk_text
from voiceagent.knowledge.index import Chunk
from voiceagent.knowledge.milvus import MilvusIndex, MilvusSettings

SCALE_CHUNKS = 5_000  # e5 embeds ~25 chunks/s on one busy core: ~3.5 min
SEARCHES = 60

DOCUMENTS = {
    "hours": "Opening hours. The restaurant opens at noon. "
    "The kitchen closes at ten on Saturdays and at nine on weekdays.",
    "parking": "Getting here. Parking is free behind the building after six. "
    "The number 12 bus stops at the door.",
    "groups": "Groups. Tables for groups of six or more need a deposit of twenty euros per person.",
    "allergies": "Allergies. Every dish can be made without nuts. "
    "Tell the waiter about allergies when you order.",
    "wine": "Wine. The house red is a Chianti from Tuscany, and a glass costs seven euros.",
    "delivery": "Delivery. We deliver within five kilometres until nine in the evening, "
    "for a fee of three euros.",
    "menu_zh": "菜单。我们有三道素菜，最受欢迎的是麻婆豆腐。所有的面包都可以做成无麸质的。",
    "dessert_zh": "甜点。甜点有提拉米苏和意式奶冻，每份二十八元。",
    "terrace_zh": "露台。露台晚上有暖气，可以坐二十个人，下雨天关闭。",
    "pets_zh": "宠物。小狗可以进入露台，但不能进入室内餐厅。",
    "payment_zh": "付款。我们接受现金、银行卡和支付宝，不接受支票。",
    "birthday_zh": "生日。过生日的客人可以免费得到一块蛋糕，需要提前一天预订。",
}
QUESTIONS = [
    ("When does the kitchen close on Saturday?", "hours"),
    ("What time do you open?", "hours"),
    ("Is parking free?", "parking"),
    ("Which bus goes to the restaurant?", "parking"),
    ("Do I need to pay a deposit for a big group?", "groups"),
    ("Can you make my dish without nuts?", "allergies"),
    ("I have an allergy, who should I tell?", "allergies"),
    ("What is the house red wine?", "wine"),
    ("How much is a glass of wine?", "wine"),
    ("Do you deliver to my home?", "delivery"),
    ("How late can I order delivery?", "delivery"),
    ("Is the bread gluten free?", "menu_zh"),
    ("你们有素菜吗？", "menu_zh"),
    ("最受欢迎的素菜是什么？", "menu_zh"),
    ("面包有无麸质的吗？", "menu_zh"),
    ("有什么甜点？", "dessert_zh"),
    ("提拉米苏多少钱？", "dessert_zh"),
    ("露台晚上冷不冷？", "terrace_zh"),
    ("露台能坐多少人？", "terrace_zh"),
    ("可以带狗吗？", "pets_zh"),
    ("能用支付宝付款吗？", "payment_zh"),
    ("你们收支票吗？", "payment_zh"),
    ("过生日有优惠吗？", "birthday_zh"),
    ("How late is the kitchen open on weekdays?", "hours"),
]  # fmt: skip


def _filler(count: int, seed: int = 7) -> list[str]:
    """Plausible other chunks (same vocabulary, other facts) to search among at scale."""
    rng = random.Random(seed)
    things = [
        "soup",
        "salad",
        "pasta",
        "cake",
        "tea",
        "coffee",
        "juice",
        "fish",
        "汤",
        "沙拉",
        "面条",
        "鱼",
        "茶",
    ]
    days = ["Monday", "Tuesday", "Friday", "Sunday", "周一", "周二", "周五", "周日"]
    return [
        f"Notice {i}. The {rng.choice(things)} of the day on {rng.choice(days)} costs {rng.randint(3, 40)} "
        f"euros, served from {rng.randint(8, 12)} until {rng.randint(1, 11)}. "
        f"今日{rng.choice(things)}{rng.randint(3, 40)}元。"
        for i in range(count)
    ]


async def _run() -> dict[str, Metric]:
    e5 = E5Embeddings()
    out: dict[str, Metric] = {}
    with tempfile.TemporaryDirectory(prefix="bench-kb-") as folder:
        index = await MilvusIndex.open(MilvusSettings(uri=str(Path(folder) / "milvus.db")), e5.dimensions)
        try:
            await _quality(out, index, e5, "at 12 documents")
            await _scale(out, index, e5)
            await _quality(out, index, e5, f"among {SCALE_CHUNKS} other chunks", suffix="_at_scale")
        finally:
            await index.close()
            e5.close()
    return out


async def _quality(
    out: dict[str, Metric], index: MilvusIndex, e5: E5Embeddings, where: str, suffix: str = ""
) -> None:
    for doc_id, text in DOCUMENTS.items():
        pieces = chunk_text(text)
        chunks = [Chunk(doc_id=doc_id, version="v1", ordinal=i, text=t) for i, t in enumerate(pieces)]
        await index.replace_document(chunks, await e5.embed_passages(pieces))
    vectors = await e5.embed_queries([q for q, _ in QUESTIONS])
    hybrid1 = hybrid3 = dense1 = 0
    for (question, doc_id), vector in zip(QUESTIONS, vectors, strict=True):
        found = [h.doc_id for h in await index.search(question, vector, limit=3)]
        dense = [h.doc_id for h in await index.search("", vector, limit=1)]
        hybrid1 += found[:1] == [doc_id]
        hybrid3 += doc_id in found
        dense1 += dense[:1] == [doc_id]
    n = len(QUESTIONS)
    note = (
        f"{n} written questions (half English, half Chinese), each about one of 12 short documents, {where}"
    )
    out[f"knowledge_hit_at_1{suffix}_ratio"] = metric(
        hybrid1 / n, "ratio", ">= 0.9", f"hybrid (e5 + BM25/jieba, RRF); {note}"
    )
    out[f"knowledge_hit_at_3{suffix}_ratio"] = metric(hybrid3 / n, "ratio", ">= 0.95", f"hybrid; {note}")
    out[f"knowledge_dense_hit_at_1{suffix}_ratio"] = metric(
        dense1 / n, "ratio", "info", f"e5 vectors alone; {note}"
    )


async def _scale(out: dict[str, Metric], index: MilvusIndex, e5: E5Embeddings) -> None:
    texts = _filler(SCALE_CHUNKS)
    started = time.perf_counter()
    for start in range(0, len(texts), 500):
        batch = texts[start : start + 500]
        chunks = [
            Chunk(doc_id=f"notice-{start}", version="v1", ordinal=i, text=t) for i, t in enumerate(batch)
        ]
        await index.replace_document(chunks, await e5.embed_passages(batch))
    elapsed = time.perf_counter() - started
    out["knowledge_ingest_chunks_per_s"] = metric(
        len(texts) / elapsed, "chunks/s", ">= 50",
        f"{len(texts)} chunks of ~130 characters, e5 (batches of 16, 1 thread) + Milvus Lite upserts of 500",
    )  # fmt: skip
    questions = [q for q, _ in QUESTIONS]
    alone: list[float] = []
    whole: list[float] = []
    for i in range(SEARCHES):
        question = questions[i % len(questions)]
        t0 = time.perf_counter()
        [vector] = await e5.embed_queries([question])
        t1 = time.perf_counter()
        await index.search(question, vector, limit=3)
        t2 = time.perf_counter()
        alone.append(t2 - t1)
        whole.append(t2 - t0)
    note = (
        f"{SCALE_CHUNKS + len(DOCUMENTS)} chunks in Milvus Lite (FLAT cosine + BM25), top 3 by RRF, "
        f"{SEARCHES} searches"
    )
    out["knowledge_search_p50_s"] = metric(
        percentile(alone, 50), "s", "< 0.05", f"hybrid query alone; {note}"
    )
    out["knowledge_search_p95_s"] = metric(percentile(alone, 95), "s", "< 0.1", f"hybrid query alone; {note}")
    out["knowledge_retrieval_p50_s"] = metric(
        percentile(whole, 50), "s", "< 0.1", f"question embedded (e5) + hybrid query: a turn's wait; {note}"
    )
    out["knowledge_retrieval_p95_s"] = metric(
        percentile(whole, 95), "s", "< 0.15", f"as knowledge_retrieval_p50_s; {note}"
    )


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:45} {value.value:>10} {value.unit:8} goal {value.goal}")
