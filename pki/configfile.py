"""Loading a program's JSON configuration file into its validated model (:mod:`jsonconfig`, with pki's error)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

import jsonconfig
from pki.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def load_config(path: Path, model: type[M]) -> M:
    """Read ``path`` as JSON and validate it as ``model``; relative paths inside stay as written.

    Raises :class:`ConfigError` whose message is ``FILE: key.path: problem``, one line per problem.
    """
    return jsonconfig.load(path, model, ConfigError)
