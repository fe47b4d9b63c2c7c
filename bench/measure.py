"""What the benchmarks measure with: process CPU and memory from /proc, percentiles, the machine.

CPU time comes from ``/proc/<pid>/stat`` (``utime + stime`` of every thread, summed over the process
and its descendants), in clock ticks of ``1/SC_CLK_TCK`` seconds (10 ms on Linux), so a CPU figure
per call is only as fine as ``ticks / calls``: every benchmark makes enough calls for that to be
well under the figure it reports. Memory is ``VmRSS`` (resident now) and ``VmHWM`` (peak resident).
"""

from __future__ import annotations

import datetime as dt
import math
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


class CpuTime(NamedTuple):
    """CPU seconds in user space and in the kernel (system calls, and on loopback the TCP work too)."""

    user: float
    system: float

    @property
    def total(self) -> float:
        return self.user + self.system

    def minus(self, other: CpuTime) -> CpuTime:
        return CpuTime(self.user - other.user, self.system - other.system)

    def plus(self, other: CpuTime) -> CpuTime:
        return CpuTime(self.user + other.user, self.system + other.system)


NO_CPU = CpuTime(0.0, 0.0)


def _stat_times(path: Path) -> CpuTime:
    try:
        stat = path.read_text()
    except OSError:
        return NO_CPU
    fields = stat[stat.rindex(")") + 2 :].split()
    return CpuTime(int(fields[11]) * CLOCK_TICK, int(fields[12]) * CLOCK_TICK)  # utime, stime


def cpu_times(pid: int) -> CpuTime:
    """CPU time used so far by the process (all its threads, living or ended) and its descendants."""
    user = system = 0.0
    for member in process_tree(pid):
        times = _stat_times(PROC / str(member) / "stat")
        user, system = user + times.user, system + times.system
    return CpuTime(user, system)


def cpu_seconds(pid: int) -> float:
    return cpu_times(pid).total


class ThreadUse(NamedTuple):
    cpu_s: float  # from /proc/.../schedstat (nanoseconds on the CPU) where the kernel has it, else ticks
    wakeups: int  # voluntary context switches: how often the thread slept and woke


def threads(pid: int) -> dict[int, ThreadUse]:
    """CPU time and wake-ups of each living thread of the process, by thread id."""
    found: dict[int, ThreadUse] = {}
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        if task.name.isdigit():
            found[int(task.name)] = ThreadUse(_task_cpu(task), _task_switches(task))
    return found


def _task_cpu(task: Path) -> float:
    try:
        return int((task / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return _stat_times(task / "stat").total


def _task_switches(task: Path) -> int:
    try:
        for line in (task / "status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _status_kib(pid: int, field: str) -> int:
    try:
        lines = (PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    """Resident memory now, MB (10^6 bytes), summed over the process tree."""
    return sum(_status_kib(member, "VmRSS") for member in process_tree(pid)) * 1024 / 1e6


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM), MB (10^6 bytes), summed over the process tree."""
    return sum(_status_kib(member, "VmHWM") for member in process_tree(pid)) * 1024 / 1e6


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


def cpu_steal() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs so far: time the hypervisor gave our virtual CPUs to others."""
    try:
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0, 0
    return (values[7] if len(values) > 7 else 0), sum(values)


def speed_check_ms() -> float:
    """Best of 5 timings of a fixed piece of pure-Python work, in ms: the same on the same machine at the
    same speed, so two reports (or the start and end of one) show whether the machine itself was slower."""
    best = math.inf
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return round(1000 * best, 2)


def which(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None
