"""Slow agents cost healthy ones nothing: the sweep of 200 healthy agents with and without 20 slow ones.

    python -m bench.bench_slow_agents [--agents 200] [--slow 20] [--sweeps 6] [--interval 3] [--timeout 2]

The healthy agents are real agents (as in bench_collector: several per child process). The slow ones
are TLS peers of the same CA in another child process that answer a valid ``get_metrics`` after
``--delay`` of ``timeout`` (0.7: slow, but before the deadline, so they count as up). The collector runs
``Poller.run`` as ``secure-collector`` does (``--workers`` in flight, ``--interval`` ticks), three times in
the same run:

- ``without slow``: the healthy agents alone;
- ``with slow``: the same plus the slow agents (slow agents and failing ones share a quarter of the workers);
- ``previous design``: the same plus the slow agents, with the slow mark turned off (as before issue 13:
  only failing agents were capped), to show what the cap is for.

A sweep's time is from its tick until the last healthy agent's result of that tick; the first sweep
(connections, handshakes, and the slow agents not yet judged) is left out. Goal: the median sweep with
slow agents within 10 % of the median without. The last line printed is ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.bench_collector import _start_agents, _stop_agents
from bench.result import emit, goal
from pki import make_certs, tls, tokens
from pki.tls import client_context
from secure_collector import poller as poller_module
from secure_collector.alerts import AlertEngine
from secure_collector.config import Thresholds
from secure_collector.poller import Poller
from secure_collector.sink import Delivery, PollResult, Recorder
from secure_collector.spool import Spool
from secure_collector.transport import AgentConnection
from storage.memory import MemoryStore

GOAL_RATIO = 1.10


# -- the slow peers (child mode) -------------------------------------------------------------------
def serve_slow(root: Path, count: int, delay: float) -> None:
    """Child mode: ``count`` TLS peers answering valid answers after ``delay`` s; print ports; wait for EOF."""
    agents = root / "agents"
    context = tls.server_context(agents / "localhost.crt", agents / "localhost.key", root / "ca.crt")
    ports: dict[str, int] = {}
    listeners = []
    for index in range(count):
        name = f"slow{index:03d}"
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)
        ports[name] = listener.getsockname()[1]
        threading.Thread(target=_accept, args=(listener, context, name, delay), daemon=True).start()
    print(json.dumps(ports), flush=True)
    sys.stdin.read()


def _accept(listener: socket.socket, context: ssl.SSLContext, name: str, delay: float) -> None:
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=_serve, args=(raw, context, name, delay), daemon=True).start()


def _serve(raw: socket.socket, context: ssl.SSLContext, name: str, delay: float) -> None:
    try:
        with context.wrap_socket(raw, server_side=True) as conn:
            while _read_request(conn):
                time.sleep(delay)  # the behaviour under test: a valid answer just before the deadline
                answer = {"agent": name, "timestamp": time.time(), "cpu_usage": 1.0}
                body = xmlrpc.client.dumps((answer,), methodresponse=True).encode()
                head = b"HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(body)
                conn.sendall(head + body)
    except (OSError, ssl.SSLError, ValueError):
        return


def _read_request(conn: ssl.SSLSocket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = int(lengths[0]) if lengths else 0
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        rest += chunk
    return True


# -- the collector ---------------------------------------------------------------------------------
class _Timing(Recorder):
    """A recorder that also notes when each result arrived (the collector's clock, as stored)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[str, float]] = []

    def add(self, result: PollResult) -> None:
        self.arrivals.append((result.agent, result.timestamp))
        super().add(result)


def _sweeps(root: Path, ports: dict[str, int], args: argparse.Namespace, scratch: Path) -> list[float]:
    collectors = root / "collectors"
    context = client_context(collectors / "collector.crt", collectors / "collector.key", root / "ca.crt")
    key = tokens.load_key(collectors / "collector.hmac")
    connections = [
        AgentConnection(name, "127.0.0.1", port, context, "collector", key, timeout=args.timeout)
        for name, port in sorted(ports.items())
    ]
    recorder = _Timing(Delivery(MemoryStore(), Spool(scratch, 64 * 1024 * 1024)), AlertEngine(Thresholds()))
    poller = Poller(connections, recorder, poll_interval=args.interval, max_workers=args.workers)
    start = time.time()
    poller.run(max_sweeps=args.sweeps)
    poller.close()
    times = []
    for tick in range(1, args.sweeps):
        begin = start + tick * args.interval
        healthy = [
            t for agent, t in recorder.arrivals if agent.startswith("agent") and begin <= t < begin + args.interval
        ]
        if healthy:
            times.append((max(healthy) - begin) * 1000)
    return times


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as scratch:
        root = Path(scratch) / "pki"
        if make_certs.main(["--out", str(root)]) != 0:
            raise SystemExit("make_certs failed")
        children, healthy = _start_agents(root, args.agents, args.processes)
        command = [sys.executable, "-m", "bench.bench_slow_agents", "--serve-slow", str(root), str(args.slow)]
        slow_child = subprocess.Popen(
            [*command, str(args.delay * args.timeout)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        children.append(slow_child)
        try:
            assert slow_child.stdout is not None
            slow = json.loads(slow_child.stdout.readline())
            without = _sweeps(root, healthy, args, Path(scratch) / "spool-a")
            with_slow = _sweeps(root, healthy | slow, args, Path(scratch) / "spool-b")
            share = poller_module.SLOW_SHARE
            poller_module.SLOW_SHARE = float("inf")  # the previous design: slow agents were never capped
            try:
                previous = _sweeps(root, healthy | slow, args, Path(scratch) / "spool-c")
            finally:
                poller_module.SLOW_SHARE = share
        finally:
            _stop_agents(children)
    runs = (("without", without), ("with", with_slow), ("previous", previous))
    medians = {name: statistics.median(v) if v else float("nan") for name, v in runs}
    ratio = medians["with"] / medians["without"]
    return {
        "bench": "slow_agents",
        "title": f"Sweep of {args.agents} healthy agents, with and without {args.slow} slow ones",
        "params": vars(args) | {"delay_s": args.delay * args.timeout},
        "tables": [
            {
                "title": "healthy agents' sweep time (ms, from the tick to the last healthy result; sweep 1 left out)",
                "rows": [
                    {
                        "run": label,
                        "sweeps": len(times),
                        "p50_ms": round(medians[name], 1),
                        "max_ms": round(max(times, default=float("nan")), 1),
                    }
                    for (name, times), label in zip(
                        runs, ("without slow", "with slow (capped)", "previous design (slow not capped)"), strict=True
                    )
                ],
            }
        ],
        "goals": [goal(f"sweep with {args.slow} slow agents / without", ratio, "<=", GOAL_RATIO, "x")],
        "notes": [
            "slow = a valid answer after more than half of timeout; slow and failing agents together hold at most "
            "a quarter of max_workers (secure_collector.poller)"
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve-slow"]:
        serve_slow(Path(argv[1]), int(argv[2]), float(argv[3]))
        return 0
    description = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.bench_slow_agents", description=description)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--slow", type=int, default=20)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--sweeps", type=int, default=6)
    parser.add_argument("--interval", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--delay", type=float, default=0.7, help="the slow answer's delay, as a share of timeout")
    args = parser.parse_args(argv)
    result = run(args)
    for row in result["tables"][0]["rows"]:
        print(f"{row['run']:>36}: p50 {row['p50_ms']} ms, max {row['max_ms']} ms over {row['sweeps']} sweeps")
    for item in result["goals"]:
        verdict = "met" if item["met"] else f"MISSED: {item['miss']}"
        print(f"goal {item['name']}: {item['value']:.2f} {item['unit']} ({verdict})")
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
