"""Sampling a running Python server with py-spy, and naming the functions that take its time.

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;...;leaf COUNT``); from them we
count, per function (``name (file)``, line numbers dropped), the samples where it is the leaf
(*self*: the time spent in its own code) and the samples where it is anywhere on the stack
(*total*).

Which samples: ``--gil``, only the thread that holds the GIL, i.e. the one running Python code.
Without it, py-spy cannot tell here a thread blocked in ``SSLSocket.read``, ``select`` or
``Condition.wait`` from a busy one (its idle heuristics need to pause the process, and even then
missed most waits), so waits filled the profile. The price: C work that releases the GIL (OpenSSL's
handshake and record crypto, system calls) is not in these profiles; ``bench/components.py``
measures it. ``--nonblocking`` keeps py-spy from pausing the server, so sampling does not change
what is measured (nor wake idle threads).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.measure import which

RATE = 250  # samples per second
_LINE = re.compile(r"^(.*) (\d+)$")
_ON_EVERY_STACK = ("Thread._bootstrap", "Thread.run (", "<module> (")  # left out of *total*: they say nothing
_FRAME = re.compile(r"^(.*?) \((.*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else which("py-spy")


def start(pid: int, output: Path, seconds: float, rate: int = RATE) -> subprocess.Popen[bytes] | None:
    """Start sampling ``pid`` for ``seconds``, ``rate`` times a second; None when py-spy is not installed."""
    binary = py_spy()
    if binary is None:
        return None
    command = [
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--gil",
        "--nonblocking",
        "--output",
        str(output),
    ]
    return subprocess.Popen(  # py-spy on a pid we started, no shell
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ}
    )


def source_tail(path: str) -> str:
    """The readable end of a source path: ``secure_agent/server.py``, ``ssl.py``, ``http/client.py``."""
    parts = Path(path).parts
    keep = parts[-2:] if len(parts) > 1 and not parts[-2].startswith(("python3", "lib")) else parts[-1:]
    return "/".join(keep)


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    name, path = match.groups()
    return f"{name} ({source_tail(path)})"


def summarize(lines: Iterable[str], top: int = 12) -> dict[str, Any]:
    """Self and total shares of the busiest functions, from py-spy raw output."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in lines:
        match = _LINE.match(line.strip())
        if match is None:
            continue
        stack_text, count_text = match.groups()
        count = int(count_text)
        frames = [_short(frame) for frame in stack_text.split(";") if frame]
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for name in set(frames):
            if not name.startswith(_ON_EVERY_STACK):
                total[name] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * count / samples, 1)] for name, count in counter.most_common(top)]

    if samples == 0:
        return {"samples": 0, "self": [], "total": []}
    return {"samples": samples, "self": share(own), "total": share(total)}


def finish(process: subprocess.Popen[bytes] | None, output: Path, seconds: float, rate: int = RATE) -> dict[str, Any]:
    """Wait for a recording of ``seconds`` started by :func:`start` and summarize it (or say why not).

    ``gil_busy_percent``: the share of the recording during which some thread ran Python code.
    """
    timeout = seconds + 30
    if process is None:
        return {"error": "py-spy is not installed (bench/setup.sh installs it into .venv)"}
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return {"error": "py-spy did not finish in time"}
    if not output.exists():
        return {"error": f"py-spy failed: {stderr.decode(errors='replace').strip()[-300:]}"}
    summary = summarize(output.read_text(errors="replace").splitlines())
    summary["gil_busy_percent"] = round(100 * summary["samples"] / (rate * max(1.0, round(seconds))), 2)
    return summary


_THREAD = re.compile(r'^Thread (\d+) \((\w+)\): "(.*)"$')


def thread_names(pid: int) -> dict[int, str]:
    """Thread id -> 'name: where it waits' from one ``py-spy dump`` (empty without py-spy)."""
    binary = py_spy()
    if binary is None:
        return {}
    try:
        done = subprocess.run(  # py-spy on a pid we started, no shell
            [binary, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    names: dict[int, str] = {}
    current: int | None = None
    for line in done.stdout.splitlines():
        match = _THREAD.match(line.strip())
        if match is not None:
            current = int(match.group(1))
            names[current] = match.group(3)
        elif current is not None and line.startswith("    ") and ":" not in names[current]:
            names[current] += ": " + _short(line.strip())  # the innermost frame: where it waits
    return names
