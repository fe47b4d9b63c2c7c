"""Collector throughput: polls per second per collector core, and the time of one sweep of 200 agents.

    python -m bench.bench_collector [--agents 200] [--processes 4] [--sweeps 40] [--workers 32] [--profile]

The simulated agents are real agents (``secure_agent.lifecycle.Agent``, the same server ``secure-agent``
runs), several per process in ``--processes`` child processes on loopback ports, each with its own name,
a rate limit the benchmark cannot hit and a background scan once an hour (its cost is the agent's, not
ours). The collector runs in this process exactly as ``secure-collector`` builds it: one kept-alive
mutual-TLS connection per agent, a fresh SMON1 token per call, defused XML parsing, validation, alerts,
and the file store (JSON lines + the human-readable log, fsync per sweep).

Measured: back-to-back sweeps (``Poller.poll_once``: every agent once, ``--workers`` in flight, the sweep
stored as one batch). ``polls/s per core`` = polls / collector CPU seconds (``getrusage`` of this process,
user + system), so the agents' CPU on the same machine does not count against the collector. The sweep
time is wall-clock and does include waiting for agents, which share the machine's cores with us.
Bounded: well under two minutes. The last line printed is ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.result import emit, goal
from pki import make_certs, tokens
from pki.tls import client_context
from secure_collector.alerts import AlertEngine
from secure_collector.config import Thresholds
from secure_collector.poller import Poller
from secure_collector.sink import Delivery, Recorder
from secure_collector.spool import Spool
from secure_collector.transport import AgentConnection
from storage.config import StorageConfig
from storage.factory import open_store

GOAL_POLLS_PER_CORE = 1700.0
GOAL_SWEEP_MS = 150.0
FLOOR_NOTE = (
    "bare stdlib floor on this machine: ~2,400 polls/s/core for a minimal answer (issue 5); "
    "stdlib_floor_ping_per_core_s re-measures it in the same run, against the same agents"
)
LIMITS_NOTE = (
    "what limits polls per core (in-process timings of each step on this machine): reading the ~7-12 KB answer "
    "~270 us per poll in a busy hour (secure_collector.wire's fast path for the agent's layout, differential-tested "
    "against defusedxml.xmlrpc; the expat tree it falls back to costs ~630 us on the same answer, and expat alone "
    "with no handlers ~140 us), h11 for the HTTP/1.1 request and answer ~190 us, the answer "
    "model ~17 us, the sample ~13 us, JSON for the file store ~9 us, the request token ~6 us, alerts ~6 us; the "
    "rest of cpu_per_poll_us is TLS record work in OpenSSL, the sockets and the selector, and the kernel "
    "(of_which_kernel_us: loopback delivery to the agent is charged to the sender). The sweep time is bounded "
    "below by collector_cpu_per_sweep_ms (one thread does every poll's CPU work) plus the agents' CPU "
    "(~0.56 ms per call, 200 calls per sweep) on the same two cores: ~100 ms of work per core per sweep "
    "before any other load on the machine"
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- agent processes -----------------------------------------------------------------------------
def serve_agents(config_path: Path, names: Sequence[str]) -> None:
    """Child mode: run one real agent per name from one config template; print ports; wait for stdin EOF."""
    from secure_agent.config import AgentConfig
    from secure_agent.lifecycle import Agent

    template = json.loads(config_path.read_text())
    agents = []
    for name in names:
        data = dict(template, name=name, port=0, audit_log=str(config_path.parent / f"audit-{name}.log"))
        data["log_level"] = "WARNING"
        data["check_interval"] = 3600
        data["security"] = dict(template["security"], rate_limit={"per_second": 10_000, "burst": 100_000})
        data["server"] = {"max_connections": 64, "idle_timeout": 600}
        agent = Agent(AgentConfig.model_validate(data), config_path=None)
        agent.start()
        agents.append(agent)
    print(json.dumps({a.config.name: a.address[1] for a in agents}), flush=True)
    sys.stdin.read()
    for agent in agents:
        agent.stop(timeout=2.0)


def _start_agents(root: Path, count: int, processes: int) -> tuple[list[subprocess.Popen[str]], dict[str, int]]:
    names = [f"agent{i:03d}" for i in range(count)]
    children: list[subprocess.Popen[str]] = []
    ports: dict[str, int] = {}
    for index in range(processes):
        share = names[index::processes]
        command = [sys.executable, "-m", "bench.bench_collector", "--serve", str(root / "agent-localhost.json"), *share]
        children.append(subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for child in children:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise SystemExit("an agent process failed to start")
        ports.update(json.loads(line))
    return children, ports


def _stop_agents(children: list[subprocess.Popen[str]]) -> None:
    for child in children:
        if child.stdin is not None:
            child.stdin.close()
    for child in children:
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()


# -- the collector -------------------------------------------------------------------------------
def connections_to(root: Path, ports: dict[str, int]) -> list[AgentConnection]:
    """The collector's connections to the agents ``ports`` names, with the ``make_certs`` material in ``root``."""
    collectors = root / "collectors"
    context = client_context(collectors / "collector.crt", collectors / "collector.key", root / "ca.crt")
    key = tokens.load_key(collectors / "collector.hmac")
    return [
        AgentConnection(name, "127.0.0.1", port, context, "collector", key, timeout=10.0)
        for name, port in sorted(ports.items())
    ]


