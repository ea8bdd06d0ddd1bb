"""Documents in, plain text out: plain text, Markdown and HTML, in UTF-8 (or GB18030, which
Chinese files often are in).

What cannot be read is refused with a reason the document's state and the dead-letter entry
carry (``DocumentRefused.reason``): an unsupported kind (PDF, Word, images), bytes that are not
text, a document over the size limit, or one with no words once its markup is gone. PDF waits for
a well-kept parser worth the dependency; saying so beats indexing garbage.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict

from voiceagent.engines.tts.text import is_speakable, strip_markup

Kind = Literal["text", "markdown", "html"]
RefusalReason = Literal["unsupported", "not_text", "too_large", "empty"]

MAX_DOCUMENT_BYTES = 10 * 1024 * 1024
_EXTENSIONS: dict[str, Kind] = {
    ".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html",
}  # fmt: skip
_CONTENT_TYPES: dict[str, Kind] = {"text/plain": "text", "text/markdown": "markdown", "text/html": "html"}
# Formats recognised by their first bytes, refused by name rather than as "not text".
_MAGIC = {
    b"%PDF": "PDF",
    b"PK\x03\x04": "a ZIP container (docx, xlsx, odt...)",
    b"\x89PNG": "PNG",
    b"\xff\xd8\xff": "JPEG",
}
_HTML_START = re.compile(rb"^\s*(?:<!doctype html|<html)", re.IGNORECASE)
_MD_HEADING = re.compile(r"^[ \t]*#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_BLANK_RUNS = re.compile(r"\n{3,}")


class DocumentRefused(ValueError):
    def __init__(self, reason: RefusalReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ParsedDocument(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Kind
    title: str
    text: str  # paragraphs separated by blank lines


def parse_document(
    data: bytes, *, filename: str = "", content_type: str = "", max_bytes: int = MAX_DOCUMENT_BYTES
) -> ParsedDocument:
    """The document's title and text, or DocumentRefused saying why not."""
    if len(data) > max_bytes:
        raise DocumentRefused("too_large", f"{len(data)} bytes, over the {max_bytes}-byte limit")
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            raise DocumentRefused("unsupported", f"{name} is not supported (text, Markdown or HTML)")
    kind = _kind(data, filename, content_type)
    text = _decode(data)
    if kind == "html":
        title, body = _html_text(text)
    elif kind == "markdown":
        title, body = _markdown_title(text), strip_markup(text)
    else:
        title, body = "", text
    body = _BLANK_RUNS.sub("\n\n", body.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not is_speakable(body):
        raise DocumentRefused("empty", "no words in it once its markup is gone")
    if not title:
        title = next((line.strip() for line in body.splitlines() if line.strip()), "")[:200]
    return ParsedDocument(kind=kind, title=title, text=body)


def _kind(data: bytes, filename: str, content_type: str) -> Kind:
    media = content_type.split(";")[0].strip().lower()
    if media in _CONTENT_TYPES:
        return _CONTENT_TYPES[media]
    suffix = PurePosixPath(filename.lower()).suffix
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    if suffix or (media and media != "application/octet-stream"):
        raise DocumentRefused("unsupported", f"{filename or media!r} is not text, Markdown or HTML")
    return "html" if _HTML_START.match(data[:512]) else "text"


def _decode(data: bytes) -> str:
    if b"\x00" in data[:8192]:
        raise DocumentRefused("not_text", "binary data (NUL bytes)")
    for encoding in ("utf-8-sig", "gb18030"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DocumentRefused("not_text", "neither UTF-8 nor GB18030 text")


def _markdown_title(text: str) -> str:
    heading = _MD_HEADING.search(text)
    return strip_markup(heading.group(1)).strip() if heading else ""


class _TextOfHtml(HTMLParser):
    """The words a reader sees: no script, style or head; block elements as paragraph breaks."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head", "svg"})
    _BLOCK = frozenset(
        {"p", "div", "section", "article", "li", "ul", "ol", "tr", "table", "br", "hr", "blockquote", "pre"}
        | {"h1", "h2", "h3", "h4", "h5", "h6", "header", "footer", "main", "nav", "aside", "dd", "dt"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self.heading = ""
        self._skipping = 0
        self._in: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        if tag in self._BLOCK:
            self.parts.append("\n\n")
        self._in.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        if tag in self._BLOCK:
            self.parts.append("\n\n")
        if tag in self._in:
            del self._in[len(self._in) - 1 - self._in[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        current = self._in[-1] if self._in else ""
        if current == "title":
            self.title += data
        if self._skipping:
            return
        if current == "h1" and not self.heading:
            self.heading = data.strip()
        self.parts.append(re.sub(r"\s+", " ", data))  # \s: &nbsp; too


def _html_text(text: str) -> tuple[str, str]:
    parser = _TextOfHtml()
    parser.feed(text)
    parser.close()
    paragraphs = [p.strip() for p in "".join(parser.parts).split("\n\n")]
    return (parser.title.strip() or parser.heading), "\n\n".join(p for p in paragraphs if p)
