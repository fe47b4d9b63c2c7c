"""Probes of plain numeric metrics: a function that reads one number from the host, registered by name.

A metric that needs nothing special (no background state, no detail section) is one function here or in
its own module of this package, decorated with :func:`numeric_probe` under the metric's name in
``storage.catalog``; the agent runs every registered probe in its background thread (never in a call) and
answers the number as a top-level member of ``get_metrics``, or ``None`` with the probe's reason under
``unavailable``. Every module of this package is imported once by :func:`registered`, so a new probe
module needs no list to be edited.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from secure_agent.probes._text import INT32_MAX


@dataclass(frozen=True)
class Roots:
    """Where a probe reads the host from (fixture trees in tests)."""

    proc: Path
    sys: Path


Reading = float | int | str
"""A number, or why there is none (a short reason, as the other probes give it)."""
Probe = Callable[[Roots], Reading]

_PROBES: dict[str, Probe] = {}
NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


def numeric_probe(name: str) -> Callable[[Probe], Probe]:
    """Register the decorated function as the probe of metric ``name``."""
    if not name or not name[0].isalpha() or not set(name) <= NAME_CHARACTERS or len(name) > 64:
        raise ValueError(f"not a metric name: {name!r}")

    def register(probe: Probe) -> Probe:
        if _PROBES.get(name, probe) is not probe:
            raise ValueError(f"metric {name} has a probe already")
        _PROBES[name] = probe
        return probe

    return register


def registered() -> dict[str, Probe]:
    """Every registered probe, after importing every module of this package."""
    package = importlib.import_module("secure_agent.probes")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"secure_agent.probes.{module.name}")
    return dict(_PROBES)


def wire_value(reading: Reading) -> float | int | str:
    """What the answer carries: an XML-RPC int or a finite float, else the reason it cannot."""
    if isinstance(reading, str):
        return reading
    if isinstance(reading, bool) or not isinstance(reading, int | float):
        return "the probe returned no number"
    if isinstance(reading, int):
        return max(-INT32_MAX - 1, min(reading, INT32_MAX))
    return reading if math.isfinite(reading) else "the probe returned no finite number"