def _collector(root: Path, ports: dict[str, int], workers: int, data: Path) -> tuple[Poller, Delivery]:
    connections = connections_to(root, ports)
    store = open_store(StorageConfig(type="file", json_file=data / "metrics.json", metrics_file=data / "metrics.log"))
    delivery = Delivery(store, Spool(data / "spool", 64 * 1024 * 1024))
    recorder = Recorder(delivery, AlertEngine(Thresholds()))
    return Poller(connections, recorder, poll_interval=30, max_workers=workers), delivery


def _floor(root: Path, ports: dict[str, int], rounds: int) -> float:
    """The bare stdlib floor, measured here and now: http.client kept-alive, a signed ``ping`` (a minimal
    answer), ``xmlrpc.client.loads``; sequential, nothing validated or stored. Polls per CPU second."""
    collectors = root / "collectors"
    context = client_context(collectors / "collector.crt", collectors / "collector.key", root / "ca.crt")
    key = tokens.load_key(collectors / "collector.hmac")
    body = xmlrpc.client.dumps((), "ping").encode()
    connections = {
        name: http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
        for name, port in ports.items()
    }
    calls = 0
    cpu0 = 0.0
    for round_number in range(rounds + 1):
        if round_number == 1:  # the first round connects; not measured
            cpu0, calls = _cpu(), 0
        for name, connection in connections.items():
            headers = {"Content-Type": "text/xml", "Authorization": tokens.sign("collector", key, name, body)}
            connection.request("POST", "/RPC2", body=body, headers=headers)
            xmlrpc.client.loads(connection.getresponse().read())
            calls += 1
    cpu = _cpu() - cpu0
    for connection in connections.values():
        connection.close()
    return calls / cpu if cpu > 0 else float("nan")


