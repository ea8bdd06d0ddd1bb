"""The caller's voice over the agent's: an interruption, or a cough, an "mm-hm", an echo?

The agent's audio is held (silent, not dropped) the moment voice starts over it, so the caller
hears the agent stop at once; what the voice was is decided afterwards, without hurry. Only words
interrupt: a backchannel, the agent's own words coming back through the caller's speakers, or a
noise ASR makes nothing of, release the hold and the agent goes on where it stopped.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from difflib import SequenceMatcher
from typing import Literal

NotWords = Literal["backchannel", "echo", "nothing"]
Verdict = Literal["words"] | NotWords

_WORD = re.compile(r"[^\W\d_\u4e00-\u9fff]+(?:'[^\W\d_]+)?|\d+|[\u4e00-\u9fff]")
# Hums ASR spells many ways ("mm-hmm", "mhm", "uh-huh", "hmmm", "um"): each part is a backchannel.
_HUM = re.compile(r"(?:[mhn]+|u+[hm]+|h+u+h+|[ao]+h+)")
ECHO_OVERLAP = 0.7  # share of the heard words that repeat what the agent said, in its order


def words_of(text: str) -> list[str]:
    """Lower-case words (each CJK character one word; "mm-hmm" two) without punctuation."""
    return _WORD.findall(text.lower())


def classify_overlap(text: str, agent_text: str, backchannels: tuple[str, ...]) -> Verdict:
    """What the caller said over the agent, from its transcript."""
    heard = words_of(text)
    if not heard:
        return "nothing"
    phrases = {" ".join(words_of(b)) for b in backchannels}
    # "mm-hm, mm-hm", "yeah yeah": a run of backchannel words is still a backchannel.
    if " ".join(heard) in phrases or all(w in phrases or _HUM.fullmatch(w) for w in heard):
        return "backchannel"
    if _echoed(heard, words_of(agent_text)) >= ECHO_OVERLAP:
        return "echo"
    return "words"


def _echoed(heard: list[str], said: list[str]) -> float:
    """Share of ``heard`` that is the agent's own words in runs of two or more, in order: an
    echo repeats phrases; a caller shares single words ("I", "you", "about") with any reply."""
    if not said:
        return 0.0
    blocks = SequenceMatcher(None, heard, said, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks if b.size >= 2) / len(heard)


@dataclass
class Suspicion:
    """Voice over the agent, from its onset until it is judged."""

    onset_s: float  # stream time the voice began
    voiced_s: float = 0.0  # voiced seconds since the onset
    quiet_s: float = 0.0  # silence since the last voiced frame
    held_s: float = 0.0  # seconds the agent's audio has been held
    check: asyncio.Task[str] | None = None  # the transcript of the voice, being computed
    checked_voiced_s: float = 0.0  # voiced seconds the last finished check covered
    given_up: bool = False  # held too long without words: released, ignored until quiet
    verdict: NotWords | None = None  # what the last check heard, when it was not words
    # One word from the first moment of voice ("oh", "I") is weak evidence: it is judged again on
    # the whole voice once the caller stops, and only then interrupts (the agent stays held).
    unsure: bool = False
    final: bool = False  # the check on the whole voice is running or done

    def frame(self, voiced: bool, frame_s: float) -> None:
        self.held_s += frame_s
        if voiced:
            self.voiced_s += frame_s
            self.quiet_s = 0.0
        else:
            self.quiet_s += frame_s

    def check_due(self, min_speech_s: float) -> bool:
        """Enough new voice to be worth transcribing (again)."""
        return (
            self.check is None
            and not self.given_up
            and self.voiced_s >= max(min_speech_s, self.checked_voiced_s + min_speech_s)
        )
