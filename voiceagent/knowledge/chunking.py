"""Documents cut into chunks for retrieval: whole sentences, packed up to a size, with the last
sentences of each chunk repeated at the start of the next.

Whole sentences, because a chunk cut mid-sentence embeds half a fact and is read aloud as one; the
overlap, because the sentence that answers a question often leans on the one before it ("It
closes at ten." after "The kitchen opens at noon."). English and Chinese sentence ends are both
boundaries (the same splitter the voice uses); a sentence longer than a chunk is cut at its
clause marks, then between words.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, model_validator

from voiceagent.engines.tts.text import split_sentences

_CJK_END = re.compile(r"[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]$")
_CJK_START = re.compile(r"^[\u3000-\u303f\u3400-\u9fff\uff00-\uffef]")


class ChunkingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Small, for the embedded model: SmolLM2-135M answered 0.35 of the shipped English questions
    # right from 250-character passages, 0.10-0.15 from 400- and 800-character ones (it loses the
    # fact among the others), and the right document was found as often or more (bench
    # knowledge_answers). A larger model behind llm.base_url can take 800 and fewer chunks.
    max_chars: int = Field(250, ge=10, description="longest chunk, in characters")
    overlap_chars: int = Field(60, ge=0, description="sentences repeated from the previous chunk, at most")

    @model_validator(mode="after")
    def _overlap_smaller(self) -> ChunkingSettings:
        if self.overlap_chars >= self.max_chars:
            raise ValueError("overlap_chars must be smaller than max_chars")
        return self


def chunk_text(text: str, settings: ChunkingSettings | None = None) -> list[str]:
    """The chunks of ``text``, in order; none for text with no sentence in it."""
    settings = settings or ChunkingSettings()
    chunks: list[str] = []
    current: list[str] = []  # always ends with a sentence no chunk has yet
    for sentence in split_sentences(text, limit=settings.max_chars):
        if current and len(_join([*current, sentence])) > settings.max_chars:
            chunks.append(_join(current))
            current = _tail(current, settings.overlap_chars)
            while current and len(_join([*current, sentence])) > settings.max_chars:
                current.pop(0)  # the overlap gives way to the new sentence
        current.append(sentence)
    if current:
        chunks.append(_join(current))
    return chunks


def _tail(sentences: list[str], budget: int) -> list[str]:
    """The last sentences that fit in ``budget`` characters."""
    tail: list[str] = []
    for sentence in reversed(sentences):
        if len(_join([sentence, *tail])) > budget:
            break
        tail.insert(0, sentence)
    return tail


def _join(sentences: list[str]) -> str:
    """Sentences run together as written: no space between two Chinese ones."""
    out = ""
    for sentence in sentences:
        if out and not (_CJK_END.search(out) and _CJK_START.search(sentence)):
            out += " "
        out += sentence
    return out
