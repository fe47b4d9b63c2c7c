"""Back-filling a day of one agent: how long the collector takes to fetch, check and store 2,880 samples.

    python -m bench.bench_backfill [--samples 2880] [--rounds 3]

A real agent (in this process, its own threads) whose buffer holds ``--samples`` samples (a day at the
default 30 s ``sample_interval``), and the collector's own ``Poller``, ``Recorder`` and back-fill over mutual
TLS into a file store, as after a day's outage: one sweep that back-fills everything (``max_per_sweep`` is
3,000). Each round uses a fresh store and collector state; the buffer is the same. Also printed: what
taking one sample costs the agent (its background thread, once per ``sample_interval``).
Goal (issue 18): a day of one agent back-filled in under 2 s. Last line: ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.result import emit, goal
from pki import make_certs, tls, tokens
from secure_agent.config import AgentConfig
from secure_agent.lifecycle import Agent
from secure_agent.metrics import MetricsService
from secure_collector.alerts import AlertEngine
from secure_collector.backfill import Backfill, FollowUps
from secure_collector.config import Thresholds
from secure_collector.poller import Poller
from secure_collector.sink import Delivery, Recorder
from secure_collector.spool import Spool
from secure_collector.transport import AgentConnection
from storage.config import StorageConfig
from storage.factory import open_store

GOAL_SECONDS = 2.0


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_backfill", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--samples", type=int, default=2880, help="buffered samples (default 2880: a day at 30 s)")
    parser.add_argument("--rounds", type=int, default=3, help="back-fills timed (default 3)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as scratch:
        root = Path(scratch) / "pki"
        with contextlib.redirect_stdout(io.StringIO()):
            make_certs.main(["--out", str(root)])
        data = json.loads((root / "agent-localhost.json").read_text())
        data.update(port=0, audit_log=str(Path(scratch) / "audit.log"), sample_interval=3600)
        data["security"]["rate_limit"] = {"per_second": 1000, "burst": 1000}
        config = AgentConfig.model_validate(data)
        service = MetricsService(config)
        agent = Agent(config, metrics=lambda _config: service)
        agent.start()
        try:
            started = time.thread_time()
            for _ in range(args.samples):
                service.take_sample()
            per_sample_ms = (time.thread_time() - started) / args.samples * 1000
            seconds = [_backfill(root, Path(scratch) / f"round-{n}", agent, args.samples) for n in range(args.rounds)]
        finally:
            agent.stop(timeout=2.0)
    best = min(seconds)
    return {
        "bench": "backfill",
        "title": "Back-filling a day of one agent",
        "params": {"samples": args.samples, "rounds": args.rounds},
        "tables": [
            {
                "title": "one sweep that back-fills the whole buffer (fetch, validate, store)",
                "rows": [
                    {"samples": args.samples, "seconds_best": round(best, 3),
                     "seconds_median": round(statistics.median(seconds), 3),
                     "samples_per_second": round(args.samples / best)},
                ],
            },
            {"title": "the agent taking one sample", "rows": [{"cpu_ms": round(per_sample_ms, 3)}]},
        ],
        "goals": [goal("a day of one agent back-filled", best, "<", GOAL_SECONDS, "s")],
    }


def _backfill(root: Path, folder: Path, agent: Agent, expected: int) -> float:
    folder.mkdir()
    cert, key = root / "collectors" / "collector.crt", root / "collectors" / "collector.key"
    context = tls.client_context(cert, key, root / "ca.crt")
    hmac = tokens.load_key(root / "collectors" / "collector.hmac")
    host, port = agent.address
    connection = AgentConnection("localhost", host, port, context, "collector", hmac, timeout=30)
    store = open_store(StorageConfig(type="file", json_file=folder / "metrics.json"))
    delivery = Delivery(store, Spool(folder / "spool", 64 * 1024 * 1024))
    backfill = Backfill(["localhost"])
    backfill.load({"localhost": 0})  # a collector that last saw this agent before its first sample
    recorder = Recorder(delivery, AlertEngine(Thresholds()), backfill=(backfill, _NoState()))
    poller = Poller([connection], recorder, poll_interval=30, max_workers=4, follow_up=FollowUps(backfill=backfill))
    try:
        started = time.perf_counter()
        poller.poll_once()
        elapsed = time.perf_counter() - started
    finally:
        poller.close()
        store.close()
    stored = sum(1 for line in (folder / "metrics.json").read_text().splitlines() if '"backfilled":true' in line)
    if stored != expected:
        raise SystemExit(f"back-filled {stored} samples, expected {expected}")
    return elapsed


class _NoState:
    def save(self, state: dict[str, int]) -> None:
        del state


def main(argv: Sequence[str] | None = None) -> int:
    result = run(_parse(argv))
    for table in result["tables"]:
        print(table["title"], table["rows"])
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
