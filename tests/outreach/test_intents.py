"""The intents file: the shipped one loads; every mistake names the file, the line and the field;
a template rendered without a variable it needs is refused, never half filled."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceagent.outreach.intents import IntentsError, TemplateError, load_intents

SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "intents.yaml"

GOOD = """\
intents:
  - name: order_status
    description: Where is my order.
    variables: [name, item]
    examples:
      en: ["Where is my order?"]
      zh: ["我的订单到哪里了？"]
    greet: "Welcome back, {name}. Your {item}?"
    ask: "Hi {name}, did your {item} arrive?"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "intents.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_intents_load_with_both_languages() -> None:
    intents = load_intents(SHIPPED)
    assert {i.name for i in intents.intents} >= {"order_status", "book_appointment", "refund"}
    for intent in intents.intents:
        assert intent.examples["en"] and intent.examples["zh"]
    order = intents.get("order_status")
    assert order.render("ask", name="Ann", item="jacket") == "Hi Ann, did your jacket arrive all right?"


def test_a_missing_variable_is_refused_by_name(tmp_path: Path) -> None:
    intent = load_intents(write(tmp_path, GOOD)).get("order_status")
    with pytest.raises(TemplateError, match=r"order_status.greet needs item"):
        intent.render("greet", name="Ann")


MISTAKES = {  # the change to GOOD, and where and what the error says
    "unknown-variable": (
        ("{item}?", "{itm}?"),
        r":8: intents\[0\].greet: unknown variable \{itm\} \(known: name, item\)",
    ),
    "no-chinese": (
        ('      zh: ["我的订单到哪里了？"]\n', ""),
        r":5: intents\[0\].examples: needs examples in zh",
    ),
    "bad-name": (
        ("name: order_status", "name: Order Status"),
        r":2: intents\[0\].name: must be lower_snake_case",
    ),
    "no-description": (
        ("    description: Where is my order.\n", ""),
        r":2: intents\[0\].description: Field required",
    ),
    "unknown-key": (
        ("    greet:", "    colour: blue\n    greet:"),
        r":8: intents\[0\].colour: Extra inputs",
    ),
    "bad-yaml": (
        ('en: ["Where is my order?"]', 'en: ["Where is my order?"'),
        r":7: not valid YAML",
    ),
}


@pytest.mark.parametrize(("change", "expected"), MISTAKES.values(), ids=MISTAKES.keys())
def test_a_mistake_names_the_line_and_the_field(
    tmp_path: Path, change: tuple[str, str], expected: str
) -> None:
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(IntentsError, match=expected) as raised:
        load_intents(path)
    assert str(raised.value).startswith(str(path))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD + GOOD.split("intents:\n", 1)[1], r":1: intents: .*'order_status' is defined twice"),
        ("intents: []\n", r":1: intents: List should have at least 1 item"),
        ("- just a list\n", r":1: expected a mapping with an 'intents' list"),
    ],
    ids=["twice", "empty", "not-a-mapping"],
)
def test_a_broken_whole_names_the_file(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(IntentsError, match=expected):
        load_intents(write(tmp_path, text))


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(IntentsError, match="cannot read"):
        load_intents(tmp_path / "nope.yaml")
