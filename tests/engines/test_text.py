"""Text preparation for TTS and the streaming sentence chunker between the LLM and the voice."""

from __future__ import annotations

import pytest

from voiceagent.engines.base import BadText
from voiceagent.engines.tts.text import (
    MAX_SENTENCE_CHARS,
    SentenceChunker,
    clean_text,
    prepare_text,
    split_long,
    split_sentences,
)


@pytest.mark.parametrize(
    ("raw", "spoken"),
    [
        ("**Great** news, __really__ *great* _news_ ~~bad~~!", "Great news, really great news bad!"),
        ("See [the docs](https://example.com/docs) or ![a cat](cat.png).", "See the docs or a cat."),
        ("<p>Hello <b>world</b></p><br/>Tom &amp; Jerry", "Hello world\nTom & Jerry"),
        ("Thanks! 😀👍🏽 Have a nice day 🎉", "Thanks! Have a nice day"),
        ("family 👨‍👩‍👧 here", "family here"),
        ("Run `pip install x` now.", "Run pip install x now."),
        ("```python\nprint('hi')\n```", "print('hi')"),
        ("# Title\n\n- one\n* two\n1. three\n> quoted", "Title\none\ntwo\nthree\nquoted"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "a, b\n,\n1, 2"),
        ("It's 25°C   and\t\tsunny.", "It's 25°C and sunny."),
        ("snake_case and 3*4", "snake case and 3 4"),
        ("你好，世界！😀", "你好，世界！"),
    ],
)
def test_clean_text_keeps_the_words_and_drops_the_markup(raw: str, spoken: str) -> None:
    assert clean_text(raw) == spoken


def test_sentences_split_where_a_reader_would_pause() -> None:
    text = (
        "Hello there. Dr. Smith paid 3.5 dollars, e.g. cheap. Really?! Yes... Wait... what? 你好。再见！OK."
    )
    assert split_sentences(text) == [
        "Hello there.",
        "Dr. Smith paid 3.5 dollars, e.g. cheap.",
        "Really?!",
        "Yes...",
        "Wait... what?",
        "你好。",
        "再见！",
        "OK.",
    ]


def test_a_long_sentence_is_cut_at_commas_then_at_spaces() -> None:
    clauses = ", ".join(f"clause number {i} goes on a while" for i in range(20)) + "."
    pieces = split_long(clauses)
    assert len(pieces) > 1 and all(len(p) <= MAX_SENTENCE_CHARS for p in pieces)
    assert all(p.endswith((",", ".")) for p in pieces)
    assert " ".join(pieces) == clauses

    words = " ".join(["supercalifragilistic"] * 40)
    pieces = split_long(words)
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in pieces) and " ".join(pieces) == words

    unbroken = "字" * 450
    assert [len(p) for p in split_long(unbroken)] == [200, 200, 50]


def test_a_cut_never_overshoots_the_limit_nor_strands_a_mark() -> None:
    # A comma just past the limit used to close a 201-character piece.
    comma_at_limit = "abcd " * 39 + "abcde, and then the rest of it."
    pieces = split_long(comma_at_limit)
    assert all(len(p) <= MAX_SENTENCE_CHARS for p in pieces) and " ".join(pieces) == comma_at_limit
    # A hard cut that left only "?" lost it: prepare_text drops pieces with nothing to say.
    assert prepare_text("x" * 200 + "?", max_chars=1000) == ["x" * 199, "x?"]
    assert split_long("one two three — —!", limit=15) == ["one two", "three — —!"]


def test_prepare_text_refuses_what_cannot_be_spoken() -> None:
    with pytest.raises(BadText, match="over the 100 limit"):
        prepare_text("word " * 30, max_chars=100)
    for nothing in ("", "   ", "😀🎉👍", "```\n```", "***", "<br/>", "---"):
        with pytest.raises(BadText, match="nothing speakable"):
            prepare_text(nothing, max_chars=100)
    with pytest.raises(BadText, match="must be str"):
        prepare_text(None, max_chars=100)  # type: ignore[arg-type]
    assert prepare_text("**Hi** 😀. How are you?", max_chars=100) == ["Hi.", "How are you?"]


def feed(chunker: SentenceChunker, deltas: list[str]) -> list[tuple[int, str]]:
    """(index of the delta that released it, sentence) for every sentence out of the chunker."""
    return [(i, s) for i, delta in enumerate(deltas) for s in chunker.push(delta)]


