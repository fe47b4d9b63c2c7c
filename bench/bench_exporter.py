"""What the exporter costs the polling loop: collector CPU per poll with and without ``/metrics`` being scraped.

    python -m bench.bench_exporter [--agents 200] [--fleet 1000] [--blocks 6] [--sweeps 10] [--scrape-every 0.5]

Real agents in child processes (as bench_collector), polled by the collector's own ``Poller`` and
``Recorder`` over mutual TLS, back-to-back sweeps. Blocks alternate, A B A B, so that the machine's hour
affects both alike:

- ``A, without exporter``: the recorder tells no one;
- ``B, with exporter``: the recorder tells a :class:`FleetView` of ``--fleet`` agents (the polled ones plus
  others seen earlier, whose encodings are kept), served on loopback and scraped by another process every
  ``--scrape-every`` s (Prometheus scrapes every 15 s to 1 min: this is far more often), gzip accepted as
  Prometheus asks.

Collector CPU is ``getrusage`` of this process (the scraper's own CPU is its process's, as Prometheus's would
be). Goal: CPU per poll with the exporter within 5 % of without. Also printed: one scrape's encoding of the
whole fleet, and the same with ``prometheus_client``'s ``generate_latest``. Last line: ``BENCH_RESULT {json}``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from bench.bench_collector import _cpu, _start_agents, _stop_agents, connections_to
from bench.result import emit, goal
from pki import make_certs
from secure_collector.alerts import AlertEngine
from secure_collector.config import Thresholds
from secure_collector.exporter import Exporter, FleetFamilies, FleetView, MetricsApp
from secure_collector.poller import Poller
from secure_collector.sink import Delivery, Recorder
from secure_collector.spool import Spool
from storage.memory import MemoryStore
from storage.models import Sample

GOAL_RATIO = 1.05
SCRAPER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
while True:
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
    time.sleep(every)
"""


def _others(view: FleetView, count: int) -> None:
    """Agents seen earlier and not polled since: in the view, their encodings kept between scrapes."""
    for i in range(count):
        agent = f"other-{i:04d}"
        sample = Sample(agent=agent, timestamp=1.7e9, cpu_usage=12.5, load_1=0.3, memory_usage=40.0, disk_usage=55.0)
        view.observe(agent, 1.7e9, "up", 3.0, sample, {})


def _poller(root: Path, ports: dict[str, int], workers: int, folder: Path, view: FleetView | None) -> Poller:
    delivery = Delivery(MemoryStore(), Spool(folder, 64 * 1024 * 1024))
    observe = view.observe if view is not None else None
    recorder = Recorder(delivery, AlertEngine(Thresholds()), observe=observe)
    return Poller(connections_to(root, ports), recorder, poll_interval=30, max_workers=workers)


def _encodings(view: FleetView) -> tuple[float, float]:
    """Milliseconds to encode the whole fleet anew: ours (as a scrape after every agent was polled), the library's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetFamilies(view))
    ours, library = [], []
    for _ in range(5):
        app = MetricsApp(view)  # a new cache: every agent encoded
        started = time.perf_counter()
        app.body("", "gzip")
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        generate_latest(registry)
        library.append(time.perf_counter() - started)
    return statistics.median(ours) * 1000, statistics.median(library) * 1000


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-exporter-") as scratch:
        root = Path(scratch) / "pki"
        if make_certs.main(["--out", str(root)]) != 0:
            raise SystemExit("make_certs failed")
        children, ports = _start_agents(root, args.agents, args.processes)
        view = FleetView()
        _others(view, max(0, args.fleet - args.agents))
        exporter = Exporter(view, "127.0.0.1:0")
        url = f"http://127.0.0.1:{exporter.address.port}/metrics"
        plain = _poller(root, ports, args.workers, Path(scratch) / "a", None)
        told = _poller(root, ports, args.workers, Path(scratch) / "b", view)
        cpu: dict[str, float] = {"A, without exporter": 0.0, "B, with exporter": 0.0}
        polls: dict[str, int] = dict.fromkeys(cpu, 0)
        per_block: dict[str, list[float]] = {name: [] for name in cpu}
        try:
            for poller in (plain, told):
                if any(r.state != "up" for r in poller.poll_once()):  # connections and handshakes: not measured
                    raise SystemExit("agents not answering")
            for block in range(args.blocks):
                name = "A, without exporter" if block % 2 == 0 else "B, with exporter"
                poller = plain if block % 2 == 0 else told
                scraper = None
                if poller is told:
                    scraper = subprocess.Popen([sys.executable, "-c", SCRAPER, url, str(args.scrape_every)])
                try:
                    before, done = _cpu(), 0
                    for _ in range(args.sweeps):
                        done += len(poller.poll_once())
                    used = _cpu() - before
                finally:
                    if scraper is not None:
                        scraper.kill()
                        scraper.wait()
                cpu[name] += used
                polls[name] += done
                per_block[name].append(used / done * 1e6)
            ours_ms, library_ms = _encodings(view)
            body = MetricsApp(view).body()[2]
        finally:
            plain.close()
            told.close()
            exporter.close()
            _stop_agents(children)
    per_poll = {name: cpu[name] / polls[name] * 1e6 for name in cpu}
    ratio = per_poll["B, with exporter"] / per_poll["A, without exporter"]
    return {
        "bench": "exporter",
        "title": "The exporter's cost to the polling loop",
        "params": vars(args),
        "tables": [
            {
                "title": f"collector CPU per poll, {args.agents} agents polled, a view of {args.fleet} agents scraped "
                f"every {args.scrape_every} s (blocks A B A B ...)",
                "rows": [
                    {
                        "run": name,
                        "polls": polls[name],
                        "cpu_per_poll_us": round(per_poll[name], 1),
                        "per_block_us": [round(v, 1) for v in per_block[name]],
                    }
                    for name in cpu
                ],
            },
            {
                "title": f"one scrape of {args.fleet} agents, every agent encoded anew",
                "rows": [
                    {
                        "ours_with_gzip_ms": round(ours_ms, 1),
                        "prometheus_client_generate_latest_ms": round(library_ms, 1),
                        "bytes": len(body),
                        "series": body.count(b"\n") - body.count(b"\n#"),
                    }
                ],
            },
        ],
        "goals": [goal("collector CPU per poll with exporter scraped / without", ratio, "<=", GOAL_RATIO, "x")],
    }


def main(argv: Sequence[str] | None = None) -> int:
    description = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.bench_exporter", description=description)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--fleet", type=int, default=1000)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--scrape-every", type=float, default=0.5)
    args = parser.parse_args(argv)
    result = run(args)
    for table in result["tables"]:
        print(table["title"])
        for row in table["rows"]:
            print("  " + ", ".join(f"{key}: {value}" for key, value in row.items()))
    for item in result["goals"]:
        verdict = "met" if item["met"] else f"MISSED: {item['miss']}"
        print(f"goal {item['name']}: {item['value']:.3f} {item['unit']} ({verdict})")
    emit(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
