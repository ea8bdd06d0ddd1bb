"""Request errors that name the field and say what is wrong with it, for every API.

pydantic's own ``str(ValidationError)`` starts with "1 validation error for OfferRequest": it
names our class, not the client's field. Here each error is ``<field>: <why>``, all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from fastapi import HTTPException
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

_JSON_KINDS = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _where(loc: tuple[int | str, ...], root: str) -> str:
    """``("items", 0, "name")`` -> ``items[0].name``; an error about the whole input -> ``root``."""
    where = ""
    for part in loc:
        where += f"[{part}]" if isinstance(part, int) else f".{part}" if where else str(part)
    return where or root


def _json_kind(value: Any) -> str:
    return _JSON_KINDS.get(
        type(value), "a number" if isinstance(value, int | float) else type(value).__name__
    )


def describe_validation_error(exc: ValidationError, root: str = "body") -> str:
    """Every error as ``field: why``, joined by "; " (e.g. ``sdp: Field required``); an error
    about the whole input is reported against ``root``."""
    return describe_errors(exc.errors(include_url=False), root)


def describe_errors(errors: Iterable[Mapping[str, Any]], root: str = "body") -> str:
    """As :func:`describe_validation_error`, for pydantic's error dicts however obtained (e.g.
    FastAPI's RequestValidationError on query parameters)."""
    parts = []
    for error in errors:
        why = str(error["msg"])
        if error["type"] in ("model_type", "dict_type"):
            why = f"{why.removesuffix('.')}, got {_json_kind(error.get('input'))}"
        parts.append(f"{_where(tuple(error['loc']), root)}: {why}")
    return "; ".join(parts)


def parse_json_body(model: type[M], body: bytes, what: str = "request") -> M:
    """The request body as ``model``, or a 400 that names every bad field (invalid JSON
    included, with its position)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise HTTPException(400, f"bad {what}: {describe_validation_error(exc)}") from None
