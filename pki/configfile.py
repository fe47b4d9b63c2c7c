"""Loading JSON configuration files into validated models, with errors that name file and key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from pki.errors import ConfigError

_MAX_CONFIG_BYTES = 1024 * 1024

M = TypeVar("M", bound=BaseModel)


def _key_path(location: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in location:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + item)
    return "".join(parts) or "(top level)"


def describe_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as ``key.path: message``, on one line."""
    first = error.errors()[0]
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    return f"{_key_path(tuple(first['loc']))}: {message}".replace("\n", " ")


def load_config(path: Path, model: type[M]) -> M:
    """Read ``path`` as JSON and validate it as ``model``; relative paths inside stay as written.

    Raises :class:`ConfigError` whose message is ``FILE: key.path: problem``.
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: (top level): must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {describe_validation_error(exc)}") from exc
