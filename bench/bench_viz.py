"""Benchmark secure-viz: 100 agents x 24 h at 30 s (288,000 samples) through the file backend.

Run from the repository root: ``.venv/bin/python bench/bench_viz.py [--agents 100] [--repeat 3]``.
It writes the samples (and a status per poll, and some alerts) through ``storage.file.FileStore`` into a
temporary directory, then times ``secure-viz --plot all`` in this process after the imports, for the
whole fleet and for one agent, with a breakdown of query, preparation and drawing. Not part of the
test suite; finishes well within two minutes on 2 cores.

Targets (issue 7): the fleet in under 3 s, one agent's day in under 0.3 s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.result import emit, goal
from storage.base import Batch
from storage.file import FileStore
from storage.models import AgentStatus, Alert, Sample
from viz.cli import main
from viz.config import PlotThresholds
from viz.plots import PLOTS, PlotInput
from viz.render import render_plots
from viz.series import Window, prepare

HOURS = 24
STEP = 30.0
FLEET_TARGET = 3.0
AGENT_TARGET = 0.3
THREATS = ("none", "low", "medium", "high")


def generate(directory: Path, agents: int, end: float) -> Path:
    """Write the fleet's history through FileStore, one batch per polling sweep; return the JSON file."""
    rng = np.random.default_rng(7)
    names = [f"host-{i:03d}" for i in range(agents)]
    ticks = np.arange(end - HOURS * 3600 + STEP, end + 1, STEP)
    shape = (len(ticks), agents)
    base = rng.uniform(10, 60, agents)
    cpu = np.clip(base + 25 * np.sin(np.arange(len(ticks))[:, None] / 120 + base) + rng.normal(0, 5, shape), 0, 100)
    temperature = np.clip(40 + cpu * 0.4 + rng.normal(0, 1, shape), 0, 120)
    load = np.clip(cpu / 25 + rng.normal(0, 0.2, shape), 0, None)
    memory = np.clip(rng.uniform(30, 80, agents) + rng.normal(0, 2, shape), 0, 100)
    disk = np.clip(rng.uniform(20, 90, agents) + np.linspace(0, 3, len(ticks))[:, None], 0, 100)
    ssh = rng.poisson(0.3, shape)
    threat = np.minimum(ssh // 2, 3)
    no_sensor = set(names[::10])
    json_file = directory / "data" / "metrics_data.json"
    store = FileStore(json_file, max_bytes=1024 * 1024 * 1024, backup_count=2, fsync=False)
    try:
        for row, tick in enumerate(ticks):
            samples = []
            statuses = []
            for col, name in enumerate(names):
                timestamp = float(tick) + col * 0.05
                sensor = name not in no_sensor
                samples.append(
                    Sample.model_construct(
                        agent=name,
                        timestamp=timestamp,
                        cpu_usage=float(cpu[row, col]),
                        cpu_temperature=float(temperature[row, col]) if sensor else None,
                        temperature_reason=None if sensor else "no thermal zone or hwmon sensor",
                        temperature_high=80.0 if sensor else None,
                        temperature_critical=None,
                        load_1=float(load[row, col]),
                        load_5=float(load[row, col]) * 0.9,
                        load_15=float(load[row, col]) * 0.8,
                        memory_usage=float(memory[row, col]),
                        disk_usage=float(disk[row, col]),
                        security_issues=int(threat[row, col]),
                        threat_level=THREATS[int(threat[row, col])],
                        swap_usage=None,
                        cpu_count=4,
                        ssh_failures=int(ssh[row, col]),
                        security_age=None,
                        findings=(),
                        extra={},
                    )
                )
                statuses.append(
                    AgentStatus.model_construct(agent=name, timestamp=timestamp, state="up", detail="", latency_ms=3.0)
                )
            alerts = (
                [
                    Alert(
                        agent=names[row % agents],
                        timestamp=float(tick),
                        metric="cpu_usage",
                        value=95.0,
                        threshold=80.0,
                        severity="warning",
                        message="CPU usage above threshold",
                    )
                ]
                if row % 97 == 0
                else []
            )
            store.write(Batch(samples=samples, alerts=alerts, statuses=statuses))
    finally:
        store.close()
    return json_file


class Timing(NamedTuple):
    wall: list[float]
    cpu: list[float]
    """CPU seconds of this process and of the helpers it forked and reaped meanwhile."""


def _cpu() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def timed(action: Callable[[], object], repeat: int) -> Timing:
    walls, cpus = [], []
    for _ in range(repeat):
        cpu = _cpu()
        started = time.perf_counter()
        action()
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu() - cpu)
    return Timing(walls, cpus)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def report(label: str, timing: Timing, target: float | None = None) -> bool:
    verdict = ""
    ok = True
    if target is not None:
        ok = min(timing.wall) < target
        verdict = f"  target < {target:g} s: {'PASS' if ok else 'FAIL'}"
    print(
        f"{label:<40} wall min {min(timing.wall):6.3f} s  median {statistics.median(timing.wall):6.3f} s"
        f"  cpu min {min(timing.cpu):6.3f} s{verdict}"
    )
    return ok


