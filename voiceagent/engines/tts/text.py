"""Text before it reaches a voice: markup and symbols removed, cut into sentence-sized pieces.

LLM replies arrive as markdown with emoji; read literally a voice says "asterisk asterisk" or
spells out an emoji's name. Sentences are the unit of synthesis because the first one can be
spoken while the rest is still being written or synthesized, so both the batch splitter and the
streaming `SentenceChunker` share one boundary rule.
"""

from __future__ import annotations

import html
import re
import unicodedata

from voiceagent.engines.base import BadText

# Longest piece handed to a voice in one call: first-audio latency grows with sentence length.
MAX_SENTENCE_CHARS = 200
# Where a first sentence may be split for an early start, as a speaker would pause: after a clause
# mark (group 1), or before a dash or a conjunction that opens a clause (group 2). Not before
# "and", "so" or "or": they join words as often as clauses ("salt and pepper", "so happy").
_CLAUSE_BREAK = re.compile(
    r"([,;:](?=\s)|[，；：、])|(\s+(?:[—–]|--)\s|\s+(?=(?:but|because|although|though|which|unless|whereas)\s))",
    re.IGNORECASE,
)

_CODE_FENCE = re.compile(r"^[ \t]*(```|~~~)[^\n]*$", re.MULTILINE)
_IMAGE_OR_LINK = re.compile(r"!?\[([^\]\n]*)\]\([^)\n]*\)")
_BARE_URL = re.compile(r"<?(https?://\S+?)>?(?=[\s)]|$)")
_HTML_TAG = re.compile(r"</?[A-Za-z][^<>\n]*>|<!--.*?-->", re.DOTALL)
_BREAK_TAG = re.compile(r"<br\s*/?>|</p>", re.IGNORECASE)
_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+", re.MULTILINE)
_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*+•][ \t]+|\d{1,3}[.)][ \t]+|>[ \t]?)", re.MULTILINE)
_RULE = re.compile(r"^[ \t]*([-*_=])(?:[ \t]*\1){2,}[ \t]*$", re.MULTILINE)
_EMPHASIS = (
    re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1", re.DOTALL),
    re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"),
    re.compile(r"(?<![\w_])_(?=\S)([^_\n]+?)(?<=\S)_(?![\w_])"),
    re.compile(r"~~(?=\S)(.+?)(?<=\S)~~", re.DOTALL),
)
_INLINE_CODE = re.compile(r"`+([^`\n]*)`+")
_TABLE_EDGE = re.compile(r"^[ \t]*\||\|[ \t]*$", re.MULTILINE)
_TABLE_PIPE = re.compile(r"[ \t]*\|[ \t]*")
# Markup leftovers a voice would read out by name.
_LEFTOVER_MARKUP = re.compile(r"[*_`~#|^\\]+|-{2,}|={2,}")
_SPACES = re.compile(r"[^\S\n]+")
_SPACE_BEFORE_PUNCT = re.compile(r" +(?=[.,!?;:])")
_BLANK_LINES = re.compile(r"\s*\n\s*")

# Unicode categories with nothing to say: emoji and pictographs (So), modifier symbols (Sk),
# format characters such as zero-width joiners (Cf), controls, private use, unassigned.
_UNSPEAKABLE_CATEGORIES = frozenset({"So", "Sk", "Cf", "Cc", "Co", "Cs", "Cn"})
_SPEAKABLE_SYMBOLS = frozenset("°\n\t")
_EMOJI_MODIFIERS = re.compile("[\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff]")


