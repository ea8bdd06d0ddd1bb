"""What the agent may consult before it answers. The pipeline knows only this interface; the
knowledge base (voiceagent.knowledge) implements it, so the core never depends on it."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict

from voiceagent.store.records import Reference

LookupOutcome = Literal["found", "nothing", "timeout", "failed", "unavailable"]


class Consulted(BaseModel):
    """One lookup: the notes handed to the model (empty: none), their sources, and its cost."""

    model_config = ConfigDict(frozen=True)

    outcome: LookupOutcome
    notes: str = ""
    references: tuple[Reference, ...] = ()
    seconds: float = 0.0


class KnowledgeLookup(Protocol):
    async def lookup(self, question: str) -> Consulted:
        """Never raises: a slow or failing knowledge base is an outcome, and the agent answers
        without it."""
        ...
