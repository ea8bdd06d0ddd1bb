"""Spoken replies are short by construction: the sentence cap, the token budget and the loop guard
end the reply at a sentence boundary whatever the model streams, and leave normal replies alone."""

from __future__ import annotations

import re

import pytest

from voiceagent.pipeline.replies import ReplyLimits, SpokenReply, estimate_tokens

LIMITS = ReplyLimits(max_sentences=3, max_tokens=200)


def tokens(text: str) -> list[str]:
    """Deltas the way an LLM streams them: a word with its following space."""
    return re.findall(r"\S+\s*", text)


def speak(
    text: str,
    limits: ReplyLimits = LIMITS,
    first_clause_words: int | None = None,
    deltas: list[str] | None = None,
    complete_only: bool = False,
) -> tuple[list[str], SpokenReply, int]:
    """(pieces spoken, the reply, deltas pushed before it said stop)."""
    reply = SpokenReply(limits, first_clause_words)
    pieces: list[str] = []
    pushed = 0
    for delta in tokens(text) if deltas is None else deltas:
        pieces += reply.push(delta)
        pushed += 1
        if reply.stop_reason:
            break
    pieces += reply.flush(complete_only=complete_only)
    assert pieces == reply.spoken
    return pieces, reply, pushed


@pytest.mark.parametrize(
    "text",
    [
        "The capital of France is Paris.",
        "Sure! Dr. Smith sees patients at 3.5 hours past noon, e.g. at two. Is that fine?",
        "Yes, it is. It costs $4.50, and it ships today. Anything else?",
        "It is sunny and warm",  # no full stop at the end: the model ended there
        "No, no, no. The sun is a star.",  # three words in a row is speech, not a loop
    ],
)
def test_a_normal_reply_passes_untouched(text: str) -> None:
    pieces, reply, _ = speak(text, first_clause_words=4)
    assert " ".join(pieces) == text
    assert reply.stop_reason is None and not reply.unfinished


def test_the_sentence_cap_ends_the_reply_as_soon_as_the_last_sentence_is_out() -> None:
    text = "One is first. Two is second. Three is third. Four is fourth. Five is fifth."
    pieces, reply, pushed = speak(text, ReplyLimits(max_sentences=2))
    assert pieces == ["One is first.", "Two is second."]
    assert reply.stop_reason == "sentences" and reply.sentences == 2
    assert pushed == 7  # "Three" showed the second sentence had ended: the stream can be cancelled
    assert reply.push("More text. ") == [] and reply.flush() == []


def test_an_opening_clause_is_not_counted_as_a_sentence() -> None:
    text = "Well, the capital city of France, as you know, is Paris. It is big."
    pieces, reply, _ = speak(text, ReplyLimits(max_sentences=1), first_clause_words=4)
    assert pieces == ["Well, the capital city of France,", "as you know, is Paris."]
    assert reply.stop_reason == "sentences" and reply.sentences == 1
    # An opening clause cut before "but" (no comma to wait for) is no sentence either.
    text = "I'm sorry to interrupt but we are full tonight. Try tomorrow. Or Friday."
    pieces, reply, _ = speak(text, ReplyLimits(max_sentences=2), first_clause_words=4)
    assert pieces == ["I'm sorry to interrupt", "but we are full tonight.", "Try tomorrow."]
    assert reply.opening_clause == "I'm sorry to interrupt" and reply.sentences == 2


def test_the_token_budget_holds_on_a_run_on_and_it_ends_on_a_word() -> None:
    run_on = " ".join(["the dragon flew over the hills looking for food"] * 2 + ["and the villagers hid"] * 5)
    limits = ReplyLimits(max_tokens=20, max_sentence_words=100, copy_words=30, phrase_repeats=9)
    pieces, reply, _ = speak(run_on, limits)
    assert reply.stop_reason == "tokens"
    [said] = pieces  # nothing whole was said, so the start of the run-on is closed off and spoken
    assert said.endswith(".") and run_on.startswith(said[:-1] + " ")
    assert estimate_tokens(said[:-1]) <= 20
    assert not said[:-1].endswith((" for", " the", " and", " over"))  # not left dangling


def test_the_token_budget_drops_the_sentence_it_would_cut_in_half() -> None:
    text = "The shop opens at nine. It closes at six on weekdays. On Sundays it stays closed all day long."
    budget = estimate_tokens("The shop opens at nine. It closes at six on weekdays. On Sundays")
    pieces, reply, _ = speak(text, ReplyLimits(max_sentences=5, max_tokens=budget))
    assert pieces == ["The shop opens at nine.", "It closes at six on weekdays."]
    assert reply.stop_reason == "tokens"


def test_the_budget_does_not_depend_on_how_the_text_is_cut_into_deltas() -> None:
    text = "Paris is the capital of France, and it is lovely in spring " * 4
    limits = ReplyLimits(max_tokens=25, max_sentence_words=100)
    by_word, _, _ = speak(text, limits)
    by_char, _, _ = speak(text, limits, deltas=list(text))
    whole, _, _ = speak(text, limits, deltas=[text])
    assert by_word == by_char == whole and by_word


