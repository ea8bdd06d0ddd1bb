"""Replies made for the ear: the LLM's streamed text cut to what a caller should hear.

A caller cannot skim a spoken reply: every extra sentence is seconds they sit through, and a
small local model does not reliably obey "answer briefly" (SmolLM2-135M tells 256-token stories
when asked for one sentence, and once said "I'm sorry." until the caller hung up). So the length
is enforced here, on the stream, whatever the model does: a sentence cap, a token budget, and a
guard against degenerate repetition. Each ends the reply at a sentence boundary; only when nothing
whole has been said yet is an unfinished sentence closed off and spoken, so the caller hears
something rather than silence.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from pydantic import BaseModel, ConfigDict, Field

from voiceagent.engines.tts.text import SentenceChunker, clean_text, is_speakable, split_sentences

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
# A word for the loop guard: a CJK character alone (CJK has no spaces), else letters/digits with
# inner apostrophes ("I'm").
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:['’][^\W_{_CJK}]+)*")
# The token estimate: a CJK character, up to 6 letters, up to 3 digits, or one punctuation mark.
# Calibrated on SmolLM2's own tokenizer over bench replies (bench/replies.py prints the ratio).
_TOKEN = re.compile(rf"[{_CJK}]|[^\W\d_{_CJK}]{{1,6}}|\d{{1,3}}|[^\w\s]")
_CJK_CHAR = re.compile(rf"[{_CJK}]")
# No word at all: a letter said six times over, a syllable four times ("adadadad"), or 40 letters
# without a break. Checked on the word still being written too: it may never end.
_GIBBERISH = re.compile(
    rf"([^\W\d_])\1{{5,}}|([^\W\d_]{{2,6}}?)\2{{3,}}|[^\W\d_{_CJK}]{{40,}}", re.IGNORECASE
)
_ENDERS = ".!?…。！？"
_CLOSERS = "\"'”’)]」』】*_~ \t"
_SOFT_BREAK = re.compile(r"[,;:，；：、—–]")
_LINE_END = re.compile(r"[^\S\n]*\n")
_TRAILING_PUNCT = re.compile(r"[\s,;:，；：、—–(\[\"'\u201c\u2018-]+$")
# Words an unfinished sentence is not left dangling on when it has to be closed off.
_DANGLING = frozenset(
    {"and", "but", "so", "or", "because", "then", "um", "uh", "like", "the", "a", "an", "to", "of"}
    | {"with", "for", "my", "your", "that", "which", "if", "in", "on", "at", "is", "are", "was", "were"}
    | {"as", "by", "from", "who", "when", "while", "their", "his", "her", "its", "our", "this"}
)


class ReplyLimits(BaseModel):
    """How long a spoken reply may be, and what counts as the model going round in circles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sentences: int = Field(2, ge=1, description="sentences spoken at most; a first clause is no sentence")
    max_tokens: int = Field(
        40, ge=1, description="estimated tokens of reply text at most (see estimate_tokens): ~10 s of speech"
    )
    max_sentence_words: int = Field(
        30, ge=5, description="a sentence still unfinished after this many words is a run-on: the reply ends"
    )
    repeat_similarity: float = Field(
        0.8,
        gt=0,
        le=1,
        description="a sentence this similar (words) to an earlier one is a repeat: the reply ends",
    )
    phrase_repeats: int = Field(
        3, ge=2, description="a phrase said this many times in a row is a loop (a single word: one more)"
    )
    copy_words: int = Field(
        7, ge=3, description="this many words in a row (within a sentence) said a second time is a loop"
    )


def estimate_tokens(text: str) -> int:
    """Tokens in ``text`` as a model would count them, from the text alone: the budget must hold the
    same whichever server streams it and however it groups tokens into deltas."""
    return len(_TOKEN.findall(text))


def words_of(text: str) -> list[str]:
    """Lower-case words without punctuation: each CJK character one word, "I'm" one, "mm-hmm" two."""
    return [w.lower().replace("’", "'") for w in _WORD.findall(text)]


def _ends_sentence(piece: str) -> bool:
    stripped = piece.rstrip(_CLOSERS)
    return bool(stripped) and stripped[-1] in _ENDERS


def _is_word_char(char: str) -> bool:
    """Part of a space-separated word (a CJK character is a word by itself)."""
    return char.isalnum() and not _CJK_CHAR.match(char)


