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

from voiceagent.pipeline.replies import words_of
from voiceagent.pipeline.settings import ConversationSettings

NotWords = Literal["backchannel", "echo", "nothing"]
Verdict = Literal["words"] | NotWords
# What the conversation does after a frame of voice over the agent (see Suspicion.step), and
# after a check of that voice (Suspicion.judged).
Step = Literal["check", "release", "too_long", "forget"] | None
Judgement = Literal["interrupt", "release"] | None

# Hums ASR spells many ways ("mm-hmm", "mhm", "uh-huh", "hmmm", "um"): each part is a backchannel.
_HUM = re.compile(r"(?:[mhn]+|u+[hm]+|h+u+h+|[ao]+h+)")
ECHO_OVERLAP = 0.7  # share of the heard words that repeat what the agent said, in its order


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
    """Voice over the agent, from its onset until it is judged and quiet again.

    The agent's audio is held from the onset. Every ``interrupt_min_speech_s`` of new voice the
    whole voice is transcribed again, so the first check can be early (a short hold over an
    "mm-hm") without a real interruption depending on it: a first check that hears nothing
    releases the agent, and the words a later check hears still cut it off.
    """

    onset_s: float  # stream time the voice began
    voiced_s: float = 0.0  # voiced seconds since the onset
    quiet_s: float = 0.0  # silence since the last voiced frame
    since_onset_s: float = 0.0  # seconds since the hold began (the longest hold counts these)
    check: asyncio.Task[str] | None = None  # the transcript of the voice, being computed
    checked_voiced_s: float = 0.0  # voiced seconds the last finished check covered
    released: bool = False  # judged not words (or held too long): the agent speaks again
    given_up: bool = False  # past the longest hold: nothing more is judged until a quiet spell
    verdict: NotWords | None = None  # what the check that released the agent heard
    # One word from the first moment of voice ("oh", "I") is weak evidence: it is judged again on
    # the whole voice once the caller stops, and only then interrupts.
    unsure: bool = False
    final: bool = False  # the check on the whole voice is running or done

    def step(self, voiced: bool, frame_s: float, settings: ConversationSettings) -> Step:
        """Account one frame; say what to do: transcribe the voice ("check"), give the agent its
        voice back ("release", "too_long"), or end the suspicion ("forget")."""
        self.since_onset_s += frame_s
        if voiced:
            self.voiced_s += frame_s
            self.quiet_s = 0.0
        else:
            self.quiet_s += frame_s
        quiet = self.quiet_s >= settings.barge_in_release_s
        if self.given_up:
            return "forget" if quiet else None
        if self.since_onset_s >= settings.barge_in_max_hold_s:  # (a check in flight may still cut)
            self.given_up = True
            if self.released:
                return None
            self.released = True
            return "too_long"
        if self.check is not None:
            return None
        if quiet:
            if self.unsure and not self.final:
                self.final = True
                return "check"
            return "forget" if self.released else "release"
        if self.voiced_s >= self.checked_voiced_s + settings.interrupt_min_speech_s:
            return "check"
        return None

    def judged(self, verdict: Verdict, words: int, covered_s: float) -> Judgement:
        """A check finished (it covered ``covered_s`` of voice): interrupt, release the agent, or
        wait for more voice."""
        self.check = None
        self.checked_voiced_s = covered_s
        if verdict == "words":
            if not self.final and words < 2:
                self.unsure = True  # judged again on the whole voice once the caller stops
                return None
            return "interrupt"
        if self.released:
            return None
        # Not words: the agent goes on at once, over the rest of this sound (talking over an
        # "mm-hm" is what people do); more voice is still judged.
        self.verdict, self.released = verdict, True
        return "release"