def strip_markup(text: str) -> str:
    """Markdown and HTML reduced to the words a reader would see; newlines kept as breaks."""
    text = _BREAK_TAG.sub("\n", text)
    text = _HTML_TAG.sub("", text)
    text = html.unescape(text)
    text = _CODE_FENCE.sub("", text)
    text = _IMAGE_OR_LINK.sub(r"\1", text)
    text = _BARE_URL.sub(r"\1", text)
    text = _RULE.sub("", text)
    text = _HEADING.sub("", text)
    text = _LIST_MARKER.sub("", text)
    for pattern in _EMPHASIS:
        text = pattern.sub(lambda m: m.group(m.lastindex or 0), text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _TABLE_PIPE.sub(", ", _TABLE_EDGE.sub("", text))
    return _LEFTOVER_MARKUP.sub(" ", text)


def strip_unspeakable(text: str) -> str:
    text = _EMOJI_MODIFIERS.sub("", text)
    return "".join(
        " " if unicodedata.category(c) in _UNSPEAKABLE_CATEGORIES and c not in _SPEAKABLE_SYMBOLS else c
        for c in text
    )


def clean_text(text: str) -> str:
    """Speakable text: markup and emoji gone, spaces collapsed, one line per paragraph/list item."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = strip_unspeakable(strip_markup(text))
    text = _SPACE_BEFORE_PUNCT.sub("", _SPACES.sub(" ", text))
    return _BLANK_LINES.sub("\n", text).strip()


def is_speakable(text: str) -> bool:
    return any(unicodedata.category(c)[0] in "LN" for c in text)


# -- sentence boundaries ------------------------------------------------------------------------

_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "a.m", "p.m"}
    | {"approx", "dept", "fig", "inc", "ltd", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug"}
    | {"sep", "sept", "oct", "nov", "dec"}
)
_CJK_ENDERS = "。！？!?…"  # ! ? … only count as CJK enders when they follow a CJK character
_ENDER = re.compile(r"(?:[.!?]+|…+|[。！？]+)[\"'”’)\]」』】*_~]*|\n+")
_WORD_BEFORE = re.compile(r"([\w.]+)$")
_SOFT_BREAK = re.compile(r"[,;:，；：、—–)](?=\s|$)|[，；：、]")


def _is_cjk(char: str) -> bool:
    return "\u3000" <= char <= "\u9fff" or "\uac00" <= char <= "\ud7af" or "\uff00" <= char <= "\uffef"


def _boundary_after(text: str, match: re.Match[str], final: bool) -> bool | None:
    """Does ``match`` end a sentence? None when the text after it has not arrived yet."""
    punct, end = match.group(), match.end()
    if punct.startswith("\n") or punct[0] in "。！？":
        return True
    if match.start() > 0 and _is_cjk(text[match.start() - 1]) and punct[0] in _CJK_ENDERS:
        return True
    rest = text[end:]
    if not rest:
        return True if final else None
    if not rest[0].isspace():
        return False  # 3.5, e.g., U.S., a URL
    if "!" in punct or "?" in punct:
        return True
    # A period or an ellipsis: the word before it and the next word decide.
    word = _WORD_BEFORE.search(text, 0, match.start())
    if word:
        token = word.group(1)
        if token.lower().rstrip(".") in _ABBREVIATIONS or (len(token) == 1 and token.isupper()):
            return False
        line_start = text.rfind("\n", 0, word.start()) + 1
        if token.isdigit() and not text[line_start : word.start()].strip():
            return False  # "2. Next step": a list number, not the end of a sentence
    following = rest.lstrip()
    if not following:
        return True if final else None
    return not following[0].islower()


def _next_boundary(text: str, start: int, final: bool) -> int | None:
    """End of the first complete sentence at or after ``start``; None if none is certain yet."""
    for match in _ENDER.finditer(text, start):
        if not is_speakable(text[start : match.start()]) and not match.group().startswith("\n"):
            continue  # "..." or "?!" alone does not make a sentence
        decided = _boundary_after(text, match, final)
        if decided is None:
            return None
        if decided:
            return match.end()
    return len(text) if final and text[start:].strip() else None


def split_long(sentence: str, limit: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Cut at the last comma/semicolon that leaves a reasonable piece, else at a space, else hard.

    Every piece is at most ``limit`` characters and no character but spaces is lost: the voice's
    memory and first-audio wait grow with the longest piece, never with the whole text.
    """
    pieces: list[str] = []
    rest = sentence.strip()
    while len(rest) > limit:
        cut = 0
        # Over the whole rest, not a window of it: "3,000" cut at the window's end is no clause.
        for m in _SOFT_BREAK.finditer(rest):
            if m.end() > limit:
                break
            if m.end() >= limit // 3:
                cut = m.end()
        if not cut:
            space = rest.rfind(" ", limit // 3, limit + 1)
            cut = space if space > 0 else limit
        while cut > 1 and not is_speakable(rest[cut:]):
            # Only marks would be left ("word?" one over the limit), which prepare_text drops as
            # unspeakable: leave a word (or a letter) with them.
            space = rest.rfind(" ", 0, cut)
            cut = space if space > 0 else cut - 1
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return [p for p in pieces if p]


def split_sentences(text: str, limit: int = MAX_SENTENCE_CHARS) -> list[str]:
    sentences: list[str] = []
    start = 0
    while start < len(text):
        end = _next_boundary(text, start, final=True)
        if end is None:
            break
        sentences.extend(split_long(text[start:end], limit))
        start = end
    return sentences


def prepare_text(text: str, max_chars: int, limit: int = MAX_SENTENCE_CHARS) -> list[str]:
    """What a TTS backend speaks: cleaned sentences no longer than ``limit``, or BadText."""
    if not isinstance(text, str):
        raise BadText(f"text must be str, not {type(text).__name__}")
    if len(text) > max_chars:
        raise BadText(f"text is {len(text)} characters, over the {max_chars} limit: send it in sentences")
    sentences = [s for s in split_sentences(clean_text(text), limit) if is_speakable(s)]
    if not sentences:
        raise BadText(f"nothing speakable in {text[:60]!r} after removing markup and symbols")
    return sentences


class SentenceChunker:
    """LLM deltas in, whole sentences out as soon as each one ends.

    A period is only decided once the next word is seen ("Dr. Smith", "e.g. this", "3.5"), which
    costs one token of latency; text that never ends a sentence is cut at ``limit`` characters so a
    run-on reply still starts speaking. Pieces with nothing speakable (a lone emoji, a code fence)
    are dropped here so the TTS is never handed them.
    """

    def __init__(self, limit: int = MAX_SENTENCE_CHARS, first_clause_words: int | None = None) -> None:
        """``first_clause_words``: before anything has been emitted, an opening clause of at least
        this many words (up to a comma, semicolon or colon, or before a dash or "but", "because",
        "which"...) is emitted on its own, so speech starts before a long first sentence is
        complete (the first sentence is the one the caller waits for); ``clause`` is that piece."""
        self.limit = limit
        self.first_clause_words = first_clause_words
        self.clause: str | None = None
        self._emitted = False
        self._buffer = ""

    def push(self, delta: str) -> list[str]:
        self._buffer += delta
        out = self._drain(final=False)
        if not out and not self._emitted and self.first_clause_words:
            out = self._first_clause()
        self._emitted = self._emitted or bool(out)
        return out

    def _first_clause(self) -> list[str]:
        for match in _CLAUSE_BREAK.finditer(self._buffer):
            cut = match.end() if match.group(1) else match.start()
            if len(self._buffer[:cut].split()) < (self.first_clause_words or 0):
                continue
            piece, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if not is_speakable(clean_text(piece)):
                return []
            self.clause = piece
            return [piece]
        return []

    def flush(self) -> list[str]:
        """The rest of the reply once the LLM has finished; the chunker is empty afterwards."""
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[str]:
        out: list[str] = []
        while True:
            end = _next_boundary(self._buffer, 0, final)
            if end is None:
                if final or len(self._buffer.strip()) <= self.limit:
                    break
                # No end in sight: speak what fits, keep the rest for the next boundary.
                first = split_long(self._buffer, self.limit)[0]
                end = self._buffer.index(first) + len(first)
            piece, self._buffer = self._buffer[:end].strip(), self._buffer[end:]
            if piece and is_speakable(clean_text(piece)):
                out.append(piece)
            if not self._buffer.strip():
                break
        if final:
            self._buffer = ""
        return out
