"""What the audit trail costs: the collector's CPU per poll with and without collecting it, and the agent's
CPU for served calls with and without a flood of refusals.

    python -m bench.bench_audit [--agents 40] [--processes 2] [--rounds 6] [--seconds 4] [--flood-rate 300]

**Collector.** Real agents (``secure_agent.lifecycle.Agent``, several per child process, as in
``bench.bench_collector``) and the collector as ``secure-collector`` builds it, file store included.
Sweeps alternate between two pollers over the same connections and store: one without the audit trail,
one with it (``get_audit`` after ``get_metrics`` on the same connection, every record's seal and link
checked, the central copies written). At a 30 s interval the agent has closed the kept-alive
connection by the next poll (``server.idle_timeout`` 15 s), so every sweep reconnects (``--kept-alive``
to keep connections instead). Between sweeps each agent gets ``--noise`` denied connections from another
address (a scanner's knocks, recorded within the refusal budget): with the collector's own calls, the
records a sweep fetches are what 30 s of a quiet deployment write; the sweeps without the trail leave
their records for the next sweep with it, so each fetch carries a little more than a real one.
CPU per poll is this process's user + system time (``getrusage``, every thread) over the sweep, divided
by the agents polled; the noise is made outside the measured window. Goal: with / without <= 1.10.

**Agent.** ``secure-agent`` in its own process; a client makes served ``get_metrics`` calls at a steady
rate on a kept-alive connection; a flooder process makes ``--flood-rate`` connections a second from 60
networks outside the allowlist (127.N.0.1, the issue's first flood), each closed before TLS and each a
refusal for the audit log. Three series, interleaved in ``--rounds``: calls alone, the flood alone, both
together. The agent's CPU for served calls under the flood is (both - flood alone), per call, against
calls alone: the flood's own cost (accepting and closing) is the flood's, what the served calls pay on
top of theirs is the figure. Goal: <= 1.20. Beside it, the previous design (a record per refusal: the
budget raised out of reach, in the same run) shows what the flood wrote then and writes now.

Bounded: about a minute and a half with the defaults. The last line printed is ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import multiprocessing.synchronize
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import bench_collector
from bench.clients import Caller, CallFailed, ours_request, tls_context
from bench.measure import cpu_times
from bench.peers import Server, make_pki, start_agent
from bench.result import goal, show
from pki import make_certs
from secure_collector.alerts import AlertEngine
from secure_collector.audittrail import AuditTrail
from secure_collector.config import Thresholds
from secure_collector.poller import Poller
from secure_collector.sink import Delivery, Recorder
from secure_collector.spool import Spool
from storage.config import StorageConfig
from storage.factory import open_store

GOAL_COLLECTOR_RATIO = 1.10
GOAL_AGENT_RATIO = 1.20
NETWORKS = 60
CALL_INTERVAL = 0.02  # the served calls: 50 a second
NO_BUDGET = {"burst": 100_000, "per_second": 10_000, "per_source_burst": 100_000, "per_source_per_second": 10_000}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_audit", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--agents", type=int, default=40, help="agents polled by the collector (default 40)")
    parser.add_argument("--processes", type=int, default=2, help="child processes running them (default 2)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each series (default 6)")
    parser.add_argument("--noise", type=int, default=3, help="denied connections per agent between sweeps")
    parser.add_argument("--kept-alive", action="store_true", help="keep connections between sweeps")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each agent series (default 4)")
    parser.add_argument("--flood-rate", type=float, default=300.0, help="flood connections per second (default 300)")
    parser.add_argument("--only", choices=["collector", "agent"], help="run one half only")
    return parser.parse_args(argv)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- the collector ---------------------------------------------------------------------------------
def _knock(ports: dict[str, int], count: int) -> None:
    """``count`` connections to every agent from 127.0.0.2, which no agent allows: refusals to record."""
    for port in ports.values():
        for _ in range(count):
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", port), timeout=2, source_address=("127.0.0.2", 0)
            ) as sock:
                sock.settimeout(2)
                with contextlib.suppress(OSError):
                    sock.recv(1)


def collector_half(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as scratch:
        root = Path(scratch) / "pki"
        with contextlib.redirect_stdout(sys.stderr):
            if make_certs.main(["--out", str(root)]) != 0:
                raise SystemExit("make_certs failed")
        children, ports = bench_collector._start_agents(root, args.agents, args.processes)
        try:
            connections = bench_collector.connections_to(root, ports)
            data = Path(scratch) / "data"
            store = open_store(StorageConfig(type="file", json_file=data / "metrics.json"))
            delivery = Delivery(store, Spool(data / "spool", 64 * 1024 * 1024))
            trail = AuditTrail(sorted(ports))
            recorder = Recorder(delivery, AlertEngine(Thresholds()), trail=trail)
            if not recorder.load_audit_tails():
                raise SystemExit("the file store cannot say where the audit copies end")
            plain = Poller(connections, recorder, poll_interval=30, max_workers=32)
            audited = Poller(connections, recorder, poll_interval=30, max_workers=32, follow_up=trail)
            audited.poll_once()  # the first fetch copies every record since the agents started
            cpu = {"without": 0.0, "with": 0.0}
            polls = {"without": 0, "with": 0}
            failed = 0
            for number in range(args.rounds):
                order = ("without", "with") if number % 2 == 0 else ("with", "without")
                for mode in order:
                    _knock(ports, args.noise)
                    if not args.kept_alive:
                        for connection in connections:
                            connection.close()
                    poller = audited if mode == "with" else plain
                    before = _cpu()
                    results = poller.poll_once()
                    cpu[mode] += _cpu() - before
                    polls[mode] += len(results)
                    failed += sum(r.state != "up" for r in results)
            copied = sum(1 for name in ports for _ in store.read_audit(name))
            plain.close()
            store.close()
        finally:
            bench_collector._stop_agents(children)
    per_poll = {mode: cpu[mode] / polls[mode] * 1e6 for mode in cpu}
    ratio = per_poll["with"] / per_poll["without"]
    rows = [
        {
            "series": mode,
            "polls": polls[mode],
            "cpu_per_poll_us": round(per_poll[mode], 1),
            "connections": "kept alive" if args.kept_alive else "new each sweep (30 s interval)",
        }
        for mode in ("without", "with")
    ]
    rows.append({"series": "records copied (all sweeps)", "polls": copied, "failed polls": failed})
    goals = [goal("collector CPU per poll, with the trail / without", ratio, "<=", GOAL_COLLECTOR_RATIO, "x")]
    return rows, goals


# -- the agent ------------------------------------------------------------------------------------
def _flood(
    port: int, rate: float, ready: multiprocessing.synchronize.Event, stop: multiprocessing.synchronize.Event,
    results: Any,
) -> None:
    """Paced connections from 60 networks outside the allowlist, each closed by the agent before TLS."""
    made = 0
    started = time.perf_counter()
    ready.set()
    while not stop.is_set():
        network = 1 + made % NETWORKS
        with contextlib.suppress(OSError), socket.create_connection(
            ("127.0.0.1", port), timeout=2, source_address=(f"127.{network}.0.1", 0)
        ) as sock:
            sock.settimeout(2)
            with contextlib.suppress(OSError):
                sock.recv(1)
        made += 1
        time.sleep(max(0.0, started + made / rate - time.perf_counter()))  # pacing the flood, not synchronising
    results.put(made)


class Flood:
    def __init__(self, server: Server, rate: float) -> None:
        spawn = multiprocessing.get_context("spawn")
        self.ready = spawn.Event()
        self.stop = spawn.Event()
        self.results = spawn.Queue()
        self.process = spawn.Process(
            target=_flood, args=(server.port, rate, self.ready, self.stop, self.results), daemon=True
        )

    def __enter__(self) -> Flood:
        self.process.start()
        if not self.ready.wait(30):  # the child imports first: measure only while it floods
            raise SystemExit("the flooding process did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
        with contextlib.suppress(Exception):
            self.made = int(self.results.get(timeout=5))

    made = 0


def _calls(caller: Caller | None, seconds: float) -> int:
    """Served calls at a steady rate for ``seconds`` (or just the wait, without a caller)."""
    done = 0
    started = time.perf_counter()
    next_call = started
    while time.perf_counter() - started < seconds:
        if caller is not None:
            try:
                caller.call()
                done += 1
            except CallFailed:
                pass
        next_call += CALL_INTERVAL
        time.sleep(max(0.0, next_call - time.perf_counter()))  # pacing the calls, not synchronising
    return done


def _series(server: Server, caller: Caller | None, seconds: float, flood_rate: float | None) -> tuple[float, int, int]:
    """(agent CPU seconds, served calls, flood connections) over one series."""
    if flood_rate is None:
        before = cpu_times(server.pid)
        calls, made = _calls(caller, seconds), 0
        return cpu_times(server.pid).minus(before).total, calls, made
    with Flood(server, flood_rate) as flood:
        before = cpu_times(server.pid)
        calls = _calls(caller, seconds)
        cpu = cpu_times(server.pid).minus(before).total
    return cpu, calls, flood.made


def _records(server: Server, workdir: Path) -> int:
    log = workdir / f"agent-audit-{server.port}.log"
    return sum(1 for _ in log.open("rb")) if log.exists() else 0


def agent_half(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[Any]]:
    with tempfile.TemporaryDirectory(prefix="bench-audit-agent-") as scratch:
        root = Path(scratch)
        pki = make_pki(root / "pki")
        rows: list[dict[str, Any]] = []
        totals = {"calls": [0.0, 0], "flood": [0.0, 0], "both": [0.0, 0]}
        designs: dict[str, dict[str, Any]] = {}
        for design, overrides in (("budget (now)", None), ("a record per refusal (before)", NO_BUDGET)):
            workdir = root / design.split()[0]
            workdir.mkdir()
            server = start_agent(
                pki, workdir, rate_limit=(10_000, 10_000), check_interval=3600,
                extra={"audit_refusals": overrides} if overrides else None,
            )
            try:
                caller = Caller(server, ours_request(pki), tls_context(pki), keep_alive=True)
                caller.call()  # connect
                if overrides is None:
                    for _ in range(args.rounds):
                        for name, flood_rate, who in (
                            ("calls", None, caller), ("flood", args.flood_rate, None), ("both", args.flood_rate, caller)
                        ):
                            cpu, calls, _ = _series(server, who, args.seconds, flood_rate)
                            totals[name][0] += cpu
                            totals[name][1] += calls
                records_before = _records(server, workdir)
                cpu, _, made = _series(server, None, args.seconds, args.flood_rate)
                written = _records(server, workdir) - records_before
                designs[design] = {
                    "series": f"flood alone, {design}",
                    "connections per s": round(made / args.seconds, 1),
                    "records written per s": round(written / args.seconds, 1),
                    "agent CPU %": round(100 * cpu / args.seconds, 1),
                }
                caller.close()
            finally:
                server.stop()
        calls_cpu, calls_n = totals["calls"]
        flood_cpu, _ = totals["flood"]
        both_cpu, both_n = totals["both"]
        alone = calls_cpu / calls_n if calls_n else float("nan")
        under = (both_cpu - flood_cpu) / both_n if both_n else float("nan")
        rows.append({"series": "served calls alone", "calls": calls_n, "agent CPU per call us": round(alone * 1e6, 1)})
        rows.append(
            {"series": "served calls under the flood (both - flood alone)", "calls": both_n,
             "agent CPU per call us": round(under * 1e6, 1)}
        )
        rows.extend(designs.values())
    goals = [goal("agent CPU per served call, under the flood / alone", under / alone, "<=", GOAL_AGENT_RATIO, "x")]
    return rows, goals


def run(args: argparse.Namespace) -> dict[str, Any]:
    logging.disable(logging.WARNING)  # the collector's alerts about the benchmark's own hosts are not the figures
    tables: list[dict[str, Any]] = []
    goals: list[Any] = []
    if args.only in (None, "collector"):
        rows, found = collector_half(args)
        tables.append({"title": "collector: CPU per poll at a 30 s interval, with and without the audit trail",
                       "rows": rows})
        goals += found
    if args.only in (None, "agent"):
        rows, found = agent_half(args)
        tables.append({"title": f"agent: served calls (50/s) and a flood of {args.flood_rate:g} denied connections/s",
                       "rows": rows})
        goals += found
    return {
        "bench": "audit",
        "title": "The audit trail: collecting it, and a flood of refusals",
        "params": {
            "agents": args.agents, "rounds": args.rounds, "noise": args.noise, "kept_alive": args.kept_alive,
            "seconds": args.seconds, "flood_rate": args.flood_rate,
        },
        "tables": tables,
        "goals": goals,
        "notes": [
            "collector: what the trail adds per poll is one more request on the connection get_metrics opened "
            "(a token, a small answer), the seal and link check of a few records, and a write to each agent's "
            "central copy in the storage thread (not fsync'd: what a power loss takes is fetched again)",
            "agent: a denied connection costs the agent an accept() and a close in its accept loop; its refusal "
            "record is now counted into a summary once the budget is spent, instead of a write(2) each",
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    show(run(_parse(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