class SpokenReply:
    """Turns the LLM's streamed text into the sentences to speak, and says when to stop.

    ``push`` each delta and speak what it returns; once ``stop_reason`` is set ("sentences",
    "tokens" or "loop") the reply is over: the call that set it returned the last pieces, later
    calls return nothing, and the caller should cancel the LLM stream. ``flush`` when the stream
    ends; ``flush(complete_only=True)`` when it failed, which speaks only whole sentences and sets
    ``unfinished`` if a sentence was left half-said or unsaid.

    Pieces are the ``SentenceChunker``'s, verbatim: whole sentences, and with ``first_clause_words``
    possibly the first sentence's opening clause on its own (spoken early; not counted as a
    sentence). A run-on the chunker cuts for length is held back until its sentence ends.
    """

    def __init__(self, limits: ReplyLimits, first_clause_words: int | None = None) -> None:
        self.limits = limits
        self.stop_reason: str | None = None
        self.unfinished = False
        self.spoken: list[str] = []  # every piece handed out, in order
        self.opening_clause: str | None = None  # the first piece, when it was an opening clause
        self._chunker = SentenceChunker(first_clause_words=first_clause_words)
        self._text = ""  # all accepted stream text; the offsets below index it
        self._cursor = 0  # end of the last piece the chunker gave back
        self._released = 0  # end of what has been handed out
        self._sentence_start = 0  # start of the sentence being written (or half spoken)
        self._sentences: list[list[str]] = []  # words of each sentence handed out
        self._held: list[str] = []  # run-on pieces cut by the chunker, waiting for their full stop
        self._chunker_emitted = False
        self._scanned = 0  # words already seen by the stream guard
        self._run_start = 0  # index of the first word of the sentence the guard is in
        self._seen: dict[tuple[str, ...], int] = {}  # copy_words-grams said so far
        self._ended = False

    @property
    def sentences(self) -> int:
        """Whole sentences handed out so far."""
        return len(self._sentences)

    def push(self, delta: str) -> list[str]:
        if self._ended:
            return []
        fitted = self._fit(delta)
        self._text += fitted
        out = self._take(self._chunker.push(fitted), final=False)
        if not self._ended and len(fitted) < len(delta):
            out += self._stop("tokens", len(self._text))
        return self._hand_out(out)

    def flush(self, complete_only: bool = False) -> list[str]:
        """The stream ended: the rest worth speaking. ``complete_only`` (the LLM failed): whole
        sentences only; ``unfinished`` then says whether one was cut off."""
        if self._ended:
            return []
        out = self._take(self._chunker.flush(), final=True, complete_only=complete_only)
        if self._held and not self._ended and not complete_only:  # its rest was unspeakable (an emoji)
            out += self._held
            self._held = []
        if complete_only and not self._ended:
            rest = clean_text(self._text[self._released :])
            self.unfinished = self._released > self._sentence_start or is_speakable(rest)
        self._ended = True
        return self._hand_out(out)

    # -- internals ---------------------------------------------------------------------------

    def _hand_out(self, pieces: list[str]) -> list[str]:
        self.spoken += pieces
        return pieces

    def _fit(self, delta: str) -> str:
        """The part of ``delta`` within the token budget, ending between words."""
        if estimate_tokens(self._text + delta) <= self.limits.max_tokens:
            return delta
        low, high = 0, len(delta)  # longest prefix that fits: the estimate only grows with text
        while low < high:
            mid = (low + high + 1) // 2
            if estimate_tokens(self._text + delta[:mid]) <= self.limits.max_tokens:
                low = mid
            else:
                high = mid - 1
        whole = self._text + delta
        cut = len(self._text) + low
        while cut > len(self._text) and _is_word_char(whole[cut - 1]) and _is_word_char(whole[cut]):
            cut -= 1  # not half a word
        return whole[len(self._text) : cut]

    def _take(self, pieces: list[str], final: bool, complete_only: bool = False) -> list[str]:
        loop = self._guard(final)
        out: list[str] = []
        for index, piece in enumerate(pieces):
            start = self._text.find(piece, self._cursor)  # the chunker's pieces are verbatim slices
            end = start + len(piece)
            self._cursor = end
            if loop is not None and end > loop:
                break
            clause = not self._chunker_emitted and bool(self._chunker.first_clause_words)
            self._chunker_emitted = True
            last = final and index == len(pieces) - 1
            if self._completes(piece, end) or (last and not complete_only):  # the model ended here
                words = words_of(self._text[self._sentence_start : end])
                if self._repeats(words):
                    return out + self._stop("loop", self._sentence_start)
                out += [*self._held, piece]
                self._held = []
                self._sentences.append(words)
                self._released = self._sentence_start = end
                if len(self._sentences) >= self.limits.max_sentences:
                    if not last or loop is not None:  # else the reply simply ended at the limit
                        self._end("sentences")
                    return out
            elif clause and piece == self._chunker.clause and not self._doubles(words_of(piece)):
                out.append(piece)  # the opening clause, spoken early
                self.opening_clause = piece
                self._released = end
            else:
                self._held.append(piece)
        if loop is not None:
            out += self._stop("loop", loop)
        return out

    def _completes(self, piece: str, end: int) -> bool:
        """Does this piece end a sentence? A full stop does, and so does a line break: a list item
        or a heading is spoken as a sentence of its own, so it counts as one."""
        return _ends_sentence(piece) or bool(_LINE_END.match(self._text, end))

    def _repeats(self, words: list[str]) -> bool:
        """Is this sentence (nearly) one already said?"""
        return bool(words) and any(
            SequenceMatcher(None, words, said, autojunk=False).ratio() >= self.limits.repeat_similarity
            for said in self._sentences
        )

    def _doubles(self, words: list[str]) -> bool:
        """Does a phrase of two or more words come twice in a row ("I'm sorry, I'm sorry,")? Such
        a clause may be a loop starting: it waits for its sentence instead of being spoken early."""
        return any(
            words[i : i + n] == words[i + n : i + 2 * n]
            for n in range(2, self.limits.copy_words)
            for i in range(len(words) - 2 * n + 1)
        )

    def _guard(self, final: bool) -> int | None:
        """Where the text turns degenerate: a word that is none, or,
        judged on whole words, a phrase repeated in a row, a long stretch said a second time, or
        a sentence that never ends."""
        found = self._guard_words(final)
        if gibberish := _GIBBERISH.search(self._text):
            word = next(m for m in _WORD.finditer(self._text) if m.end() > gibberish.start())
            if found is None or word.start() < found:
                return word.start()
        return found

    def _guard_words(self, final: bool) -> int | None:
        matches = [m for m in _WORD.finditer(self._text) if final or self._word_done(m.end())]
        words = [m.group().lower().replace("’", "'") for m in matches]
        limits = self.limits
        for i in range(self._scanned, len(words)):
            self._scanned = i + 1
            gap = self._text[matches[i - 1].end() : matches[i].start()] if i else ""
            if any(c in _ENDERS or c == "\n" for c in gap):
                self._run_start = i
            for n in range(1, limits.copy_words):
                copies = limits.phrase_repeats + (n == 1)
                first = i + 1 - n * copies
                if first >= 0 and all(
                    words[first + k * n : first + (k + 1) * n] == words[i + 1 - n : i + 1]
                    for k in range(copies)
                ):
                    return self._after_punctuation(matches[first + n - 1].end())
            if i + 1 - limits.copy_words >= self._run_start:  # within a sentence: "tea leaves. You"
                gram = tuple(words[i + 1 - limits.copy_words : i + 1])
                if gram in self._seen:
                    return matches[i + 1 - limits.copy_words].start()
                self._seen[gram] = i
            if i - self._run_start + 1 > limits.max_sentence_words:
                return matches[i].start()
        return None

    def _word_done(self, end: int) -> bool:
        """Can the word ending at ``end`` still grow? Not once a space or mark follows it (an
        apostrophe alone may still become "I'm")."""
        after = self._text[end : end + 2]
        return bool(after) and after not in ("'", "’")

    def _after_punctuation(self, offset: int) -> int:
        """A phrase's end taken with the marks after it ("sorry," / "sorry."), not its spaces."""
        while (
            offset < len(self._text)
            and not self._text[offset].isspace()
            and not _WORD.match(self._text[offset])
        ):
            offset += 1
        return offset

    def _stop(self, reason: str, cut: int) -> list[str]:
        """End the reply at ``cut``: whole sentences before it are spoken (within the limits); an
        unfinished one only when nothing whole was said yet or its opening clause already was."""
        self._end(reason)
        cut = max(cut, self._released)
        clause_spoken = self._released > self._sentence_start
        out: list[str] = []
        region = self._text[self._released : cut]
        offset = self._released
        start = self._sentence_start
        pending: list[str] = []
        for piece in split_sentences(region):
            end = self._text.find(piece, offset) + len(piece)
            offset = end
            pending.append(piece)
            if not self._completes(piece, end):
                continue
            words = words_of(self._text[start:end])
            if len(self._sentences) >= self.limits.max_sentences or self._repeats(words):
                return out
            out += pending
            pending = []
            self._sentences.append(words)
            start = end
            clause_spoken = False
        tail = self._text[max(start, self._released) : cut]
        if len(self._sentences) < self.limits.max_sentences and (not self._sentences or clause_spoken):
            closed = _close(tail)
            if closed:
                out.append(closed)
        return out

    def _end(self, reason: str) -> None:
        self.stop_reason = reason
        self._ended = True


def _close(fragment: str) -> str | None:
    """An unfinished sentence made speakable: cut at its last clause break (if that leaves three
    words) rather than mid-clause, not ending on "and the", and with a full stop."""
    text = fragment.strip()
    breaks = [m.start() for m in _SOFT_BREAK.finditer(text) if len(_WORD.findall(text[: m.start()])) >= 3]
    if breaks:
        text = text[: breaks[-1]]
    while True:
        text = _TRAILING_PUNCT.sub("", text)
        last = list(_WORD.finditer(text))
        if not last or last[-1].end() != len(text) or last[-1].group().lower() not in _DANGLING:
            break
        text = text[: last[-1].start()]
    if not is_speakable(clean_text(text)):
        return None
    if _ends_sentence(text):
        return text
    return text + ("。" if _CJK_CHAR.match(text[-1]) else ".")