def test_a_long_sentence_the_chunker_cuts_is_spoken_only_once_it_has_ended() -> None:
    long = (
        "The museum, which opened in 1901 and was rebuilt after the war, holds paintings, sculptures, "
        "maps, coins and letters from the whole region, and its garden, the oldest in the city, is "
        "open every day from nine in the morning until six in the evening."
    )
    reply = SpokenReply(ReplyLimits(max_sentence_words=100, max_tokens=500))
    early = [piece for delta in tokens(long)[:-1] for piece in reply.push(delta)]
    assert early == []  # the chunker cut it at 200 characters, but half a sentence waits
    pieces = reply.push(tokens(long)[-1]) + reply.push(" Bye. ") + reply.flush()
    assert " ".join(pieces) == long + " Bye." and len(pieces) == 3


def test_a_repeated_sentence_ends_the_reply_after_saying_it_once() -> None:
    pieces, reply, pushed = speak("I'm sorry. " * 60)
    assert pieces == ["I'm sorry."] and reply.stop_reason == "loop"
    assert pushed < 6


def test_a_nearly_repeated_sentence_is_a_repeat_too() -> None:
    pieces, reply, _ = speak("It is a nice day today. It is a very nice day today. Go outside.")
    assert pieces == ["It is a nice day today."] and reply.stop_reason == "loop"


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("We went out and then and then and then and then we came home.", ["We went out."]),
        ("I'm sorry, I'm sorry, I'm sorry, I'm sorry, I'm sorry.", ["I'm sorry."]),
        ("No, no, no, no, no, no. The sun is a star.", ["No."]),
        (
            "The cat sat on the old mat. Then it slept and the cat sat on the old mat again.",
            ["The cat sat on the old mat."],
        ),
    ],
)
def test_a_repeated_phrase_ends_the_reply_cleanly(text: str, said: list[str]) -> None:
    pieces, reply, _ = speak(text, first_clause_words=4)
    assert pieces == said and reply.stop_reason == "loop"


def test_a_word_that_loops_on_itself_is_never_spoken() -> None:
    # It never ends, so it is caught while still being written, before the budget would close it off.
    pieces, reply, pushed = speak(
        "It is fine. Then Ishamadadadadadadadadadadadadadadadadadadadadadadadadad", deltas=None
    )
    assert pieces == ["It is fine."] and reply.stop_reason == "loop"
    babble = "Isham" + "ad" * 200
    pieces, reply, pushed = speak(babble, deltas=[babble[i : i + 3] for i in range(0, len(babble), 3)])
    assert pieces == [] and reply.stop_reason == "loop" and pushed < 10


def test_a_phrase_loop_after_whole_sentences_drops_the_half_sentence() -> None:
    pieces, reply, _ = speak("The museum opens at ten. We can go there and then and then and then and then.")
    assert pieces == ["The museum opens at ten."] and reply.stop_reason == "loop"


def test_a_run_on_sentence_ends_at_its_last_clause_break() -> None:
    text = (
        "Once upon a time there was a dragon who lived in a cave near a small village, and every day "
        "he flew over the hills and the rivers and the forests looking for food while the villagers "
        "hid in their houses because he was big and green and had very sharp teeth and claws."
    )
    pieces, reply, _ = speak(text, ReplyLimits(max_sentence_words=30, max_tokens=500))
    assert reply.stop_reason == "loop"
    assert pieces == ["Once upon a time there was a dragon who lived in a cave near a small village."]


def test_chinese_sentences_are_counted_and_repeats_caught() -> None:
    pieces, reply, _ = speak(
        "北京是中国的首都。它很大。它有很多人。",
        ReplyLimits(max_sentences=2),
        deltas=list("北京是中国的首都。它很大。它有很多人。"),
    )
    assert pieces == ["北京是中国的首都。", "它很大。"] and reply.stop_reason == "sentences"
    looping = "对不起。" * 20
    pieces, reply, _ = speak(looping, deltas=list(looping))
    assert pieces == ["对不起。"] and reply.stop_reason == "loop"
    assert estimate_tokens("北京是中国的首都。") == 9  # a character each, and the full stop


def test_a_failed_stream_speaks_only_whole_sentences_and_says_it_was_cut() -> None:
    pieces, reply, _ = speak("It is sunny. And warm", complete_only=True)
    assert pieces == ["It is sunny."] and reply.unfinished and reply.stop_reason is None
    pieces, reply, _ = speak("It is sunny. ", complete_only=True)
    assert pieces == ["It is sunny."] and not reply.unfinished
    # Its opening clause was spoken but the sentence never finished: that too was cut.
    pieces, reply, _ = speak("Well, the weather in Paris today, is", first_clause_words=4, complete_only=True)
    assert pieces == ["Well, the weather in Paris today,"] and reply.unfinished


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        ReplyLimits(max_sentences=0)
    with pytest.raises(ValueError):
        ReplyLimits(max_sentence=2)  # type: ignore[call-arg]
