"""Every problem of a configuration file, one line each with its key path, in our own words.

pydantic reports all problems of a document at once; this turns its list into lines such as
``security.rate_limit.burst: must be at least 1`` or ``securty: unknown key (did you mean 'security'?)``.
Its own wording ("Field required", "Value error, ...") and the input values never appear: a value may
be a password. A union (``str | int``) reports once per member; those reports are merged into one line.
"""

from __future__ import annotations

import difflib
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

# pydantic names a union member in the location (``max_size.str``); such a tag is not a key of ours
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "bytes", "none", "list", "tuple", "dict", "set"})

_PHRASES: dict[str, str] = {
    "missing": "is required",
    "extra_forbidden": "unknown key",
    "string_type": "must be a string",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "path_type": "must be a path (a string)",
    "none_required": "must be null",
    "string_too_short": "must not be empty",
    "string_unicode": "must be a string",
}


def key_path(location: Sequence[int | str], prefix: str = "") -> str:
    """``("agents", 0, "port")`` -> ``agents[0].port`` (after ``prefix``, itself a key path)."""
    text = prefix
    for item in location:
        text += f"[{item}]" if isinstance(item, int) else (f".{item}" if text else item)
    return text or "(top level)"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation may hold: itself, a union's members, a container's items."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _fields_at(model: type[BaseModel] | None, location: Sequence[int | str]) -> list[str]:
    """The key names the model accepts at ``location`` (an object's keys), for "did you mean"."""
    current: list[type[BaseModel]] = [model] if model is not None else []
    for item in location:
        if isinstance(item, int):
            continue  # an index into a list of models: the models stay the same
        following: list[type[BaseModel]] = []
        for candidate in current:
            field = candidate.model_fields.get(item)
            if field is not None:
                following.extend(_models_in(field.annotation))
        current = following
    return sorted({name for candidate in current for name in candidate.model_fields})


def _phrase(error: Any) -> str:
    kind = error["type"]
    context = error.get("ctx") or {}
    if kind == "value_error":
        return str(context.get("error", "is not valid")).replace("\n", " ")
    if kind in _PHRASES:
        return _PHRASES[kind]
    bounds = {
        "greater_than_equal": ("must be at least", "ge"),
        "greater_than": ("must be more than", "gt"),
        "less_than_equal": ("must be at most", "le"),
        "less_than": ("must be less than", "lt"),
    }
    if kind in bounds:
        words, key = bounds[kind]
        limit = context.get(key)
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"{words} {limit}"
    if kind == "string_pattern_mismatch":
        return f"must match {context.get('pattern')}"
    if kind == "literal_error":
        return f"must be one of {context.get('expected')}"
    if kind == "enum":
        return f"must be one of {context.get('expected')}"
    if kind in {"too_short", "too_long"}:
        words = "at least" if kind == "too_short" else "at most"
        limit = context.get("min_length" if kind == "too_short" else "max_length")
        return f"must have {words} {limit} {'item' if limit == 1 else 'items'}"
    if kind == "string_too_long":
        return f"must be at most {context.get('max_length')} characters"
    return "is not valid"


def describe_errors(error: ValidationError, model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """One ``key.path: problem`` line per problem of ``error``, in document order, merged per key."""
    lines: dict[str, list[str]] = {}
    items = error.errors(include_url=False, include_input=False)
    for item in items:
        location = [part for part in item["loc"] if not (isinstance(part, str) and "[" in part)]
        if item["type"] == "too_short" and any(_inside(other["loc"], item["loc"]) for other in items):
            continue  # pydantic also calls a list too short when its items were refused: say only why
        if item["type"] not in {"extra_forbidden", "missing"} and _is_tag(model, location):
            location = location[:-1]
        phrase = _phrase(item)
        if item["type"] == "extra_forbidden" and location:
            known = _fields_at(model, location[:-1])
            close = difflib.get_close_matches(str(location[-1]), known, n=1, cutoff=0.6)
            if close:
                phrase += f" (did you mean {close[0]!r}?)"
        where = key_path(location, prefix)
        phrases = lines.setdefault(where, [])
        if phrase not in phrases:
            phrases.append(phrase)
    return [f"{where}: {_join(phrases)}" for where, phrases in lines.items()]


def _inside(location: Sequence[int | str], container: Sequence[int | str]) -> bool:
    return len(location) > len(container) and tuple(location[: len(container)]) == tuple(container)


def _is_tag(model: type[BaseModel] | None, location: Sequence[int | str]) -> bool:
    """Is the last part of ``location`` a union member's tag rather than a key the model has?"""
    if not location or not isinstance(location[-1], str) or location[-1] not in _UNION_TAGS:
        return False
    return location[-1] not in _fields_at(model, location[:-1])


def _join(phrases: list[str]) -> str:
    """Merge a union's reports: "must be a string" + "must be a whole number" -> "... or a whole number"."""
    first, *rest = phrases
    for phrase in rest:
        first += " or " + phrase.removeprefix("must be ")
    return first

