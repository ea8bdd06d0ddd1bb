"""The intents outreach knows (``configs/intents.yaml``): what each means, how callers say it in
English and Chinese, and what the agent says about it (greet / ask templates with variables).

A mistake in the file is reported with the file, the line and the field, e.g.
``configs/intents.yaml:14: intents[1].ask: unknown variable {ordr_id} (known: name, order_id)``,
so an operator fixes it without reading a traceback. Rendering a template with a variable
missing fails the same way, naming the variable, instead of sending a half-filled prompt.
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class IntentsError(ValueError):
    """A problem in the intents file; the message names the file, the line and the field."""


class TemplateError(ValueError):
    """A template rendered without a variable it needs."""


def template_fields(template: str) -> set[str]:
    """The ``{variables}`` a template uses (format syntax; ``{{`` is a literal brace)."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"not a valid template ({exc})") from None


class Intent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = Field(min_length=1)
    variables: list[str] = ["name"]  # what the templates may use (checked before them)
    examples: dict[str, list[str]]  # language code → utterances
    greet: str = Field(min_length=1)  # said when the user comes back
    ask: str = Field(min_length=1)  # a follow-up question

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME.match(name):
            raise ValueError("must be lower_snake_case (a-z, 0-9, _), starting with a letter")
        return name

    @field_validator("examples")
    @classmethod
    def _examples(cls, examples: dict[str, list[str]]) -> dict[str, list[str]]:
        missing = {"en", "zh"} - examples.keys()
        if missing:
            raise ValueError(f"needs examples in {', '.join(sorted(missing))} (English and Chinese)")
        for language, utterances in examples.items():
            if not any(u.strip() for u in utterances):
                raise ValueError(f"{language}: needs at least one example utterance")
        return examples

    @field_validator("greet", "ask")
    @classmethod
    def _known_variables(cls, template: str, info: ValidationInfo) -> str:
        known = info.data.get("variables", [])
        unknown = template_fields(template) - set(known)
        if unknown:
            names = ", ".join(f"{{{u}}}" for u in sorted(unknown))
            raise ValueError(f"unknown variable {names} (known: {', '.join(known)})")
        return template

    def render(self, which: str, **values: Any) -> str:
        """The ``greet`` or ``ask`` text with ``values`` filled in; every variable must be given."""
        template = getattr(self, which) if which in ("greet", "ask") else None
        if template is None:
            raise ValueError(f"no template {which!r}: choose greet or ask")
        missing = template_fields(template) - values.keys()
        if missing:
            raise TemplateError(f"intent {self.name}.{which} needs {', '.join(sorted(missing))}")
        return str(template.format(**values))


class Intents(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    intents: list[Intent] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Intents:
        seen: set[str] = set()
        for intent in self.intents:
            if intent.name in seen:
                raise ValueError(f"intent {intent.name!r} is defined twice")
            seen.add(intent.name)
        return self

    def get(self, name: str) -> Intent:
        for intent in self.intents:
            if intent.name == name:
                return intent
        raise KeyError(f"no intent {name!r} (known: {', '.join(i.name for i in self.intents)})")


def _line_of(root: yaml.Node, path: tuple[int | str, ...]) -> int:
    """1-based line of what ``path`` names (a key's own line for mapping entries), as deep as the
    path exists in the composed YAML document."""
    node, line = root, root.start_mark.line
    for step in path:
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if getattr(k, "value", None) == step), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
            line = node.start_mark.line
        else:
            break
    return int(line) + 1


def _path_text(path: tuple[int | str, ...]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else str(step))
    return text


def load_intents(path: Path) -> Intents:
    """Read and check the intents file; IntentsError names where the first problem is."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise IntentsError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(source, Loader=yaml.SafeLoader)
        data = yaml.safe_load(source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise IntentsError(f"{path}{where}: not valid YAML: {problem}") from None
    if root is None or not isinstance(data, dict):
        raise IntentsError(f"{path}:1: expected a mapping with an 'intents' list")
    try:
        return Intents.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        location: tuple[int | str, ...] = tuple(error["loc"])
        line = _line_of(root, location)
        message = str(error["msg"]).removeprefix("Value error, ")
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise IntentsError(f"{path}:{line}: {_path_text(location) or 'intents'}: {message}{more}") from None
