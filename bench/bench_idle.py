"""Idle cost at a 30 s poll interval: CPU share of one core and resident memory, ours and the peers'.

    python -m bench.bench_idle [--window 120] [--interval 30] [--profile auto|always|never]

Our agent (the config ``make_certs`` writes: background security scan every 30 s, default rate
limit), node_exporter and Glances run side by side, each polled once per ``--interval`` seconds on
a new connection as a collector would (ours ``get_metrics``, node_exporter ``/metrics``, Glances
``getAll``), for ``--window`` seconds. CPU % of a core is the server's ``utime + stime`` over the
window divided by the window; memory is the largest ``VmRSS`` seen (sampled each second) and the
peak ``VmHWM``. Per-process CPU time does not depend on what else the machine runs, so this
benchmark may run alongside others (``run_all`` does so to stay within its time budget).

With ``--profile auto`` our agent is sampled by py-spy (non-blocking) through the whole window and
the result names the functions it spent its CPU in when a goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import pyspy
from bench.clients import Caller, CallFailed, glances_request, node_exporter_request, ours_request, tls_context
from bench.measure import CLOCK_TICK, ThreadUse, cpu_seconds, peak_rss_mb, rss_mb, threads
from bench.peers import OURS, Pki, Server, make_pki, start_all
from bench.result import emit, goal

GOAL_CPU_PERCENT = 0.1
GOAL_RSS_MB = 60.0
IDLE_PROFILE = "idle window"
IDLE_RATE = 1000  # samples/s: Python runs ~0.1% of the time when idle; py-spy's CPU is its own, not the agent's


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_idle", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--window", type=float, default=120.0, help="seconds measured (default 120)")
    parser.add_argument("--interval", type=float, default=30.0, help="poll interval, seconds (default 30)")
    parser.add_argument("--profile", choices=("auto", "always", "never"), default="auto")
    return parser.parse_args(argv)


def _callers(servers: dict[str, Server], pki: Pki) -> dict[str, Caller]:
    context = tls_context(pki)
    builders = {OURS: ours_request(pki), "node_exporter": node_exporter_request(), "glances": glances_request()}
    return {
        name: Caller(server, builders[name], context if server.tls else None, keep_alive=False)
        for name, server in servers.items()
    }


def _watch(
    servers: dict[str, Server], callers: dict[str, Caller], window: float, interval: float, notes: list[str]
) -> dict[str, dict[str, Any]]:
    """Poll every ``interval`` s for ``window`` s; CPU around the window, RSS each second."""
    cpu_before = {name: cpu_seconds(server.pid) for name, server in servers.items()}
    rss_max = {name: rss_mb(server.pid) for name, server in servers.items()}
    polls = dict.fromkeys(servers, 0)
    started = time.monotonic()
    next_poll = started
    while (now := time.monotonic()) < started + window:
        if now >= next_poll:
            for name, caller in callers.items():
                try:
                    caller.call()
                    polls[name] += 1
                except CallFailed as exc:
                    notes.append(f"{name}: poll failed: {exc}")
            next_poll += interval
        for name, server in servers.items():
            rss_max[name] = max(rss_max[name], rss_mb(server.pid))
        time.sleep(max(0.0, min(1.0, next_poll - time.monotonic(), started + window - time.monotonic())))
    elapsed = time.monotonic() - started
    rows: dict[str, dict[str, Any]] = {}
    for name, server in servers.items():
        used = cpu_seconds(server.pid) - cpu_before[name]
        rows[name] = {
            "server": name,
            "window_s": round(elapsed, 1),
            "polls": polls[name],
            "cpu_s": round(used, 3),
            "cpu_percent_of_core": round(100 * used / elapsed, 4),
            "rss_mb": round(rss_max[name], 1),
            "peak_rss_mb": round(peak_rss_mb(server.pid), 1),
        }
    return rows


def _by_thread(
    before: dict[int, ThreadUse], after: dict[int, ThreadUse], names: dict[int, str], total_s: float, window: float
) -> list[dict[str, Any]]:
    """Our agent's CPU over the window per thread; threads that came and went (connections) as one row."""
    rows: list[dict[str, Any]] = []
    accounted = 0.0
    for tid, end in sorted(after.items()):
        start = before.get(tid, ThreadUse(0.0, 0))
        used = end.cpu_s - start.cpu_s
        accounted += used
        rows.append(
            {
                "thread": names.get(tid, f"thread {tid}" + ("" if tid in before else " (new)")),
                "cpu_ms": round(1000 * used, 2),
                "cpu_percent_of_core": round(100 * used / window, 4),
                "wakeups_per_s": round((end.wakeups - start.wakeups) / window, 1),
            }
        )
    ended = max(0.0, total_s - accounted)
    rows.append(
        {
            "thread": "threads that ended within the window (connection workers idle for 60 s)",
            "cpu_ms": round(1000 * ended, 1),
            "cpu_percent_of_core": round(100 * ended / window, 4),
            "wakeups_per_s": None,
        }
    )
    return rows


