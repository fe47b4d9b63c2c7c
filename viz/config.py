"""What viz needs from the collector's configuration file: its ``storage`` and ``thresholds`` sections.

viz does not import the collector, so it validates only these two sections (``storage`` with
:class:`storage.config.StorageConfig`, exactly as the collector does; ``thresholds`` leniently, for the
lines drawn on the plots) and ignores every other key of the file. Paths inside stay as written. Every
mistake of the two sections is reported at once, worded as the other programs word them (:mod:`jsonconfig`).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import jsonconfig
from storage.config import StorageConfig
from storage.thresholds import DEFAULT_TEMPERATURE, LenientThresholds
from viz.errors import VizConfigError

DEFAULT_TEMPERATURE_THRESHOLD = DEFAULT_TEMPERATURE
PlotThresholds = LenientThresholds
"""The collector's ``thresholds`` section as the plots draw it: the collector's own model and defaults
(storage.thresholds), ignoring keys viz does not draw."""


class VizSettings(NamedTuple):
    storage: StorageConfig
    thresholds: PlotThresholds


def load_settings(path: Path) -> VizSettings:
    """Read the collector config at ``path``; raise :class:`VizConfigError` naming the file and key."""
    data = jsonconfig.read_object(path, VizConfigError)
    wrong = [key for key in ("storage", "thresholds") if key in data and not isinstance(data[key], dict)]
    if wrong:
        raise VizConfigError("\n".join(f"{path}: {key}: must be a JSON object" for key in wrong))
    problems: list[str] = []
    try:
        storage = jsonconfig.validate(path, data.get("storage", {}), StorageConfig, VizConfigError, "storage")
    except VizConfigError as exc:
        problems.append(str(exc))
    try:
        thresholds = jsonconfig.validate(
            path, data.get("thresholds", {}), PlotThresholds, VizConfigError, "thresholds"
        )
    except VizConfigError as exc:
        problems.append(str(exc))
    if problems:
        raise VizConfigError("\n".join(problems))
    return VizSettings(storage=storage, thresholds=thresholds)
