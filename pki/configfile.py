"""Loading JSON configuration files into validated models, with errors that name file and key.

A file with several mistakes gets all of them at once (:mod:`pki.configerrors` words them): the
:class:`~pki.errors.ConfigError` holds one ``FILE: key.path: problem`` line per mistake.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from pki.configerrors import describe_errors
from pki.errors import ConfigError

_MAX_CONFIG_BYTES = 1024 * 1024

M = TypeVar("M", bound=BaseModel)


def load_config(path: Path, model: type[M]) -> M:
    """Read ``path`` as JSON and validate it as ``model``; relative paths inside stay as written.

    Raises :class:`ConfigError` whose message is ``FILE: key.path: problem``, one line per problem.
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
        raise ConfigError("\n".join(f"{path}: {line}" for line in describe_errors(exc, model))) from exc
