"""What the benchmarks measure with: process CPU and memory from /proc, percentiles, the machine.

CPU time comes from ``/proc/<pid>/stat`` (``utime + stime`` of every thread, summed over the process
and its descendants), in clock ticks of ``1/SC_CLK_TCK`` seconds (10 ms on Linux), so a CPU figure
per call is only as fine as ``ticks / calls``: every benchmark makes enough calls for that to be
well under the figure it reports. Memory is ``VmRSS`` (resident now) and ``VmHWM`` (peak resident).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import ssl
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

CLOCK_TICK = 1.0 / os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")
REPO = Path(__file__).resolve().parent.parent


class Summary(NamedTuple):
    """Latencies of one series, in milliseconds."""

    n: int
    median: float
    p99: float
    mean: float
    minimum: float
    maximum: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of an ascending, non-empty sequence."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def summarize(samples_ns: Sequence[int]) -> Summary:
    ordered = sorted(value / 1e6 for value in samples_ns)
    return Summary(
        n=len(ordered),
        median=percentile(ordered, 50),
        p99=percentile(ordered, 99),
        mean=sum(ordered) / len(ordered),
        minimum=ordered[0],
        maximum=ordered[-1],
    )


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """The process and its descendants (bounded: a tree deeper or wider than 256 is cut)."""
    tree, queue = [pid], [pid]
    while queue and len(tree) < 256:
        for child in _children(queue.pop()):
            tree.append(child)
            queue.append(child)
    return tree


def _own_cpu_seconds(pid: int) -> float:
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * CLOCK_TICK  # utime, stime


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by the process and its descendants."""
    return sum(_own_cpu_seconds(member) for member in process_tree(pid))


def _status_kib(pid: int, field: str) -> int:
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mib(pid: int) -> float:
    """Resident memory now, MiB, summed over the process tree."""
    return sum(_status_kib(member, "VmRSS") for member in process_tree(pid)) / 1024


def peak_rss_mib(pid: int) -> float:
    """Peak resident memory (VmHWM), MiB, summed over the process tree."""
    return sum(_status_kib(member, "VmHWM") for member in process_tree(pid)) / 1024


def wait_quiet(pid: int, *, quiet_for: float = 0.6, timeout: float = 15.0) -> bool:
    """Wait until the process has used no CPU for ``quiet_for`` seconds (start-up work done).

    Returns False if it was still busy after ``timeout`` seconds (the caller notes it, and measures anyway).
    """
    deadline = time.monotonic() + timeout
    last, since = cpu_seconds(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = cpu_seconds(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_for:
            return True
    return False


def _first_line(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not available"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0].strip() if text else "not available"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    load = os.getloadavg()
    try:
        meminfo = Path("/proc/meminfo").read_text().split()
        memory_gib = round(int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024 / 1024, 1)
    except (OSError, ValueError):
        memory_gib = 0.0
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "host_cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "git_commit": _first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "load_average_at_start": [round(value, 2) for value in load],
        "clock_tick_ms": CLOCK_TICK * 1000,
    }


def busy_share() -> float:
    """Fraction of the machine's CPU in use over 0.5 s, to tell a quiet machine from a shared one."""

    def sample() -> tuple[int, int]:
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    total_a, idle_a = sample()
    time.sleep(0.5)
    total_b, idle_b = sample()
    total = total_b - total_a
    return 0.0 if total <= 0 else 1.0 - (idle_b - idle_a) / total


def which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None
