"""When has the user finished? Silence after speech, read together with what they said."""

from __future__ import annotations

from voiceagent.pipeline.settings import ConversationSettings

COMPLETE_ENDINGS = tuple(".?!。？！")
# Words people pause after mid-thought; ending on one of these means more is coming.
HESITANT_WORDS = frozenset(
    {"and", "but", "so", "or", "because", "um", "uh", "er", "erm", "like", "the", "a", "an"}
    | {"to", "of", "with", "for", "my", "your", "that", "which", "if", "then"}
)


def end_of_turn_silence(text_so_far: str, settings: ConversationSettings) -> float:
    """Seconds of silence that end the turn: short after a finished sentence, long after a
    hesitation or a dangling conjunction, the default otherwise (or with no transcript yet)."""
    text = text_so_far.strip()
    if not text:
        return settings.end_of_turn_silence_s
    if text.endswith(COMPLETE_ENDINGS) and not text.endswith("..."):
        return settings.end_of_turn_complete_s
    last_word = text.split()[-1].strip(".,;:!?\"'").lower()
    if text.endswith((",", "...", "-", ";", ":")) or last_word in HESITANT_WORDS:
        return settings.end_of_turn_hesitant_s
    return settings.end_of_turn_silence_s
