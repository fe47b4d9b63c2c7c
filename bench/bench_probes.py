"""Cost of the agent's metrics: ``snapshot()`` per call, one background scan, and a 1 GB auth log.

    .venv/bin/python -m bench.bench_probes [--calls 5000] [--scans 10] [--log-gb 1.0]

1. ``MetricsService.snapshot()`` (what ``get_metrics()`` serves) in-process on this machine: median
   and p99 over ``--calls`` calls, with the background thread running.
2. One background scan (``refresh()``: temperature, disks, processes, sockets, auth logs): median and
   p99 over ``--scans`` scans, and the parts of the security scan on their own.
3. With an auth log of ``--log-gb`` GB (written in a temporary directory under /tmp, removed at the
   end) against one of 1 MB with the same lines: the first read (a 1 MiB tail), the steady-state scan
   after 100 appended lines, and ``snapshot()`` -- each should cost the same whatever the log's size.

Prints a table per part and, last, the ``BENCH_RESULT`` line ``python -m bench`` collects. Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.measure import machine, summarize
from bench.result import emit, goal
from secure_agent.config import AgentConfig
from secure_agent.metrics import MetricsService
from secure_agent.probes.network import scan_network
from secure_agent.probes.processes import scan_processes
from secure_agent.probes.ssh import SshMonitor

MIB = 1024 * 1024
APPENDED_LINES = 100


def _config(workdir: Path, log: Path) -> AgentConfig:
    return AgentConfig.model_validate(
        {
            "name": "bench",
            "tls": {"cert": str(workdir / "a.crt"), "key": str(workdir / "a.key"), "ca": str(workdir / "ca.crt")},
            "security": {
                "allowed_ips": ["127.0.0.1"],
                "hmac_keys": {"c": str(workdir / "c.hmac")},
                "auth_log_paths": [str(log)],
            },
            "audit_log": str(workdir / "audit.log"),
        }
    )


def _block(size: int) -> bytes:
    """``size`` bytes of sshd lines stamped now: failures from 256 sources, accepted logins, noise."""
    stamp = datetime.now().strftime("%b %e %H:%M:%S")
    lines = []
    index = 0
    total = 0
    while total < size:
        source = f"198.51.100.{index % 256}"
        line = (
            f"{stamp} bench sshd[{20000 + index % 5000}]: "
            + (
                f"Failed password for invalid user u{index % 97} from {source} port {40000 + index % 20000} ssh2"
                if index % 3
                else f"Accepted publickey for deploy from 203.0.113.{index % 200} port 50000 ssh2: ED25519 SHA256:x"
            )
            + "\n"
        )
        lines.append(line)
        total += len(line)
        index += 1
    return "".join(lines).encode()[:size].rsplit(b"\n", 1)[0] + b"\n"


def _write_log(path: Path, size: int, block: bytes) -> float:
    started = time.perf_counter()
    with path.open("wb") as handle:
        written = 0
        while written < size:
            handle.write(block)
            written += len(block)
    return time.perf_counter() - started


def _time_calls(function: Callable[[], object], calls: int) -> list[int]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        function()
        samples.append(time.perf_counter_ns() - started)
    return samples


def _row(name: str, samples_ns: Sequence[int]) -> dict[str, Any]:
    summary = summarize(samples_ns)
    return {
        "what": name,
        "n": summary.n,
        "median_ms": round(summary.median, 4),
        "p99_ms": round(summary.p99, 4),
        "max_ms": round(summary.maximum, 4),
    }


def _print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    columns = list(rows[0])
    widths = [max(len(str(column)), *(len(str(row[column])) for row in rows)) for column in columns]
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[c]).ljust(w) for c, w in zip(columns, widths, strict=True)))


def _steady_scans(log: Path, block: bytes, rounds: int) -> tuple[list[int], int]:
    """First scan (tail) cost, then per-scan cost after appending lines; returns (steady samples, first ns)."""
    monitor = SshMonitor([log], max_failures=5, find_time=600)
    started = time.perf_counter_ns()
    monitor.scan()
    first = time.perf_counter_ns() - started
    appended = b"".join(block.splitlines(keepends=True)[:APPENDED_LINES])
    samples = []
    for _ in range(rounds):
        with log.open("ab") as handle:
            handle.write(appended)
        started = time.perf_counter_ns()
        monitor.scan()
        samples.append(time.perf_counter_ns() - started)
    monitor.close()
    return samples, first


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_probes", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="snapshot() calls to time (default 5000)")
    parser.add_argument("--scans", type=int, default=10, help="background scans to time (default 10)")
    parser.add_argument("--log-gb", type=float, default=1.0, help="size of the big auth log (default 1.0)")
    args = parser.parse_args(argv)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="smon-bench-probes-", dir="/tmp"))
    try:
        block = _block(MIB)
        small, big = workdir / "small.log", workdir / "big.log"
        _write_log(small, MIB, block)
        big_size = int(args.log_gb * 1024 * MIB)
        write_seconds = _write_log(big, big_size, block)
        print(f"wrote {big.stat().st_size / 1e9:.2f} GB auth log in {write_seconds:.1f} s")

        # 1 and 3: snapshot() with each log, background thread running
        snapshot_rows = []
        medians: dict[str, float] = {}
        for name, log in (("1 MB auth log", small), (f"{args.log_gb:g} GB auth log", big)):
            service = MetricsService(_config(workdir, log))
            service.start()
            try:
                service.wait_for_scan(30)
                _time_calls(service.snapshot, 200)  # warm up
                samples = _time_calls(service.snapshot, args.calls)
            finally:
                service.stop()
            snapshot_rows.append(_row(f"snapshot(), {name}", samples))
            medians[name] = statistics.median(samples) / 1e6
        _print_table("snapshot() per call (get_metrics in-process)", snapshot_rows)

        # 2: one background scan and its parts
        service = MetricsService(_config(workdir, small))
        service.refresh()
        scan_rows = [
            _row("refresh(): temperature, disks + security scan", _time_calls(service.refresh, args.scans)),
            _row("  processes (/proc/<pid>/exe)", _time_calls(scan_processes, args.scans)),
            _row(
                "  sockets (/proc/net + owners)",
                _time_calls(
                    lambda: scan_network(suspicious_ports=(4444, 31337), expected_listeners=("sshd",)), args.scans
                ),
            ),
        ]
        service.stop()
        _print_table("background scan", scan_rows)

        # 3: the auth log alone, small against big
        log_rows = []
        steady: dict[str, float] = {}
        for name, log in (("1 MB", small), (f"{args.log_gb:g} GB", big)):
            samples, first = _steady_scans(log, block, 20)
            log_rows.append(
                {
                    "log": name,
                    "first_scan_ms": round(first / 1e6, 3),
                    **{k: v for k, v in _row("", samples).items() if k != "what"},
                }
            )
            steady[name] = statistics.median(samples) / 1e6
        _print_table(f"SSH scan after {APPENDED_LINES} appended lines (20 rounds)", log_rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    small_snap, big_snap = medians["1 MB auth log"], medians[f"{args.log_gb:g} GB auth log"]
    small_scan, big_scan = steady["1 MB"], steady[f"{args.log_gb:g} GB"]
    goals = [
        goal("snapshot() median", small_snap, "<", 1.0, "ms", "get_metrics() in-process, background thread running"),
        goal("snapshot() p99", snapshot_rows[0]["p99_ms"], "<", 5.0, "ms"),
        goal(
            "snapshot() with the big log / small log",
            big_snap / small_snap,
            "<",
            1.5,
            "x",
            "a call never reads the log",
        ),
        goal(
            "steady SSH scan, big log / small log", big_scan / small_scan, "<", 1.5, "x", "only appended bytes are read"
        ),
    ]
    print("\ngoals:")
    for item in goals:
        print(f"  {item['name']}: {item['value']:.4g} {item['unit']} ({'met' if item['met'] else item['miss']})")
    print(f"(took {time.monotonic() - began:.1f} s)")
    emit(
        {
            "bench": "probes",
            "title": "Agent metrics: snapshot() per call, background scan, 1 GB auth log",
            "params": {"calls": args.calls, "scans": args.scans, "log_gb": args.log_gb, "machine": machine()},
            "tables": [
                {"title": "snapshot() per call", "rows": snapshot_rows},
                {"title": "background scan", "rows": scan_rows},
                {"title": f"SSH scan after {APPENDED_LINES} appended lines", "rows": log_rows},
            ],
            "goals": goals,
        }
    )


if __name__ == "__main__":
    main()
