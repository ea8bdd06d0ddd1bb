"""Offline intent classification on multilingual-e5 embeddings: no LLM, English and Chinese alike.

Each intent is the centroid of its example utterances (embedded as e5 *queries*, like the
utterances: utterance-to-example is a symmetric similarity) blended with its description (a
*passage*: it describes what is asked). "None" is a class of its own, scored against built-in
greetings, thanks and small talk: with only a few examples per intent, similarity to the nearest
intent alone separated chit-chat poorly (e5 cosines sit in a narrow 0.75-0.9 band), while
similarity to such anchors separated it well. The five scores go through a softmax whose
temperature was fitted for calibration, so ``confidence`` reads as a probability.

The defaults were chosen on the ``tune`` split of tests/outreach/intent_eval.yaml (68 utterances)
and measured on the held-out ``test`` split; see tests/outreach/test_analysis.py for the numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import numpy as np

from voiceagent.engines.base import EmbeddingEngine
from voiceagent.outreach.analysis.base import IntentAnalyzer, Utterance, UtteranceLabel
from voiceagent.outreach.intents import Intents

# What callers say that asks for nothing: the "none" class. Generic on purpose (not the eval set's
# phrasings); extend it with deployment-specific small talk through ``none_examples``.
NONE_EXAMPLES: tuple[str, ...] = (
    "Hello.",
    "Hi, how's it going?",
    "Thank you.",
    "Okay.",
    "Yes.",
    "No.",
    "Goodbye.",
    "Sorry, I didn't catch that.",
    "Just a moment.",
    "Who am I talking to?",
    "Nice weather today.",
    "你好。",
    "谢谢。",
    "好的。",
    "是的。",
    "不用了。",
    "再见。",
    "没听清。",
    "稍等一下。",
    "你是谁？",
    "今天天气不错。",
)
# Tuned on the tune split (macro F1 over a grid); see the module docstring.
DESCRIPTION_WEIGHT = 0.5  # intent score = (1 - w) * example centroid + w * description
NONE_TOP_K = 2  # "none" score = mean of the k nearest none examples ...
NONE_MARGIN = 0.04  # ... minus this: chit-chat must be clearly nearer the anchors than any intent
TEMPERATURE = 0.01  # softmax temperature, fitted by maximum likelihood on the tune split
CHUNK = 256  # utterances embedded per engine call: bounded memory, progress between calls


class EmbeddingIntentAnalyzer(IntentAnalyzer):
    """Nearest-centroid classifier with a "none" class; anchors are embedded once, lazily."""

    name = "embedding"

    def __init__(
        self,
        engine: EmbeddingEngine,
        intents: Intents,
        *,
        none_examples: Sequence[str] = NONE_EXAMPLES,
        description_weight: float = DESCRIPTION_WEIGHT,
        none_top_k: int = NONE_TOP_K,
        none_margin: float = NONE_MARGIN,
        temperature: float = TEMPERATURE,
    ) -> None:
        super().__init__()
        if not 0 <= description_weight <= 1:
            raise ValueError(f"description_weight must be within 0..1, not {description_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        if not none_examples or none_top_k < 1:
            raise ValueError("need at least one none example and none_top_k >= 1")
        self.engine = engine
        self.intents = intents
        self.names = [intent.name for intent in intents.intents]
        self.none_examples = list(none_examples)
        self.description_weight = description_weight
        self.none_top_k = min(none_top_k, len(self.none_examples))
        self.none_margin = none_margin
        self.temperature = temperature
        self._centroids: np.ndarray | None = None  # (intents, dim)
        self._descriptions: np.ndarray | None = None  # (intents, dim)
        self._none: np.ndarray | None = None  # (none examples, dim)
        self._lock = asyncio.Lock()

    async def prepare(self) -> None:
        """Embed the intents' examples, descriptions and the none examples (once)."""
        async with self._lock:
            if self._centroids is not None:
                return
            examples: list[str] = []
            owner: list[int] = []
            for index, intent in enumerate(self.intents.intents):
                for utterances in intent.examples.values():
                    for text in utterances:
                        if text.strip():
                            examples.append(text)
                            owner.append(index)
            rows = await self.engine.embed_queries(examples)
            owners = np.asarray(owner)
            centroids = np.stack([rows[owners == i].mean(axis=0) for i in range(len(self.names))])
            self._descriptions = await self.engine.embed_passages(
                [intent.description for intent in self.intents.intents]
            )
            self._none = await self.engine.embed_queries(self.none_examples)
            self._centroids = _unit(centroids)

    async def label(self, utterances: Sequence[Utterance]) -> list[UtteranceLabel]:
        await self.prepare()
        spoken = [u for u in utterances if u.text.strip()]
        labels: list[UtteranceLabel] = []
        for start in range(0, len(spoken), CHUNK):
            chunk = spoken[start : start + CHUNK]
            rows = await self.engine.embed_queries([u.text.strip() for u in chunk])
            probabilities = self.probabilities(rows)
            best = probabilities.argmax(axis=1)
            for utterance, choice, row in zip(chunk, best, probabilities, strict=True):
                labels.append(
                    UtteranceLabel(
                        turn_id=utterance.turn_id,
                        user_id=utterance.user_id,
                        intent=self.names[choice] if choice < len(self.names) else None,
                        confidence=float(row[choice]),
                    )
                )
        return labels

    def probabilities(self, rows: np.ndarray) -> np.ndarray:
        """(utterances, intents + 1) class probabilities for embedded utterances; the last column
        is "none". Cheap numpy (a few small matrix products), fine on the event loop."""
        assert self._centroids is not None and self._descriptions is not None and self._none is not None
        w = self.description_weight
        intent_scores = (1 - w) * (rows @ self._centroids.T) + w * (rows @ self._descriptions.T)
        nearest_none = np.sort(rows @ self._none.T, axis=1)[:, -self.none_top_k :]
        none_score = nearest_none.mean(axis=1, keepdims=True) - self.none_margin
        logits = np.hstack([intent_scores, none_score]) / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        probabilities: np.ndarray = weights / weights.sum(axis=1, keepdims=True)
        return probabilities


def _unit(rows: np.ndarray) -> np.ndarray:
    normalised: np.ndarray = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return normalised
