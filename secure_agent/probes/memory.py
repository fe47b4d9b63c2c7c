"""Memory and swap from ``<proc_root>/meminfo`` (Linux) or psutil (elsewhere).

``used`` is ``total - available`` and ``percent`` is ``used / total``: memory the kernel could not give
to a new program without swapping, which is what an operator means by "memory usage".
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import NamedTuple

import psutil

from secure_agent.probes._fs import read_kernel_text


class MemoryReading(NamedTuple):
    total: float
    available: float
    used: float
    percent: float
    swap_total: float
    swap_used: float
    swap_percent: float


def _percent(part: float, whole: float) -> float:
    return round(min(100.0, max(0.0, 100.0 * part / whole)), 2) if whole > 0 else 0.0


# The seven lines we use, found by the regex engine: looping over the ~55 lines in Python was a
# tenth of the agent's CPU per get_metrics() call.
_WANTED = re.compile(r"^(MemTotal|MemFree|MemAvailable|Buffers|Cached|SwapTotal|SwapFree):(.*)$", re.MULTILINE)


def parse_meminfo(text: str) -> MemoryReading:
    """Parse /proc/meminfo (values in kB) into bytes (raises ValueError)."""
    values: dict[str, float] = {}
    for name, rest in _WANTED.findall(text):
        fields = rest.split()
        try:
            values[name] = float(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
        except (IndexError, ValueError):
            continue
    if values.get("MemTotal", 0.0) <= 0:
        raise ValueError("meminfo has no MemTotal")
    total = values["MemTotal"]
    available = values.get("MemAvailable")
    if available is None:
        # kernels before 3.14: the classic estimate
        available = values.get("MemFree", 0.0) + values.get("Buffers", 0.0) + values.get("Cached", 0.0)
    available = min(available, total)
    swap_total = values.get("SwapTotal", 0.0)
    swap_used = max(0.0, swap_total - values.get("SwapFree", swap_total))
    return MemoryReading(
        total, available, total - available, _percent(total - available, total),
        swap_total, swap_used, _percent(swap_used, swap_total),
    )


def read_memory(proc_root: Path = Path("/proc"), *, platform: str = sys.platform) -> MemoryReading | str:
    """The reading, or the reason it is unavailable."""
    if platform.startswith("linux"):
        try:
            return parse_meminfo(read_kernel_text(f"{proc_root}/meminfo"))  # no Path join per call
        except (OSError, ValueError) as exc:
            return f"{proc_root / 'meminfo'} unreadable: {type(exc).__name__}"
    try:
        virtual = psutil.virtual_memory()
        swap = psutil.swap_memory()
    except (OSError, psutil.Error) as exc:
        return f"memory counters unreadable: {type(exc).__name__}"
    total, available = float(virtual.total), float(virtual.available)
    return MemoryReading(
        total, available, total - available, _percent(total - available, total),
        float(swap.total), float(swap.used), _percent(float(swap.used), float(swap.total)),
    )
