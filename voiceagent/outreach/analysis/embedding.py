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

Texts are labelled once: callers repeat the same short answers ("yes", "thank you", "where is my
order") across thousands of calls, and embedding is the whole cost (~55-60 utterances/s on one
thread), so labels are cached by the normalised text (stripped, whitespace collapsed, casefolded).
What is embedded is the first spelling seen (whitespace collapsed, which e5's tokenizer ignores
anyway), so a text seen for the first time gets the label it would get without the cache; a
later variant differing only in case takes that label. Case does move e5 a little (cosine ~0.99
between "Where is my order?" and "where is my order?", and a score near ``min_confidence`` can
cross it), but on the eval set written Whisper-style (capitals, punctuation) embedding it
casefolded or as written scored within a few utterances of each other, and ASR spells a phrase
the same way nearly every time. The cache is an LRU of ``CACHE_SIZE`` entries: a run over
1,000,000 turns with ~3,000 distinct texts embeds ~3,000 (about a minute, instead of five hours),
while free-form speech, mostly distinct, cannot grow it without bound. An entry is the class and
its probability, not the embedding (a few dozen bytes instead of 1.5 KB).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
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
CACHE_SIZE = 50_000  # labelled texts kept (LRU); see the module docstring


def normalised(text: str) -> str:
    """What the cache keys on: stripped, whitespace collapsed, casefolded."""
    return " ".join(text.split()).casefold()


class EmbeddingIntentAnalyzer(IntentAnalyzer):
    """Nearest-centroid classifier with a "none" class; anchors are embedded once, lazily, and
    each distinct (normalised) text once while it stays among the ``cache_size`` latest."""

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
        cache_size: int = CACHE_SIZE,
    ) -> None:
        super().__init__()
        if not 0 <= description_weight <= 1:
            raise ValueError(f"description_weight must be within 0..1, not {description_weight}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, not {temperature}")
        if not none_examples or none_top_k < 1:
            raise ValueError("need at least one none example and none_top_k >= 1")
        if cache_size < 0:
            raise ValueError(f"cache_size must be at least 0, not {cache_size}")
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
        # normalised text -> (class index, probability); the last class is "none". Valid as long
        # as the anchors are, i.e. for the analyzer's life (its settings are fixed at construction).
        self._cache: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.cache_size = cache_size
        self.embedded = 0  # texts sent to the engine since construction (cache misses)

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
        keyed = [(u, key) for u in utterances if (key := normalised(u.text))]
        # This call's verdicts, apart from the cache: a batch with more distinct texts than the
        # cache holds must not evict its own before they are used.
        verdicts: dict[str, tuple[int, float]] = {}
        missing: dict[str, str] = {}  # key -> the first spelling seen, which is what gets embedded
        for utterance, key in keyed:
            if key in verdicts or key in missing:
                continue
            if (hit := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                verdicts[key] = hit
            else:
                missing[key] = " ".join(utterance.text.split())
        keys = list(missing)
        for start in range(0, len(keys), CHUNK):
            chunk = keys[start : start + CHUNK]
            probabilities = self.probabilities(await self.engine.embed_queries([missing[k] for k in chunk]))
            self.embedded += len(chunk)
            for key, row in zip(chunk, probabilities, strict=True):
                choice = int(row.argmax())
                verdicts[key] = (choice, float(row[choice]))
                self._remember(key, verdicts[key])
        labels: list[UtteranceLabel] = []
        for utterance, key in keyed:
            choice, confidence = verdicts[key]
            labels.append(
                UtteranceLabel(
                    turn_id=utterance.turn_id,
                    user_id=utterance.user_id,
                    intent=self.names[choice] if choice < len(self.names) else None,
                    confidence=confidence,
                )
            )
        return labels

    def _remember(self, key: str, verdict: tuple[int, float]) -> None:
        if self.cache_size == 0:
            return
        self._cache[key] = verdict
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

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