def _idle_detail(by_thread: list[dict[str, Any]], resolution: float) -> str:
    parts = [
        f"{row['thread'].split(':')[0]} {row['cpu_percent_of_core']:.3f}%"
        + (f" ({row['wakeups_per_s']} wake-ups/s)" if row["wakeups_per_s"] else "")
        for row in sorted(by_thread, key=lambda row: row["cpu_percent_of_core"], reverse=True)
        if row["cpu_ms"]
    ]
    return (
        f"by thread: {', '.join(parts)}; process total counted in {CLOCK_TICK * 1000:.0f} ms ticks ({resolution:.4f}%)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    notes: list[str] = []
    profile: dict[str, Any] = {}
    by_thread: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        pki = make_pki(work / "pki")
        servers = start_all(stack, pki, work, notes)
        callers = _callers(servers, pki)
        recorder = None
        ours = servers.get(OURS)
        names = pyspy.thread_names(ours.pid) if ours else {}
        threads_before = threads(ours.pid) if ours else {}
        if ours and args.profile != "never":
            recorder = pyspy.start(ours.pid, work / "pyspy-idle.txt", args.window, rate=IDLE_RATE)
        rows = _watch(servers, callers, args.window, args.interval, notes)
        if ours:
            by_thread = _by_thread(
                threads_before, threads(ours.pid), names, rows[OURS]["cpu_s"], rows[OURS]["window_s"]
            )
        if recorder is not None:
            profile = {IDLE_PROFILE: pyspy.finish(recorder, work / "pyspy-idle.txt", args.window, rate=IDLE_RATE)}
    ours_row = rows.get(OURS)
    why = "" if ours_row else "our agent was not measured"
    resolution = 100 * CLOCK_TICK / args.window
    goals = [
        goal(
            f"agent idle CPU at a {args.interval:.0f} s poll interval",
            ours_row["cpu_percent_of_core"] if ours_row else None,
            "<",
            GOAL_CPU_PERCENT,
            "% of a core",
            why or _idle_detail(by_thread, resolution),
            profile=IDLE_PROFILE,
        ),
        goal("agent idle resident memory", ours_row["rss_mb"] if ours_row else None, "<", GOAL_RSS_MB, "MB", why),
    ]
    if args.profile == "never" or (args.profile == "auto" and all(g["met"] is not False for g in goals)):
        profile = {}
    emit(
        {
            "bench": "idle",
            "title": f"Idle cost at a {args.interval:.0f} s poll interval",
            "params": {"window_s": args.window, "interval_s": args.interval},
            "tables": [
                {"title": "CPU and memory while idle (one poll per interval)", "rows": list(rows.values())},
                {
                    "title": "Our agent's idle CPU by thread (names from py-spy dump; CPU from schedstat, in ns)",
                    "rows": by_thread,
                },
            ],
            "goals": goals,
            "notes": [
                *notes,
                "each server polled on a new connection per interval (ours: mutual TLS + token; node_exporter: "
                "mutual TLS; Glances: plain HTTP); our agent with the config make_certs writes (security scan "
                "every 30 s); MB = 10^6 bytes",
            ],
            "profile": profile,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
