"""Chunks for retrieval: whole sentences, bounded, overlapping, English and Chinese."""

from __future__ import annotations

import itertools

import pytest

from voiceagent.knowledge.chunking import ChunkingSettings, chunk_text

MENU = (
    "The kitchen opens at noon. It closes at ten on Saturdays. Dr. Rossi, our chef, trained in "
    "Naples for 3.5 years. The risotto is vegetarian. The lasagne is not. Parking is free after six."
)


def test_chunks_hold_whole_sentences_within_the_size_and_overlap() -> None:
    settings = ChunkingSettings(max_chars=110, overlap_chars=60)
    chunks = chunk_text(MENU, settings)
    assert len(chunks) > 2 and all(len(c) <= 110 for c in chunks)
    assert all(c.endswith(".") for c in chunks)  # no chunk ends mid-sentence
    assert "Dr. Rossi, our chef, trained in Naples for 3.5 years." in chunks[1]  # abbreviations do not split
    for before, after in itertools.pairwise(chunks):
        last = before.replace("Dr. ", "Dr ").rsplit(". ", 1)[-1].replace("Dr ", "Dr. ")
        repeated = after[: after.index(last) + len(last)]
        assert before.endswith(repeated)  # it opens with the previous chunk's last sentence(s)
    every_sentence = MENU.replace("Dr. ", "Dr ").split(". ")
    joined = " ".join(chunks).replace("Dr. ", "Dr ")
    assert all(s.rstrip(".") in joined for s in every_sentence)  # nothing lost


def test_chinese_sentences_are_boundaries_and_join_without_spaces() -> None:
    text = "我们的厨房中午开门。周六晚上十点关门。最受欢迎的素菜是麻婆豆腐！停车场六点以后免费。"
    chunks = chunk_text(text, ChunkingSettings(max_chars=24, overlap_chars=9))
    assert chunks[0] == "我们的厨房中午开门。周六晚上十点关门。"
    assert all(c.endswith(("。", "！")) and len(c) <= 24 and " " not in c for c in chunks)
    assert chunks[1].startswith("周六晚上十点关门。")  # the overlap


def test_the_overlap_gives_way_rather_than_a_chunk_grows_past_its_size() -> None:
    chunks = chunk_text(
        "A short one. " + "B" * 30 + " long one.", ChunkingSettings(max_chars=45, overlap_chars=20)
    )
    assert chunks == ["A short one.", "B" * 30 + " long one."]


def test_a_sentence_longer_than_a_chunk_is_cut_between_words() -> None:
    long_sentence = " ".join(["word"] * 100) + "."
    chunks = chunk_text(long_sentence, ChunkingSettings(max_chars=60, overlap_chars=0))
    assert len(chunks) > 1 and all(len(c) <= 60 for c in chunks)
    assert " ".join(chunks).split() == long_sentence.split()


@pytest.mark.parametrize("text", ["", "   \n\n ", "!!! ..."])
def test_text_with_no_sentence_has_no_chunk(text: str) -> None:
    assert chunk_text(text) == [] or all(not c.strip(" .!") for c in chunk_text(text))


def test_the_overlap_must_be_smaller_than_a_chunk() -> None:
    with pytest.raises(ValueError, match="overlap_chars"):
        ChunkingSettings(max_chars=100, overlap_chars=100)
