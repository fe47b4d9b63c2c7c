"""CPU utilisation, measured between two readings of the CPU time counters.

On Linux the counters come from ``<proc_root>/stat``; elsewhere from psutil. :class:`CpuSampler` takes
a reading when it is made (the agent's start) and answers with the utilisation since a previous reading.
Readings closer together than ``min_window`` seconds do not move the baseline, so many callers in quick
succession all get the utilisation over a meaningful interval rather than over a few jiffies of noise.
The first answer is complete too: a call within ``first_window`` of the start waits the rest of it
(at most 0.25 s, only then), so the first poll after an agent restart has its CPU figures.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import psutil

from secure_agent.probes._fs import read_kernel_text

MIN_WINDOW = 1.0
"""Seconds: the shortest interval the baseline advances by."""
FIRST_WINDOW = 0.25
"""Seconds: the shortest interval the first answers after the start are measured over."""

# The cpu lines, found by the regex engine rather than by splitting the whole file in Python: the
# ``intr`` line alone holds hundreds of numbers.
_CPU_LINE = re.compile(r"^cpu.*$", re.MULTILINE)


class CpuTimes(NamedTuple):
    """Busy and total time of each CPU (seconds or jiffies, consistently), overall first."""

    busy: tuple[float, ...]
    total: tuple[float, ...]


class CpuReading(NamedTuple):
    percent: float | None
    per_core: tuple[float, ...]
    cores: int
    reason: str | None


def parse_proc_stat(text: str) -> CpuTimes:
    """Busy/total jiffies of the ``cpu`` line and each ``cpuN`` line of /proc/stat (raises ValueError)."""
    busy: list[float] = []
    total: list[float] = []
    for line in _CPU_LINE.findall(text):
        fields = line.split()
        # user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
        # counted in user/nice, so only the first eight fields make up the total
        values = [float(value) for value in fields[1:9]]
        if len(values) < 4:
            raise ValueError(f"short cpu line in /proc/stat: {fields[0]!r}")
        idle = values[3] + (values[4] if len(values) > 4 else 0.0)
        busy.append(sum(values) - idle)
        total.append(sum(values))
    if len(total) < 2:
        raise ValueError("no cpu lines in /proc/stat")
    return CpuTimes(tuple(busy), tuple(total))


def read_proc_stat(proc_root: Path) -> CpuTimes:
    return parse_proc_stat(read_kernel_text(f"{proc_root}/stat"))  # no Path join per call


def read_psutil_times() -> CpuTimes:
    """Busy/total seconds from psutil, for hosts without procfs."""
    overall = psutil.cpu_times()
    per_cpu = psutil.cpu_times(percpu=True)
    busy: list[float] = []
    total: list[float] = []
    for times in (overall, *per_cpu):
        values = times._asdict()
        idle = float(values.get("idle", 0.0)) + float(values.get("iowait", 0.0))
        whole = sum(float(v) for k, v in values.items() if k not in {"guest", "guest_nice"})
        busy.append(whole - idle)
        total.append(whole)
    return CpuTimes(tuple(busy), tuple(total))


def _percent(busy_delta: float, total_delta: float) -> float | None:
    if total_delta <= 0:
        return None
    return round(min(100.0, max(0.0, 100.0 * busy_delta / total_delta)), 2)


def utilisation(before: CpuTimes, after: CpuTimes) -> tuple[float | None, tuple[float, ...]]:
    """Overall and per-core percent between two readings (per-core empty if the CPU set changed)."""
    overall = _percent(after.busy[0] - before.busy[0], after.total[0] - before.total[0])
    if len(before.total) != len(after.total):
        return overall, ()
    per_core = tuple(
        _percent(after.busy[i] - before.busy[i], after.total[i] - before.total[i]) or 0.0
        for i in range(1, len(after.total))
    )
    return overall, per_core


class CpuSampler:
    """Thread-safe: measures utilisation between successive :meth:`sample` calls.

    It keeps two baselines: the newest reading that moved the baseline and the one before. A sample
    less than ``min_window`` after the newest is measured against the older one, so every answer
    covers at least ``min_window`` seconds; until the first window has passed the answer is ``None``.
    """

    def __init__(
        self,
        proc_root: Path = Path("/proc"),
        *,
        platform: str = sys.platform,
        min_window: float = MIN_WINDOW,
        first_window: float = FIRST_WINDOW,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._read: Callable[[], CpuTimes] = (
            (lambda: read_proc_stat(proc_root)) if platform.startswith("linux") else read_psutil_times
        )
        self._min_window = min_window
        self._first_window = min(first_window, min_window)
        self._monotonic = monotonic
        self._sleep = sleep
        self._lock = threading.Lock()
        self._newer: tuple[CpuTimes, float] | None = None
        self._older: tuple[CpuTimes, float] | None = None
        try:  # the baseline at start: the first answer measures from here
            self._newer = (self._read(), monotonic())
        except (OSError, ValueError, psutil.Error):
            self._newer = None  # the first sample says why

    def sample(self) -> CpuReading:
        """Utilisation since a baseline at least ``min_window`` old (once one exists)."""
        try:
            current = self._read()
        except (OSError, ValueError, psutil.Error) as exc:
            return CpuReading(None, (), 0, f"CPU counters unreadable: {type(exc).__name__}")
        now = self._monotonic()
        cores = len(current.total) - 1
        with self._lock:
            if self._newer is None:
                self._newer = (current, now)
                return CpuReading(None, (), cores, "measuring: first reading, no interval yet")
            newer, newer_at = self._newer
            if now - newer_at >= self._min_window:
                base = newer
                self._older, self._newer = self._newer, (current, now)
            elif self._older is not None:
                base = self._older[0]
            else:
                # within the first window after the start: a few jiffies would say 0 or 100 %, so the
                # answer waits until first_window has passed since the baseline (once, right after start)
                wait = self._first_window - (now - newer_at)
                if wait > 0:
                    self._sleep(wait)
                    try:
                        current = self._read()
                    except (OSError, ValueError, psutil.Error) as exc:
                        return CpuReading(None, (), 0, f"CPU counters unreadable: {type(exc).__name__}")
                base = newer
        percent, per_core = utilisation(base, current)
        if percent is None:
            return CpuReading(None, (), cores, "measuring: no CPU time elapsed yet")
        return CpuReading(percent, per_core, cores, None)
