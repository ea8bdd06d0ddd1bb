"""Speech the agent starts itself (proactive prompts), modelled on LiveKit's SpeechHandle: an
awaitable for one utterance, with a priority and interruptibility, plus what a queue of prompts
needs to say what became of each one: played to the end, interrupted (and what was heard), or
dropped (the call ended, it expired, another prompt replaced it, no safe moment came in time, or
its text could not be produced).

A prompt is never forced over the caller: the conversation starts one only at a safe point
(see `Conversation.say`), and past its deadline gives it back instead.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Generator
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

DropReason = Literal["call_ended", "expired", "replaced", "no_safe_point", "failed"]


class SpeechOutcome(StrEnum):
    PLAYED = "played"
    INTERRUPTED = "interrupted"
    DROPPED = "dropped"


class SpeechResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    outcome: SpeechOutcome
    heard: str = ""  # what of it reached the caller's ear (all of it when played)
    reason: DropReason | None = None  # why it was dropped

    @property
    def heard_to_the_end(self) -> bool:
        return self.outcome == SpeechOutcome.PLAYED


class SpeechHandle:
    """One prompt. ``await handle`` gives its SpeechResult once it is settled."""

    def __init__(
        self,
        *,
        text: str | None,
        instructions: str | None,
        priority: int,
        allow_interruptions: bool,
        expires_at_s: float | None,
        give_up_at_s: float,
        replaces: str | None,
        event_id: str | None,
    ) -> None:
        if (text is None) == (instructions is None) or not (text or instructions or "").strip():
            raise ValueError("say exactly one of text or instructions, and not an empty one")
        self.id = uuid.uuid4().hex[:12]
        self.text = text
        self.instructions = instructions
        self.priority = priority
        self.allow_interruptions = allow_interruptions
        self.expires_at_s = expires_at_s  # conversation clock; None: never
        self.give_up_at_s = give_up_at_s  # no safe point by then: given back, never forced
        self.replaces = replaces  # a newer prompt with the same key drops this one while it waits
        self.event_id = event_id
        self.started = False
        self._result: asyncio.Future[SpeechResult] = asyncio.get_running_loop().create_future()
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def mark_started(self) -> None:
        """The conversation found its safe point and begins the prompt."""
        self.started = True
        if not self._started.done():
            self._started.set_result(None)

    async def wait_started(self) -> bool:
        """Until the prompt begins (True) or is settled without ever beginning (False)."""
        either: list[asyncio.Future[Any]] = [self._started, self._result]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        return self._started.done()

    def done(self) -> bool:
        return self._result.done()

    @property
    def result(self) -> SpeechResult:
        return self._result.result()

    def settle(self, result: SpeechResult) -> None:
        if not self._result.done():
            self._result.set_result(result)

    def drop(self, reason: DropReason, heard: str = "") -> None:
        self.settle(SpeechResult(outcome=SpeechOutcome.DROPPED, heard=heard, reason=reason))

    def __await__(self) -> Generator[Any, None, SpeechResult]:
        # Shielded: a caller that stops waiting does not cancel the prompt itself.
        return asyncio.shield(self._result).__await__()

    def __repr__(self) -> str:
        what = self.text if self.text is not None else f"<instructions: {self.instructions}>"
        return f"SpeechHandle({self.id}, {what[:40]!r}, priority={self.priority})"


class PromptQueue:
    """Prompts waiting for a safe point: highest priority first, then oldest first."""

    def __init__(self) -> None:
        self._waiting: list[SpeechHandle] = []

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, handle: SpeechHandle) -> None:
        if handle.replaces is not None:
            for old in [h for h in self._waiting if h.replaces == handle.replaces]:
                self._waiting.remove(old)
                old.drop("replaced")
        position = next((i for i, h in enumerate(self._waiting) if h.priority < handle.priority), None)
        self._waiting.insert(len(self._waiting) if position is None else position, handle)

    def expire(self, now_s: float) -> None:
        """Settle what may no longer be spoken: expired, or waited past its deadline."""
        for handle in list(self._waiting):
            if handle.expires_at_s is not None and now_s >= handle.expires_at_s:
                self._waiting.remove(handle)
                handle.drop("expired")
            elif now_s >= handle.give_up_at_s:
                self._waiting.remove(handle)
                handle.drop("no_safe_point")

    def pop(self) -> SpeechHandle | None:
        while self._waiting:
            handle = self._waiting.pop(0)
            if not handle.done():  # not cancelled by its owner meanwhile
                return handle
        return None

    def drop_all(self, reason: DropReason) -> None:
        waiting, self._waiting = self._waiting, []
        for handle in waiting:
            handle.drop(reason)
