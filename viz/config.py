"""What viz needs from the collector's configuration file: its ``storage`` and ``thresholds`` sections.

viz does not import the collector, so it validates only these two sections (``storage`` with
:class:`storage.config.StorageConfig`, exactly as the collector does; ``thresholds`` leniently, for the
lines drawn on the plots) and ignores every other key of the file. Paths inside stay as written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from storage.config import StorageConfig
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


def _key_path(prefix: str, location: tuple[int | str, ...]) -> str:
    parts = [prefix]
    for item in location:
        parts.append(f"[{item}]" if isinstance(item, int) else f".{item}")
    return "".join(parts)


def _validate(path: Path, key: str, model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        # Only the key and pydantic's message: the input value could be a password.
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        where = _key_path(key, tuple(first["loc"]))
        raise VizConfigError(f"{path}: {where}: {message}".replace("\n", " ")) from exc


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
    for key in ("storage", "thresholds"):
        if key in data and not isinstance(data[key], dict):
            raise VizConfigError(f"{path}: {key}: must be a JSON object")
    storage = _validate(path, "storage", StorageConfig, data.get("storage", {}))
    thresholds = _validate(path, "thresholds", PlotThresholds, data.get("thresholds", {}))
    return VizSettings(storage=storage, thresholds=thresholds)
