"""Embedded LLM server: start time, time to first token and decode throughput at 1, 2 and 4 calls.

Goes through the same engine the voice pipeline uses (openai SDK, streaming), so the figures
include HTTP and SSE parsing. A streamed text delta from llama.cpp is one token. Throughput is the
aggregate over the concurrent streams: the first-token wait is what a caller hears as silence,
tokens/s is whether TTS can be kept fed.
"""

from __future__ import annotations

import asyncio
import time

from bench.results import Metric, metric, percentile
from voiceagent.config import load_settings
from voiceagent.engines.base import ChatMessage
from voiceagent.engines.llm.local_server import LocalLLMServer, local_engine
from voiceagent.engines.llm.openai_compat import OpenAICompatibleLLM

CONCURRENCY_ROUNDS = {1: 6, 2: 4, 4: 3}
MAX_TOKENS = 128
QUESTIONS = (
    "Can I move my appointment to Friday afternoon?",
    "What should I bring to my first visit?",
    "Do you take walk-in patients on Saturdays?",
    "How long does a cleaning usually take?",
)
PERSONA = "You are Ava, the receptionist of Acme Dental. Answer in two or three friendly sentences."


async def _one(engine: OpenAICompatibleLLM, question: str) -> tuple[float, int]:
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    messages = [ChatMessage(role="system", content=PERSONA), ChatMessage(role="user", content=question)]
    async for delta in engine.stream(messages, max_tokens=MAX_TOKENS):
        if delta.text:
            first = first if first is not None else time.perf_counter() - started
            tokens += 1
    return (first if first is not None else time.perf_counter() - started), tokens


async def _run() -> dict[str, Metric]:
    settings = load_settings().llm
    local = settings.local.model_copy(update={"parallel": max(settings.local.parallel, 4)})
    server = LocalLLMServer(local)
    await server.start()
    assert server.start_s is not None
    setup = f"{local.threads} threads, {local.parallel} slots, max_tokens {MAX_TOKENS}"
    results = {
        "llm_server_start_s": metric(
            server.start_s, "s", "< 5", f"child process up and /health OK, {local.model_path}"
        )
    }
    engine = local_engine(settings.model_copy(update={"local": local}), server)
    try:
        await _one(engine, "Hello")  # warm-up: first-use allocations
        for concurrency, rounds in CONCURRENCY_ROUNDS.items():
            ttfts: list[float] = []
            tokens = 0
            wall = 0.0
            for round_ in range(rounds):
                questions = [QUESTIONS[(round_ + i) % len(QUESTIONS)] for i in range(concurrency)]
                started = time.perf_counter()
                outcomes = await asyncio.gather(*(_one(engine, q) for q in questions))
                wall += time.perf_counter() - started
                ttfts += [ttft for ttft, _ in outcomes]
                tokens += sum(n for _, n in outcomes)
            results[f"llm_ttft_c{concurrency}_s"] = metric(
                percentile(ttfts, 50), "s", "< 0.5", f"p50 of {len(ttfts)}, {setup}"
            )
            results[f"llm_tokens_per_s_c{concurrency}"] = metric(
                tokens / wall, "tok/s", "> 30", f"all {concurrency} streams together, {setup}"
            )
    finally:
        await engine.aclose()
        await server.stop()
    return results


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for name, m in run().items():
        print(f"{name:28} {m.value:10.4g} {m.unit:6} {m.note}")
