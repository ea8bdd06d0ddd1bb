"""Documents to plain text, and the reasons a document is refused."""

from __future__ import annotations

import pytest

from voiceagent.knowledge.parsing import DocumentRefused, parse_document

HTML = b"""<!DOCTYPE html><html><head><title>Opening hours</title>
<style>p { color: red }</style><script>var x = "<p>not text</p>";</script></head>
<body><nav>Home | Menu</nav><h1>Hours</h1><p>We open at <b>noon</b>&nbsp;every day.</p>
<ul><li>Kitchen closes at ten &amp; the bar at midnight.</li><li>Closed on Mondays.</li></ul></body></html>"""

MARKDOWN = """# Menu

Our **risotto** is [vegetarian](https://example.com/veg).

- Lasagne
- Tiramisu

```
code is not prose
```
"""


def test_html_keeps_what_a_reader_sees_as_paragraphs() -> None:
    doc = parse_document(HTML, filename="hours.html")
    assert doc.kind == "html" and doc.title == "Opening hours"
    paragraphs = doc.text.split("\n\n")
    assert "We open at noon every day." in paragraphs
    assert "Kitchen closes at ten & the bar at midnight." in paragraphs
    assert "var x" not in doc.text and "color" not in doc.text and "not text" not in doc.text


def test_markdown_loses_its_markup_and_gives_its_heading_as_title() -> None:
    doc = parse_document(MARKDOWN.encode(), content_type="text/markdown; charset=utf-8")
    assert doc.kind == "markdown" and doc.title == "Menu"
    assert "Our risotto is vegetarian." in doc.text and "Tiramisu" in doc.text
    assert "**" not in doc.text and "https://" not in doc.text and "```" not in doc.text


def test_plain_text_in_utf8_with_bom_or_gb18030_and_its_first_line_as_title() -> None:
    text = "营业时间\n\n我们中午开门。周一休息。"
    for data in ("\ufeff" + text).encode(), text.encode("gb18030"):
        doc = parse_document(data, filename="hours.txt")
        assert doc.kind == "text" and doc.title == "营业时间" and doc.text == text
    assert parse_document(b"<html><body><p>Sniffed.</p></body></html>").kind == "html"  # no name, no type


@pytest.mark.parametrize(
    ("data", "filename", "reason"),
    [
        (b"%PDF-1.7 ...", "menu.pdf", "unsupported"),
        (b"PK\x03\x04...", "menu.docx", "unsupported"),
        (b"hello", "menu.exe", "unsupported"),
        (b"\x00\x01\x02binary", "", "not_text"),
        (b"\xff\xfe\xfa\xfb\xfc", "a.txt", "not_text"),
        (b"", "a.txt", "empty"),
        (b"  \n\n ** ## --- ", "a.md", "empty"),
        (b"<html><script>only();</script></html>", "a.html", "empty"),
    ],
)
def test_documents_that_cannot_be_read_are_refused_with_a_reason(
    data: bytes, filename: str, reason: str
) -> None:
    with pytest.raises(DocumentRefused) as refused:
        parse_document(data, filename=filename)
    assert refused.value.reason == reason and refused.value.detail


def test_a_document_over_the_limit_is_refused_before_it_is_read() -> None:
    with pytest.raises(DocumentRefused, match="too_large"):
        parse_document(b"x" * 101, filename="big.txt", max_bytes=100)
