"""The bounded reader and the validation every program's configuration goes through."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from jsonconfig.errors import describe_errors

MAX_CONFIG_BYTES = 1024 * 1024
"""No configuration comes close; a bigger file is refused before it is parsed."""

M = TypeVar("M", bound=BaseModel)


def read_object(path: Path, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``path``; anything else raises ``error`` with one line naming the file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise error(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: (top level): must be a JSON object")
    return data


def validate(path: Path, data: Any, model: type[M], error: type[Exception], key: str = "") -> M:
    """``data`` (the section ``key`` of ``path``, or the whole file) as ``model``; else every problem at once."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = describe_errors(exc, model, key)
        raise error("\n".join(f"{path}: {line}" for line in lines)) from exc


def load(path: Path, model: type[M], error: type[Exception]) -> M:
    """Read ``path`` and validate it as ``model``; relative paths inside stay as written."""
    return validate(path, read_object(path, error), model, error)
