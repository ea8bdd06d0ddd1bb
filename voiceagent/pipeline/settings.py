"""How a conversation behaves (the `conversation:` section): persona, turn-taking, barge-in."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voiceagent.pipeline.replies import ReplyLimits


class ConversationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    persona: str = "Ava"
    # Chosen by measurement (bench/replies.py) among 11 prompts for SmolLM2-135M: the one it follows
    # best (2/3 of raw replies within two sentences, 1/10 looping, vs 0.44 and 0.21 for the rest's
    # best), answering as often as any; replies.py enforces the length anyway.
    system_prompt: str = (
        "You are {persona}, a helpful voice assistant. Answer the question briefly and directly, in one "
        "or two sentences of plain words."
    )
    history_turns: int = Field(12, ge=1, description="user/assistant exchanges kept for the model")
    # A spoken reply's size, enforced on the LLM's stream whatever the model does.
    reply: ReplyLimits = Field(default_factory=ReplyLimits)
    # End of turn: silence after speech, adjusted by what the user said so far. A transcript with no
    # full stop means Whisper heard no end ("I think", "maybe around"): 95 % of finished sentences
    # come punctuated (bench turn_model), so waiting 0.8 s there costs few finished turns and
    # spares the caller who paused 0.7 s an answer to half a thought (0.5 s did not).
    end_of_turn_silence_s: float = Field(0.8, ge=0.1, description="after a neutral ending")
    end_of_turn_complete_s: float = Field(0.3, ge=0.05, description="after . ? ! (a finished thought)")
    end_of_turn_hesitant_s: float = Field(1.0, ge=0.1, description="after 'and', 'um', a comma")
    voiced_probability: float = Field(0.5, gt=0, lt=1, description="VAD probability that counts as voice")
    speculate_after_s: float = Field(0.15, ge=0, description="silence before a speculative transcript")
    # An utterance this long ends the turn even without a pause: ASR takes at most ~30 s, and a
    # caller who never pauses (or a stuck open line) must not grow the call's memory without end.
    max_utterance_s: float = Field(30.0, gt=1)
    pre_roll_s: float = Field(0.3, ge=0, description="audio kept from before speech_start")
    partial_every_s: float = Field(0.8, gt=0, description="partial transcripts while the user speaks")
    # Voice this long in a pause means the caller goes on: the pending end of turn, its transcript
    # and any reply prepared for it are dropped (shorter is a click, heard as silence).
    resume_min_speech_s: float = Field(0.04, ge=0)
    # Words this soon after the caller's speech ended are the same turn even when the agent has
    # begun its answer (a pause a little longer than the end-of-turn silence): that answer is
    # dropped, unremembered, and the whole turn answered.
    late_resume_s: float = Field(1.0, ge=0)
    # Prepare the reply (LLM and first sentence's audio) at the pause, while the end-of-turn
    # silence runs; it plays the moment the turn ends, and leaves no trace if the caller goes on.
    preemptive_replies: bool = True
    # Barge-in: voice this long over the agent holds its audio at once (the caller hears silence);
    # the voice is transcribed after `interrupt_min_speech_s` of it, and again after each as much
    # more: words that are not a backchannel ("mm-hm") or the agent's own echo interrupt; anything
    # else releases the hold (the agent goes on where it stopped), as does `barge_in_release_s`
    # of quiet. 0.2 s keeps the hold over an "mm-hm" under 0.4 s (0.3 s held it ~0.45 s); words a
    # first check missed are caught by the next.
    barge_in_onset_s: float = Field(0.06, ge=0.02)
    interrupt_min_speech_s: float = Field(0.2, gt=0)
    barge_in_release_s: float = Field(0.3, gt=0)
    # Voice that never turns into words (a long noise) is let go after this long on hold.
    barge_in_max_hold_s: float = Field(2.5, gt=0)
    backchannels: tuple[str, ...] = (
        "mm", "mm-hm", "mhm", "mm hmm", "uh-huh", "uh huh", "hmm", "yeah", "yes", "yep", "ok",
        "okay", "right", "sure", "i see", "got it", "嗯", "嗯嗯", "对", "好", "好的", "是",
    )  # fmt: skip
    # Ignore user speech this long after the agent starts talking (its own echo on open speakers).
    interrupt_warmup_s: float = Field(0.25, ge=0)
    # Speak a long first sentence's opening clause (at least this many words, up to a comma,
    # semicolon or colon, or before a dash or "but", "because", "which"...) on its own: the caller
    # waits for the first audio, not for the first full stop (whose TTS alone took 0.5-0.65 s).
    first_clause_words: int | None = Field(4, ge=1)
    max_tool_rounds: int = Field(3, ge=0)
    # Where knowledge-base notes go: "system", a message of their own right before the question;
    # "question", inside the question's message (bench knowledge_answers compares them).
    notes_placement: Literal["system", "question"] = "system"
    # Said when a fault leaves a turn with nothing said yet (no transcript, no LLM text, no audio).
    fallback_line: str = "Sorry, I lost my train of thought. Could you say that again?"
    # Said instead of an unfinished sentence when the LLM fails after the reply began.
    cut_off_line: str = "Sorry, I lost my train of thought there."
    # Prompts the agent starts itself wait for a safe point: the agent idle and the caller quiet
    # this long. Past prompt_max_wait_s without one, a prompt is given back, never forced.
    prompt_after_quiet_s: float = Field(0.6, ge=0)
    prompt_max_wait_s: float = Field(30.0, gt=0)
    prompt_instructions: str = (
        "Now say this to the user yourself, as one or two short spoken sentences in the language "
        "of the conversation, without mentioning these instructions: {instructions}"
    )
    # THINKING/SPEAKING with no reply task and no audio queued this long is a bug: reset to LISTENING.
    stuck_state_s: float = Field(2.0, gt=0)