def run_cli(config: Path, out: Path, *extra: str) -> None:
    with quiet():
        code = main(["--config", str(config), "--output-dir", str(out), *extra])
    if code != 0:
        raise SystemExit(f"secure-viz exited {code}")


def main_bench() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-viz-") as scratch:
        root = Path(scratch)
        end = time.time()
        started = time.perf_counter()
        json_file = generate(root, args.agents, end)
        size = json_file.stat().st_size / 1e6
        print(
            f"wrote {args.agents} agents x {HOURS} h at {STEP:g} s through FileStore "
            f"({size:.0f} MB of samples) in {time.perf_counter() - started:.1f} s"
        )
        config = root / "collector.json"
        config.write_text(
            json.dumps(
                {
                    "storage": {
                        "type": "file",
                        "json_file": str(json_file),
                        "rotation": {"max_size": "1GB", "backup_count": 2},
                    }
                }
            )
        )
        one = "host-042"
        fleet = timed(lambda: run_cli(config, root / "fleet", "--plot", "all"), args.repeat)
        ok = report(f"--plot all, {args.agents} agents", fleet, FLEET_TARGET)
        agent_all = timed(lambda: run_cli(config, root / "one", "--plot", "all", "--agent", one), args.repeat)
        ok &= report(f"--plot all --agent {one}", agent_all, AGENT_TARGET)
        agent_cpu = timed(lambda: run_cli(config, root / "one-cpu", "--plot", "cpu", "--agent", one), args.repeat)
        report(f"--plot cpu --agent {one}", agent_cpu)
        goals = [
            goal(
                f"viz --plot all, {args.agents} agents x 24 h (best of {args.repeat})",
                min(fleet.wall),
                "<",
                FLEET_TARGET,
                "s",
                f"{size:.0f} MB of samples through FileStore; cpu {min(fleet.cpu):.2f} s",
            ),
            goal(
                "viz --plot all, one agent's day",
                min(agent_all.wall),
                "<",
                AGENT_TARGET,
                "s",
                f"six plots and index.html; one plot (--plot cpu) {min(agent_cpu.wall):.3f} s",
            ),
        ]

        print("breakdown, whole fleet:")
        store = FileStore(json_file, readonly=True)
        window = Window(end - HOURS * 3600, end + 60)
        report("  query_samples", timed(lambda: store.query_samples(*window), args.repeat))
        report("  query_statuses", timed(lambda: store.query_statuses(*window), args.repeat))
        report("  query_alerts (all history)", timed(lambda: store.query_alerts(0.0, window.end), args.repeat))
        samples = store.query_samples(*window)
        print(f"  ({len(samples)} samples)")
        report("  prepare (factorise, bin)", timed(lambda: prepare(samples, window), args.repeat))
        data = PlotInput(prepare(samples, window), PlotThresholds())
        report(
            f"  draw {len(PLOTS)} PNGs, 2 processes",
            timed(lambda: render_plots(list(PLOTS), data, root / "fleet", workers=2), args.repeat),
        )
        report(
            f"  draw {len(PLOTS)} PNGs, 1 process",
            timed(lambda: render_plots(list(PLOTS), data, root / "fleet", workers=1), args.repeat),
        )
        print(f"breakdown, {one}:")
        report("  query_samples", timed(lambda: store.query_samples(*window, one), args.repeat))
        report("  query_statuses", timed(lambda: store.query_statuses(*window, one), args.repeat))
        report("  query_alerts (all history)", timed(lambda: store.query_alerts(0.0, window.end, one), args.repeat))
        mine = store.query_samples(*window, one)
        mine_data = PlotInput(prepare(mine, window), PlotThresholds())
        report(
            f"  draw {len(PLOTS)} PNGs, 2 processes",
            timed(lambda: render_plots(list(PLOTS), mine_data, root / "one", workers=2), args.repeat),
        )
        report(
            f"  draw {len(PLOTS)} PNGs, 1 process",
            timed(lambda: render_plots(list(PLOTS), mine_data, root / "one", workers=1), args.repeat),
        )
        store.close()
    load = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"load average at the end: {load} (other work on the machine skews wall times)")
    print("all targets met" if ok else "TARGET MISSED")
    emit({"goals": goals})
    return 0  # a missed target is reported in the goals, not a failure of the benchmark


if __name__ == "__main__":
    sys.exit(main_bench())