def test_chunker_yields_each_sentence_as_soon_as_it_is_certain() -> None:
    chunker = SentenceChunker()
    deltas = ["Hello", " there", "!", " How", " are", " you", "?", " I", "'m", " fine", "."]
    assert feed(chunker, deltas) == [(3, "Hello there!"), (7, "How are you?")]
    assert chunker.flush() == ["I'm fine."]
    assert chunker.flush() == []


def test_chunker_waits_for_the_next_word_after_a_period() -> None:
    chunker = SentenceChunker()
    assert chunker.push("Dr.") == []
    assert chunker.push(" ") == []
    assert chunker.push("Smith paid $3.") == []
    assert chunker.push("5, e.g. less.") == []
    assert chunker.push(" Then") == ["Dr. Smith paid $3.5, e.g. less."]
    assert chunker.push(" nothing... more") == []
    assert chunker.push("... Next") == ["Then nothing... more..."]
    assert chunker.flush() == ["Next"]


def test_chunker_splits_chinese_without_spaces() -> None:
    chunker = SentenceChunker()
    out = [s for ch in "你好。今天天气很好！你呢？还好" for s in chunker.push(ch)]
    assert out == ["你好。", "今天天气很好！", "你呢？"]
    assert chunker.flush() == ["还好"]


def test_chunker_character_by_character_matches_the_batch_splitter() -> None:
    text = "Hi there. Mr. Li arrived at 10.30 a.m. today! Is it 2.5 km? Yes, i.e. close. 好的。Bye."
    chunker = SentenceChunker()
    streamed = [s for ch in text for s in chunker.push(ch)] + chunker.flush()
    assert streamed == split_sentences(text)


def test_chunker_handles_markdown_lists_and_drops_unspeakable_pieces() -> None:
    reply = "**Steps:**\n1. Open the app.\n2. Tap *Settings*.\n\n```\n```\n😀\nDone."
    chunker = SentenceChunker()
    out = [s for ch in reply for s in chunker.push(ch)] + chunker.flush()
    assert out == ["**Steps:**", "1. Open the app.", "2. Tap *Settings*.", "Done."]
    assert [prepare_text(s, 100) for s in out] == [
        ["Steps:"],
        ["Open the app."],
        ["Tap Settings."],
        ["Done."],
    ]


def test_chunker_cuts_a_run_on_reply_so_speech_can_start() -> None:
    chunker = SentenceChunker(limit=60)
    out = [s for word in ("and then " * 30).split(" ") for s in chunker.push(word + " ")]
    assert out and all(len(s) <= 60 for s in out)
    assert all(s.endswith("then") or s.endswith("and") for s in out)  # never mid-word
    rest = chunker.flush()
    assert " ".join(out + rest).split() == ("and then " * 30).split()


def test_the_first_long_clause_is_spoken_before_its_sentence_ends() -> None:
    chunker = SentenceChunker(first_clause_words=4)
    out: list[str] = []
    for token in [
        "Today's",
        " weather",
        " is",
        " mostly",
        " sunny,",
        " with",
        " no",
        " rain.",
        " Enjoy",
        " it.",
    ]:
        out += chunker.push(token)
    out += chunker.flush()
    assert out == ["Today's weather is mostly sunny,", "with no rain.", "Enjoy it."]
    # Only the first: later commas wait for the sentence to end.
    assert SentenceChunker(first_clause_words=4).push("Yes, ok") == []


@pytest.mark.parametrize(
    ("reply", "clause"),
    [
        ("I'm sorry to interrupt but I am not free until tomorrow night.", "I'm sorry to interrupt"),
        ("The kitchen closes at ten; the bar stays open later.", "The kitchen closes at ten;"),
        ("Here is what we have today: soup, salad and pasta.", "Here is what we have today:"),
        ("We opened in nineteen ninety — my grandmother cooked.", "We opened in nineteen ninety"),
        ("You can park behind the building which is free after six.", "You can park behind the building"),
        ("我们有三道素菜，都很受欢迎。", "我们有三道素菜，"),
    ],
)
def test_an_opening_clause_ends_where_a_speaker_would_pause(reply: str, clause: str) -> None:
    chunker = SentenceChunker(first_clause_words=1 if "，" in reply else 4)
    first = chunker.push(reply.replace("。", "").replace(".", ""))  # the sentence not ended yet
    assert first == [clause] and chunker.clause == clause
    assert "".join([*first, *chunker.flush()]).replace(" ", "") == reply.rstrip(".。").replace(" ", "")


def test_no_opening_clause_before_and_or_so_which_join_words_as_often_as_clauses() -> None:
    chunker = SentenceChunker(first_clause_words=4)
    assert chunker.push("We serve it with salt and pepper and so much more") == []
    assert chunker.clause is None
