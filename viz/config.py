"""What viz needs from the collector's configuration file: its ``storage`` and ``thresholds`` sections.

viz does not import the collector, so it validates only these two sections (``storage`` with
:class:`storage.config.StorageConfig`, exactly as the collector does; ``thresholds`` leniently, for the
lines drawn on the plots) and ignores every other key of the file. Paths inside stay as written. Every
mistake of the two sections is reported at once, worded as the other programs word them (:mod:`storage.configerrors`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storage.config import StorageConfig
from storage.configerrors import describe_errors
from viz.errors import VizConfigError

MAX_CONFIG_BYTES = 1024 * 1024
DEFAULT_TEMPERATURE_THRESHOLD = 70.0
"""The predecessor's temperature threshold, used when neither the config nor the agents give one."""


class PlotThresholds(BaseModel):
    """The collector's ``thresholds`` section as far as the plots draw it (same defaults as the collector)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    cpu_usage: float = Field(default=80, ge=0, le=100)
    cpu_temperature: float | None = Field(default=None, ge=0, le=150)
    system_load: float = Field(default=2.0, ge=0)
    memory_usage: float = Field(default=85, ge=0, le=100)
    disk_usage: float = Field(default=90, ge=0, le=100)


class VizSettings(NamedTuple):
    storage: StorageConfig
    thresholds: PlotThresholds


def _problems(key: str, model: type[BaseModel], data: Any) -> tuple[Any, list[str]]:
    """The validated section, or ``None`` and one ``key.path: problem`` line per mistake."""
    try:
        return model.model_validate(data), []
    except ValidationError as exc:
        return None, describe_errors(exc, model, key)


def load_settings(path: Path) -> VizSettings:
    """Read the collector config at ``path``; raise :class:`VizConfigError` naming the file and key."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise VizConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise VizConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VizConfigError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise VizConfigError(f"{path}: (top level): must be a JSON object")
    wrong = [key for key in ("storage", "thresholds") if key in data and not isinstance(data[key], dict)]
    if wrong:
        raise VizConfigError("\n".join(f"{path}: {key}: must be a JSON object" for key in wrong))
    storage, problems = _problems("storage", StorageConfig, data.get("storage", {}))
    thresholds, more = _problems("thresholds", PlotThresholds, data.get("thresholds", {}))
    if problems or more:
        raise VizConfigError("\n".join(f"{path}: {line}" for line in problems + more))
    return VizSettings(storage=storage, thresholds=thresholds)
