"""Run every benchmark, side by side with Glances and node_exporter, and write docs/benchmarks.md.

    .venv/bin/python -m bench [--budget 570] [--only NAME]... [--quick] [--overlap-idle] [--output FILE]

Each benchmark is its own program (``python -m bench.bench_NAME``), run as a subprocess in its own
process group with a time limit taken from the overall budget, so that one that is missing, fails
or hangs is reported as such and the others still run. A benchmark's figures are read from the
``BENCH_RESULT {json}`` line it prints last; without one, its output goes into the report verbatim.

The benchmarks run one after the other, so that none disturbs another. ``--overlap-idle`` runs the
idle benchmark (two minutes of mostly waiting) alongside the others instead, saving those two
minutes: it measures per-process CPU time and memory, which other load changes little, and its own
servers and polls add nothing measurable to the others. The report is written atomically (temp file
+ ``os.replace``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from bench import report
from bench.measure import REPO, busy_share, cpu_steal, machine, speed_check_ms
from bench.report import Outcome
from bench.result import parse

DEFAULT_BUDGET = 570.0  # seconds; the issue allows 10 minutes for the whole command
RESERVE = 15.0  # seconds kept back for the report and for stopping what overran
KILL_GRACE = 5.0


class Bench(NamedTuple):
    name: str
    timeout: float  # seconds, at most
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    may_overlap: bool = False  # may run alongside the others (--overlap-idle)
    limits: str = ""  # what bounds these figures (mechanisms, not numbers); shown in the report

    @property
    def module(self) -> str:
        return f"bench.bench_{self.name}"

    @property
    def path(self) -> Path:
        return REPO / "bench" / f"bench_{self.name}.py"


BENCHES = (
    Bench(
        "agent",
        150,
        quick_args=("--rounds", "1", "--seconds", "2"),
        limits=(
            "kept-alive: one HTTP/1.1 request on an open TLS connection: the agent's request framing, token "
            "check (HMAC-SHA256, replay cache), XML-RPC parsing, the metrics snapshot, XML marshalling of the "
            "answer, one audit record (SHA-256 chain, a write(2), fdatasync at most once a second) and TLS "
            "record encryption, in a Python thread per connection; about a third of the agent's CPU is the "
            "kernel (loopback TCP, three procfs reads). New connection: a full TLS 1.3 handshake (ECDHE "
            "X25519 + ECDSA P-256 leaf certificates both ways, no session resumption by design: every "
            "connection proves its certificate) on both client and agent, then the agent's own CRL lookup, where "
            "OpenSSL 3.0's certificate decoding costs more than the signatures, plus a hand-off to a waiting "
            "connection thread. The timing client is one minimal HTTP/1.1 client for all three servers "
            "(bench/clients.py). Both client and agent share the machine's 2 cores."
        ),
    ),
    Bench(
        "idle",
        200,
        args=("--window", "120"),
        quick_args=("--window", "30"),
        may_overlap=True,
        limits=(
            "the background security scan every check_interval (30 s: /proc processes, sockets, auth log "
            "tail), a poll per 30 s on a new TLS connection, and whatever timers the agent keeps (the "
            "audit-log sync tick); RSS is the Python interpreter plus the modules it imports (pydantic, "
            "cryptography, ssl) and the metrics it keeps."
        ),
    ),
    Bench("probes", 120),
    Bench(
        "journal",
        45,
        args=("--large", "100000"),
        quick_args=("--small", "200", "--large", "5000", "--polls", "5"),
        limits=(
            "journalctl is a process per poll (fork, exec, opening the journal files, seeking to the cursor "
            "through journald's index); the binding, where installed, reads in-process."
        ),
    ),
    Bench("flood", 90),
    Bench("collector", 150),
    Bench(
        "slow_agents",
        150,
        quick_args=("--agents", "40", "--slow", "4", "--sweeps", "4", "--interval", "1", "--timeout", "0.5"),
        limits=(
            "the healthy sweep is one collector thread's CPU for 200 polls plus the agents' CPU on the same "
            "cores; the slow agents add their own polls (20 a sweep, a quarter of the workers at most) and the "
            "TLS work of their answers"
        ),
    ),
    Bench(
        "exporter",
        120,
        quick_args=("--agents", "40", "--fleet", "200", "--blocks", "4", "--sweeps", "5"),
        limits=(
            "a scrape re-encodes only the agents polled since the last one (about 1 us a series) and gzips the "
            "text at level 1; the rest of a poll's CPU is bench_collector's"
        ),
    ),
    Bench("storage", 120),
    Bench(
        "backfill",
        60,
        quick_args=("--samples", "500", "--rounds", "1"),
        limits=(
            "a day of one agent (2,880 samples) in pages of 100 on one connection: the agent reads them through "
            "a line index and writes each page's XML; the collector reads the XML, validates each sample as a "
            "live answer and stores it; both in one process here, sharing the interpreter lock"
        ),
    ),
    Bench("viz", 90),
    Bench(
        "trends",
        2400,
        quick_args=("--agents", "10", "--days", "2", "--year-days", "30", "--repeat", "1", "--cpu-sweeps", "120",
                    "--cpu-rounds", "1", "--collector-us", "1110"),
        limits=(
            "at the goal size (100 agents x 30 days, 8.64 M samples) it takes about half an hour: bulk loading, "
            "the back-fill command and the raw path of the whole fleet (every raw row through PyMySQL or the "
            "JSON-lines reader) dominate; run it alone with --only trends --budget 2700 --output FILE. The trend "
            "path reads hourly rollups plus the raw samples after the newest rollup; the plots are drawn as "
            "bench_viz draws them"
        ),
    ),
    Bench(
        "audit",
        150,
        quick_args=("--agents", "10", "--rounds", "2", "--seconds", "2"),
        limits=(
            "collector: at a 30 s interval every poll starts with a TLS handshake, which dominates its CPU; the "
            "trail adds one request on the same connection, the check of a few records and a write per "
            "agent's central copy. Agent: a denied connection is an accept() and a close in the accept loop, "
            "which shares the interpreter lock with the connection threads serving calls."
        ),
    ),
)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="seconds for everything (default 570)")
    parser.add_argument("--only", action="append", choices=[b.name for b in BENCHES], help="run only these")
    parser.add_argument("--quick", action="store_true", help="short runs of our benchmarks, to check the command")
    parser.add_argument("--overlap-idle", action="store_true", help="run the idle benchmark alongside the others")
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "benchmarks.md", help="report file")
    return parser.parse_args(argv)


class Running(NamedTuple):
    bench: Bench
    process: subprocess.Popen[str]
    started: float
    deadline: float


def _start(bench: Bench, quick: bool, timeout: float) -> Running:
    command = [sys.executable, "-m", bench.module, *(bench.quick_args if quick else bench.args)]
    env = {**os.environ, "BENCH_BUDGET_S": str(int(timeout)), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(  # our own benchmark programs, no shell
        command,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: on timeout the servers it started go too
    )
    now = time.monotonic()
    return Running(bench, process, now, now + timeout)


def _stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM the benchmark's process group (it and the servers it started), SIGKILL what is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(KILL_GRACE)
    _wait_group(process.pid, KILL_GRACE)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    _wait_group(process.pid, KILL_GRACE)


def _wait_group(group: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and _group_alive(group):
        time.sleep(0.05)


def _group_alive(group: int) -> bool:
    """Whether any process of the group still runs (zombies waiting for their reaper do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _finish(running: Running) -> Outcome:
    bench, process = running.bench, running.process
    try:
        stdout, stderr = process.communicate(timeout=max(1.0, running.deadline - time.monotonic()))
        status = "ok" if process.returncode == 0 else f"failed (exit {process.returncode})"
    except subprocess.TimeoutExpired:
        _stop_group(process)
        stdout, stderr = process.communicate()
        status = f"timed out after {running.deadline - running.started:.0f} s"
    finally:
        if process.poll() is None:
            _stop_group(process)
    seconds = time.monotonic() - running.started
    result = parse(stdout or "")
    print(f"bench: {bench.name}: {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return Outcome(bench.name, bench.module, status, seconds, result, stdout or "", stderr or "")


def _unavailable(bench: Bench, why: str) -> Outcome:
    print(f"bench: {bench.name}: {why}", file=sys.stderr, flush=True)
    return Outcome(bench.name, bench.module, why, 0.0, None, "", "")


def run(args: argparse.Namespace) -> list[Outcome]:
    end = time.monotonic() + args.budget - RESERVE
    chosen = [b for b in BENCHES if not args.only or b.name in args.only]
    outcomes: list[Outcome] = []
    background: list[Running] = []
    for bench in chosen:
        if not bench.path.exists():
            outcomes.append(_unavailable(bench, "not available (not written yet)"))
            continue
        left = end - time.monotonic()
        if left < 10:
            outcomes.append(_unavailable(bench, "not run: the time budget was spent"))
            continue
        print(f"bench: {bench.name}: running (at most {min(bench.timeout, left):.0f} s)", file=sys.stderr, flush=True)
        running = _start(bench, args.quick, min(bench.timeout, left))
        if bench.may_overlap and args.overlap_idle:
            background.append(running)
        else:
            outcomes.append(_finish(running))
    outcomes += [_finish(running) for running in background]
    order = [b.name for b in BENCHES]
    return sorted(outcomes, key=lambda outcome: order.index(outcome.name))


def _why_missed(goals: Sequence[dict[str, Any]], outcomes: Sequence[Outcome]) -> list[str]:
    """For each missed goal: by how much, and what its benchmark's profile says the time went into."""
    profiles = {o.name: (o.result or {}).get("profile") or {} for o in outcomes}
    lines: list[str] = []
    for row in goals:
        if row.get("met") is not False:
            continue
        value, target, unit = report.cell(row.get("value")), report.cell(row.get("target")), row.get("unit", "")
        detail = f" {row['detail']}" if row.get("detail") else ""
        lines.append(
            f"- **{row['name']}**: {value} {unit} against {row.get('op')} {target}; {row.get('miss')}.{detail}"
        )
        for phase, data in profiles.get(str(row.get("bench")), {}).items():
            if not isinstance(data, dict) or not data.get("self"):
                continue
            if row.get("profile", phase) != phase:  # a goal that names its profile gets only that one
                continue
            own = ", ".join(f"{name} {share}%" for name, share in data["self"][:6])
            ours = [f"{name} {share}%" for name, share in data.get("total", []) if _is_ours(name)][:6]
            lines.append(f"  - profile ({phase}): most CPU in {own}")
            if ours:
                lines.append(f"  - of which under our code (inclusive): {', '.join(ours)}")
    return lines or ["Every measured goal is met."]


def _is_ours(function: str) -> bool:
    return any(part in function for part in ("secure_agent/", "probes/", "pki/", "secure_collector/"))


def render(
    args: argparse.Namespace, argv: Sequence[str], outcomes: Sequence[Outcome], info: dict[str, Any], seconds: float
) -> str:
    command = " ".join([".venv/bin/python -m bench", shlex.join(argv)]).strip()
    goals = report.collect_goals(outcomes)
    limits = {bench.name: bench.limits for bench in BENCHES}
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}` on {info['date']}; the whole command took {seconds:.0f} s "
        f"(budget {args.budget:.0f} s). Setup: `bench/setup.sh` (see bench/README.md). Every benchmark runs "
        "its peer and ours in the same run, on loopback. Medians and p99 are over every timed call; "
        "ratios are the peer's figure over ours.",
        "",
        "## Machine",
        "",
        *report.table([{key: value for key, value in info.items() if key not in ("date", "busy_share_at_start")}]),
        "",
        f"Other load when the run started: {100 * info['busy_share_at_start']:.0f}% of all cores busy "
        "(a shared machine makes every figure slower and noisier). `speed_check_ms` times a fixed piece of "
        "pure-Python work (best of 5) at the start and the end; `cpu_steal_during_run_percent` is the CPU "
        "time the hypervisor gave to other guests while the benchmarks ran. Neither sees contention for "
        "memory and caches: on this virtual machine the same TLS handshake has taken 1.0 ms of CPU in one "
        "hour and 1.7 ms in the next with both unchanged, and every figure that is mostly OpenSSL or the "
        "kernel moved with it. The agent section's handshake steps show which kind of hour a run had.",
        "",
        "## Goals",
        "",
        *report.goals_section(goals),
        "",
        "## Why a goal is missed",
        "",
        *_why_missed(goals, outcomes),
        "",
    ]
    for outcome in outcomes:
        lines += report.bench_section(outcome, limits.get(outcome.name, ""))
    return "\n".join(lines).rstrip() + "\n"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    started = time.monotonic()
    info = {**machine(), "busy_share_at_start": round(busy_share(), 2), "speed_check_ms_at_start": speed_check_ms()}
    steal_before = cpu_steal()
    outcomes = run(args)
    steal_after = cpu_steal()
    info["speed_check_ms_at_end"] = speed_check_ms()
    stolen, total = (after - before for after, before in zip(steal_after, steal_before, strict=True))
    info["cpu_steal_during_run_percent"] = round(100 * stolen / total, 1) if total > 0 else None
    text = render(args, argv, outcomes, info, time.monotonic() - started)
    write_atomic(args.output, text)
    print(f"bench: wrote {args.output} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    broken = [o.name for o in outcomes if o.status.startswith(("failed", "timed out"))]
    if broken:
        print(f"bench: failed or timed out: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
