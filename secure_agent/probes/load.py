"""Load averages from ``<proc_root>/loadavg`` (Linux) or ``os.getloadavg`` (other Unix)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

from secure_agent.probes._fs import read_kernel_text


class LoadReading(NamedTuple):
    load_1: float | None
    load_5: float | None
    load_15: float | None
    reason: str | None


def _unavailable(reason: str) -> LoadReading:
    return LoadReading(None, None, None, reason)


def parse_loadavg(text: str) -> LoadReading:
    """``0.09 0.08 0.03 2/91 3668`` -> the three averages (raises ValueError)."""
    fields = text.split()
    if len(fields) < 3:
        raise ValueError("loadavg has fewer than three fields")
    values = [float(field) for field in fields[:3]]
    if any(not 0.0 <= value < 1e9 for value in values):
        raise ValueError("loadavg value out of range")
    return LoadReading(values[0], values[1], values[2], None)


def read_load(proc_root: Path = Path("/proc"), *, platform: str = sys.platform) -> LoadReading:
    if platform.startswith("linux"):
        try:
            return parse_loadavg(read_kernel_text(f"{proc_root}/loadavg"))  # no Path join per call
        except (OSError, ValueError) as exc:
            return _unavailable(f"{proc_root / 'loadavg'} unreadable: {type(exc).__name__}")
    if platform == "win32":
        # psutil emulates it on Windows with a sampling thread; an estimate is not a load average
        return _unavailable("Windows has no load average")
    try:
        one, five, fifteen = os.getloadavg()
    except (OSError, AttributeError):
        return _unavailable(f"no load average on {platform}")
    return LoadReading(one, five, fifteen, None)
