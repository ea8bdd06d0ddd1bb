"""What an audio end-of-turn model promises: one probability per look at the turn so far."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class TurnModel(Protocol):
    """Loaded once per process and shared by every call. ``probability`` blocks (native
    inference, tens of milliseconds): callers run it through ``asyncio.to_thread`` or a pool."""

    threshold: float
    """Probability at or above which the model calls the turn complete."""

    def probability(self, pcm16_16k: bytes) -> float:
        """Probability that the speaker has finished, from 16 kHz mono int16 PCM of the turn
        so far, ending now (speech plus the silence since it stopped)."""
        ...

    def close(self) -> None: ...
