"""What an intent analyzer takes and gives: user utterances in, per-user findings out.

Backends differ only in how they label single utterances (:meth:`IntentAnalyzer.label`); turning
labels into findings is :func:`aggregate`, shared, so an embedding finding and an LLM finding for
the same turns mean the same thing to the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ConfigDict, Field


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Utterance(_Message):
    """One thing a user said: a stored turn's ``user_text``."""

    turn_id: int
    user_id: str = Field(min_length=1)
    text: str


class UtteranceLabel(_Message):
    """A backend's verdict on one utterance; ``intent`` None means it asks for no known intent."""

    turn_id: int
    user_id: str
    intent: str | None
    confidence: float = Field(ge=0, le=1)


class IntentFinding(_Message):
    """A user wants ``intent``, as shown by the turns in ``evidence`` (ids, ascending)."""

    user_id: str = Field(min_length=1)
    intent: str = Field(min_length=1)
    confidence: float = Field(ge=0, le=1)
    evidence: list[int] = Field(min_length=1)
    analyzer: str = Field(min_length=1)


class AnalysisError(RuntimeError):
    """One batch could not be analysed (endpoint down, malformed model output); the message says why."""


class BatchFailure(_Message):
    turn_ids: list[int]
    error: str


class IntentAnalyzer(ABC):
    """A backend labels utterances; :meth:`analyze` is the same for all of them.

    A batch that fails is logged and listed in :attr:`last_failures` (its turns get no findings)
    rather than raised, so one bad model reply does not lose the rest of the run; a caller that
    keeps a watermark can hold it before the earliest failed turn.
    """

    name: str

    def __init__(self) -> None:
        self.failed_batches = 0  # since construction, for logs and metrics
        self.last_failures: list[BatchFailure] = []  # of the latest analyze() call

    @abstractmethod
    async def label(self, utterances: Sequence[Utterance]) -> list[UtteranceLabel]:
        """One label per utterance the backend could judge (failed batches are left out)."""

    async def analyze(
        self, utterances: Sequence[Utterance], min_confidence: float = 0.0
    ) -> list[IntentFinding]:
        """Findings per user and intent; utterances that match no intent yield nothing."""
        self.last_failures = []
        return aggregate(await self.label(utterances), self.name, min_confidence=min_confidence)

    def _failed(self, turn_ids: Iterable[int], error: str) -> None:
        self.failed_batches += 1
        self.last_failures.append(BatchFailure(turn_ids=sorted(turn_ids), error=error))

    async def aclose(self) -> None:  # noqa: B027 - optional hook for analyzers holding clients
        """Release connections; the analyzer is not used afterwards."""


def aggregate(
    labels: Iterable[UtteranceLabel], analyzer: str, *, min_confidence: float = 0.0
) -> list[IntentFinding]:
    """Group labels by (user, intent): evidence is every supporting turn, confidence the strongest
    (one clear request outweighs vaguer mentions of the same thing). Labels without an intent or
    below ``min_confidence`` support nothing. Sorted by user, then intent, so output is stable."""
    groups: dict[tuple[str, str], tuple[set[int], float]] = {}
    for label in labels:
        if label.intent is None or label.confidence < min_confidence:
            continue
        key = (label.user_id, label.intent)
        turns, confidence = groups.get(key, (set(), 0.0))
        turns.add(label.turn_id)
        groups[key] = (turns, max(confidence, label.confidence))
    return [
        IntentFinding(
            user_id=user_id, intent=intent, confidence=confidence, evidence=sorted(turns), analyzer=analyzer
        )
        for (user_id, intent), (turns, confidence) in sorted(groups.items())
    ]