def _profile(poller: Poller, sweeps: int) -> list[dict[str, Any]]:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(sweeps):
        poller.poll_once()
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    rows = []
    for (filename, line, function), (_, calls, tottime, cumtime, _) in sorted(
        stats.stats.items(),
        key=lambda item: item[1][2],
        reverse=True,  # type: ignore[attr-defined]
    )[:15]:
        rows.append(
            {
                "function": f"{Path(filename).name}:{line}({function})",
                "calls": calls,
                "tottime_ms": round(tottime * 1000, 1),
                "cumtime_ms": round(cumtime * 1000, 1),
            }
        )
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-collector-") as scratch:
        root = Path(scratch) / "pki"
        if make_certs.main(["--out", str(root)]) != 0:
            raise SystemExit("make_certs failed")
        started = time.monotonic()
        load_before = os.getloadavg()[0]
        children, ports = _start_agents(root, args.agents, args.processes)
        try:
            poller, delivery = _collector(root, ports, args.workers, Path(scratch) / "data")
            warm = poller.poll_once()  # connect, handshake: not part of the steady state measured
            if any(r.state != "up" for r in warm):
                bad = [(r.agent, r.state, r.detail) for r in warm if r.state != "up"][:3]
                raise SystemExit(f"agents not answering: {bad}")
            sweep_ms: list[float] = []
            polls = 0
            failures = 0
            cpu0, wall0 = _cpu(), time.perf_counter()
            kernel0 = resource.getrusage(resource.RUSAGE_SELF).ru_stime
            for _ in range(args.sweeps):
                t0 = time.perf_counter()
                results = poller.poll_once()
                sweep_ms.append((time.perf_counter() - t0) * 1000)
                polls += len(results)
                failures += sum(r.state != "up" for r in results)
                if time.monotonic() - started > args.budget:
                    break
            cpu, wall = _cpu() - cpu0, time.perf_counter() - wall0
            kernel = resource.getrusage(resource.RUSAGE_SELF).ru_stime - kernel0
            profile = _profile(poller, 3) if args.profile else []
            floor = _floor(root, ports, args.floor_rounds)
            poller.close()
            delivery.store.close()
            with open(Path(scratch) / "data" / "metrics.json", "rb") as handle:
                stored = sum(1 for _ in handle)
        finally:
            _stop_agents(children)
    per_core = polls / cpu if cpu > 0 else float("nan")
    load_after = os.getloadavg()[0]
    p50 = statistics.median(sweep_ms)
    result: dict[str, Any] = {
        "bench": "collector",
        "title": "Collector polls per core and sweep time",
        "params": {
            "agents": args.agents,
            "processes": args.processes,
            "workers": args.workers,
            "sweeps": len(sweep_ms),
        },
        "tables": [
            {
                "title": "steady state (kept-alive connections, file store)",
                "rows": [
                    {
                        "polls": polls,
                        "failed": failures,
                        "stored_lines": stored,
                        "collector_cpu_s": round(cpu, 3),
                        "wall_s": round(wall, 3),
                        "polls_per_core_s": round(per_core, 1),
                        "polls_per_wall_s": round(polls / wall, 1),
                        "cpu_per_poll_us": round(cpu / polls * 1e6, 1),
                        "of_which_kernel_us": round(kernel / polls * 1e6, 1),
                        "collector_cpu_per_sweep_ms": round(cpu / polls * args.agents * 1000, 1),
                        "sweep_p50_ms": round(p50, 1),
                        "sweep_min_ms": round(min(sweep_ms), 1),
                        "sweep_max_ms": round(max(sweep_ms), 1),
                        "stdlib_floor_ping_per_core_s": round(floor, 1),
                        "share_of_floor": round(per_core / floor, 2),
                        "loadavg_1min": f"{load_before:.1f} -> {load_after:.1f}",
                    }
                ],
            }
        ],
        "goals": [
            goal("polls per collector core", per_core, ">=", GOAL_POLLS_PER_CORE, "polls/s"),
            goal(f"sweep of {args.agents} agents (p50)", p50, "<", GOAL_SWEEP_MS, "ms"),
        ],
        "notes": [FLOOR_NOTE, LIMITS_NOTE],
    }
    if profile:
        result["profile"] = {"cProfile top (3 sweeps, tottime)": profile}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        serve_agents(Path(argv[1]), argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.bench_collector", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--sweeps", type=int, default=40)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--budget", type=float, default=90.0, help="seconds of measuring at most")
    parser.add_argument("--profile", action="store_true", help="add a cProfile of three more sweeps")
    parser.add_argument("--floor-rounds", type=int, default=5, help="rounds of the stdlib floor measurement")
    args = parser.parse_args(argv)
    result = run(args)
    row = result["tables"][0]["rows"][0]
    for key, value in row.items():
        print(f"{key:>20}: {value}")
    for item in result["goals"]:
        verdict = "met" if item["met"] else f"MISSED: {item['miss']}"
        print(f"goal {item['name']}: {item['value']:.1f} {item['unit']} ({verdict})")
    for item in result.get("profile", {}).get("cProfile top (3 sweeps, tottime)", []):
        print(f"  {item['tottime_ms']:>8} ms {item['calls']:>7}  {item['function']}")
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
