"""How well an analyzer labels utterances: per-intent precision, recall and F1 on a labelled set.

Any :class:`IntentAnalyzer` is measured through its public ``analyze``, each utterance posing as
its own user, so what is scored is exactly what the store would receive. ``none`` is scored too,
but the macro averages cover the intents only: calling chit-chat "refund" costs refund precision,
which is the error outreach pays for (a prompt about something the user never asked).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from voiceagent.outreach.analysis.base import IntentAnalyzer, Utterance

NONE = "none"


class EvalItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = Field(min_length=1)
    intent: str  # an intent name, or "none"
    lang: str
    split: Literal["tune", "test"] = "test"


class ClassScores(BaseModel):
    precision: float
    recall: float
    f1: float
    support: int  # utterances labelled with this class
    predicted: int  # utterances the analyzer gave this class


class EvalScores(BaseModel):
    n: int
    accuracy: float  # over every class, none included
    macro_precision: float  # over the intents present in the set
    macro_recall: float
    macro_f1: float
    per_intent: dict[str, ClassScores]  # the intents, then "none"


class EvalReport(EvalScores):
    analyzer: str
    min_confidence: float
    seconds: float  # wall time of analyze() over the whole set
    utterances_per_s: float
    by_language: dict[str, EvalScores]
    mistakes: list[tuple[str, str, str]]  # (text, expected, predicted)


def load_eval_set(path: Path, split: str | None = None) -> list[EvalItem]:
    """The ``utterances`` of a YAML eval set, optionally only one split."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    items = TypeAdapter(list[EvalItem]).validate_python(data["utterances"])
    return [item for item in items if split is None or item.split == split]


async def evaluate(
    analyzer: IntentAnalyzer,
    items: Sequence[EvalItem],
    intents: Sequence[str],
    *,
    min_confidence: float = 0.5,
) -> EvalReport:
    """Run ``analyzer`` over ``items`` once and score it; ``min_confidence`` is the threshold the
    analysis job applies (settings.outreach.analysis.min_confidence)."""
    known = [*intents, NONE]
    unknown = sorted({item.intent for item in items} - set(known))
    if unknown:
        raise ValueError(f"eval set uses intents not configured: {', '.join(unknown)}")
    utterances = [
        Utterance(turn_id=i + 1, user_id=f"eval-{i}", text=item.text) for i, item in enumerate(items)
    ]
    started = time.perf_counter()
    findings = await analyzer.analyze(utterances, min_confidence=min_confidence)
    seconds = time.perf_counter() - started
    best: dict[str, tuple[float, str]] = {}
    for finding in findings:
        if finding.confidence > best.get(finding.user_id, (-1.0, NONE))[0]:
            best[finding.user_id] = (finding.confidence, finding.intent)
    predicted = [best.get(u.user_id, (0.0, NONE))[1] for u in utterances]
    expected = [item.intent for item in items]
    overall = _scores(expected, predicted, intents)
    languages = sorted({item.lang for item in items})
    return EvalReport(
        **overall.model_dump(),
        analyzer=analyzer.name,
        min_confidence=min_confidence,
        seconds=seconds,
        utterances_per_s=len(items) / seconds if seconds > 0 else 0.0,
        by_language={
            lang: _scores(
                [e for e, item in zip(expected, items, strict=True) if item.lang == lang],
                [p for p, item in zip(predicted, items, strict=True) if item.lang == lang],
                intents,
            )
            for lang in languages
        },
        mistakes=[(item.text, e, p) for item, e, p in zip(items, expected, predicted, strict=True) if e != p],
    )


def _scores(expected: Sequence[str], predicted: Sequence[str], intents: Sequence[str]) -> EvalScores:
    per_class: dict[str, ClassScores] = {}
    for name in [*intents, NONE]:
        tp = sum(1 for e, p in zip(expected, predicted, strict=True) if e == name and p == name)
        support = sum(1 for e in expected if e == name)
        chosen = sum(1 for p in predicted if p == name)
        precision = tp / chosen if chosen else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = ClassScores(
            precision=precision, recall=recall, f1=f1, support=support, predicted=chosen
        )
    present = [per_class[name] for name in intents if per_class[name].support]
    correct = sum(1 for e, p in zip(expected, predicted, strict=True) if e == p)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    return EvalScores(
        n=len(expected),
        accuracy=correct / len(expected) if expected else 0.0,
        macro_precision=mean([s.precision for s in present]),
        macro_recall=mean([s.recall for s in present]),
        macro_f1=mean([s.f1 for s in present]),
        per_intent=per_class,
    )
