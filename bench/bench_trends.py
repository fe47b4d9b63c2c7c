"""Trend rollups (issue 17): long ranges from trends against today's raw path, on MariaDB and on files.

    python -m bench.bench_trends [--agents 100] [--days 30] [--year-days 365] [--backend mysql --backend files]
                                 [--repeat 3] [--raw-repeat 1] [--no-raw-fleet] [--collector-us US]

What it does, in this order (each step timed and printed):

1. Starts a private MariaDB (``tests.plugins.mariadb.MariaDBServer``: ``mariadbd`` under a temporary
   directory, with a 2 GB buffer pool and ``local_infile``; stopped at the end).
2. **CPU of a stored sample** with trends on and off: ``store.write(Batch(samples=sweep))`` of 100-agent
   sweeps at 30 s into a fresh database / file store, ``time.process_time`` of this process (the MySQL
   server's own CPU is read from ``/proc`` and reported beside it, not counted in the goal). Off means the
   bench patches ``storage.mysqltrends.refresh_statements`` to return ``[]`` (and ``storage.mysql.touched``
   to ``{}``, so that no trend code runs at all) for MySQL, and ``FileTrends.add`` to do nothing for files.
   The difference is related to the collector's whole CPU per stored sample: ``cpu_per_poll_us`` of
   ``python -m bench.bench_collector --sweeps 10`` run first (or ``--collector-us``).
3. **A month of raw samples**, ``--agents`` x ``--days`` at 30 s (8.64 M samples by default), generated with
   numpy a day at a time and bulk loaded: MySQL by ``LOAD DATA LOCAL INFILE`` into ``metrics``, files as JSON
   lines in ``FileStore``'s own layout (and line indexes) written straight into a file family with a 64 MB
   ``rotation.max_size``. Agent states for the last ``--status-days`` only (the raw path would read a whole
   window of them: leaving them out makes the raw figures below smaller than a real deployment's).
4. **The back-fill command**, ``python -m storage trends --config COLLECTOR_CONFIG``, as a subprocess.
5. **Storage size**: MySQL ``data_length + index_length`` of ``trends_5m`` + ``trends_1h`` + ``trends_6h``
   against ``metrics``
   after ``OPTIMIZE TABLE`` of all three; files: the ``.trends`` directory against the sample files.
6. **viz**: ``secure-viz --plot all --hours 720`` (whole fleet, and ``--agent``) through ``viz.cli.main`` in
   this process after the imports (as ``bench_viz``), best of ``--repeat``; the raw path is the same call
   with a store whose ``query_trends`` returns ``storage.trends.empty()``, so ``viz.resolution.load`` falls
   back to raw samples, as before trends existed (``--raw-repeat`` runs, best).
7. **A year**: hourly rollups for ``--year-days`` before the month are *generated as trends* (the raw
   history is a month: rolling a year of raw samples up here would take too long) and written with
   ``LOAD DATA`` into ``trends_1h`` (and merged into ``trends_6h`` by the store's own statements) /
   ``FileTrends.write_compacted``; then ``--hours 24*year-days``.

Goals (issue 17): fleet month <= 3 s, one agent's month <= 0.5 s, fleet year <= 5 s from each backend;
rollups add <= 5 % to the collector's CPU per stored sample and <= 10 % to storage. A missed goal gets a
cProfile of one more run (this process only: the forked plot helper is not in it) and a breakdown of
``viz.resolution.load``. Last line: ``BENCH_RESULT {json}``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import io
import json
import math
import os
import pstats
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import storage.mysql
import storage.mysqltrends
from bench.measure import REPO, busy_share, cpu_seconds, machine
from bench.result import emit, goal, parse
from storage import trends
from storage.base import Batch
from storage.config import RetentionConfig, StorageConfig
from storage.factory import open_store
from storage.file import FileStore, sibling
from storage.filetrends import FileTrends, trends_dir
from storage.lineindex import ENTRY, MAGIC, agent_key, index_path
from storage.models import SAMPLE_COLUMNS, Sample
from storage.mysql import MySQLStore
from storage.retention import FIVE_MINUTE_DAYS
from storage.trends import HOURLY, LEVELS
from tests.plugins.mariadb import MariaDBServer
from viz import cli as viz_cli
from viz import resolution
from viz.app import STATES_WINDOW
from viz.series import Window

STEP = 30.0
DAY = 86_400.0
FLEET_MONTH_GOAL = 3.0
AGENT_MONTH_GOAL = 0.5
FLEET_YEAR_GOAL = 5.0
CPU_SHARE_GOAL = 5.0  # % of the collector's CPU per stored sample
SIZE_SHARE_GOAL = 10.0  # % of the raw samples' storage
MAX_BYTES = 64 * 1024**2
"""The files' rotation size: what an operator keeping a month of raw files would choose (docs/runbook.md):
many files of moderate size, so that reading the newest samples reads the newest files only."""
BACKUPS = 100
DOCUMENTED_COLLECTOR_US = 1110.0  # docs/benchmarks.md, run of 2026-12-03: cpu_per_poll_us, file store
SERVER_ARGS = (
    "--innodb-buffer-pool-size=2G",
    "--innodb-log-file-size=512M",
    "--local-infile=1",
    "--max-allowed-packet=256M",
)
NO_SENSOR = "no thermal zone or hwmon sensor"
THREATS = np.asarray(trends.THREAT_LEVELS, dtype=object)
_INDEX_HEADER = struct.Struct("<8sQQ")  # storage/lineindex.py's header: magic, st_dev, st_ino


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_trends", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--days", type=float, default=30.0, help="days of raw samples at 30 s (default 30)")
    parser.add_argument("--year-days", type=int, default=365, help="days of hourly trends for the long window")
    parser.add_argument("--status-days", type=float, default=1.0, help="days of agent states stored (default 1)")
    parser.add_argument("--backend", action="append", choices=("mysql", "files"), help="default: both")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each trend-path figure (best is kept)")
    parser.add_argument("--raw-repeat", type=int, default=1, help="runs of each raw-path figure (best is kept)")
    parser.add_argument("--no-raw-fleet", action="store_true",
                        help="skip the raw path of the whole fleet (minutes on MySQL at the goal size)")
    parser.add_argument("--cpu-sweeps", type=int, default=360, help="sweeps per CPU block (default 360: 3 h)")
    parser.add_argument("--cpu-rounds", type=int, default=3, help="on/off block pairs (default 3)")
    parser.add_argument("--collector-us", type=float, default=None,
                        help="the collector's CPU per stored sample (us); default: run bench_collector")
    parser.add_argument("--scratch", type=Path, default=None, help="where data goes (default: a temp dir)")
    return parser.parse_args(argv)


# -- the data ------------------------------------------------------------------------------------------


class Fleet:
    """Per-agent constants of the generated fleet; :meth:`columns` gives the samples of some ticks."""

    def __init__(self, agents: int, end: float) -> None:
        rng = np.random.default_rng(17)
        self.names = [f"host-{i:03d}" for i in range(agents)]
        self.agents = agents
        self.end = end
        self.cpu = rng.uniform(5, 55, agents)
        self.phase = rng.uniform(0, 2 * np.pi, agents)
        self.memory = rng.uniform(25, 75, agents)
        self.disk = rng.uniform(20, 80, agents)
        self.swap = rng.uniform(0, 10, agents)
        self.cores = rng.choice([2, 4, 8], agents)
        self.sensor = np.arange(agents) % 10 != 0
        self.expiry = end + rng.uniform(30, 700, agents) * DAY
        self.keys = np.asarray([agent_key(name) for name in self.names], dtype=np.uint64)
        self.offset = (np.arange(agents) % 96) * 0.125  # where in the sweep each agent is polled (exact floats)

    def columns(self, ticks: np.ndarray, seed: int) -> dict[str, np.ndarray]:
        """Samples of every agent at each tick, tick-major; floats NaN where null, strings as object arrays."""
        rng = np.random.default_rng(seed)
        t, a = len(ticks), self.agents
        shape = (t, a)
        ts = ticks[:, None] + self.offset[None, :]
        day = 2 * np.pi * ts / DAY
        cpu = np.clip(self.cpu + 20 * np.sin(day + self.phase) + rng.normal(0, 6, shape), 0, 100).round(1)
        temp = np.where(self.sensor, (35 + 0.4 * cpu + rng.normal(0, 1, shape)).round(1), np.nan)
        load = np.clip(cpu / 25 * self.cores / 4 + rng.normal(0, 0.15, shape), 0, None).round(2)
        issues = np.minimum(rng.poisson(0.01, shape), 3)
        cols: dict[str, np.ndarray] = {
            "agent": np.broadcast_to(np.arange(a), shape),
            "timestamp": ts,
            "cpu_usage": cpu,
            "cpu_temperature": temp,
            "load_1": load,
            "load_5": (load * 0.9).round(2),
            "load_15": (load * 0.8).round(2),
            "memory_usage": np.clip(self.memory + 5 * np.sin(day / 2 + self.phase) + rng.normal(0, 1, shape),
                                    0, 100).round(1),
            "disk_usage": np.clip(self.disk + 2 * (ts - self.end) / (30 * DAY) + 2, 0, 100).round(1),
            "security_issues": issues,
            "threat_level": issues,
            "temperature_reason": np.broadcast_to(~self.sensor, shape),
            "temperature_high": np.where(self.sensor, 80.0, np.nan) + np.zeros(shape),
            "temperature_critical": np.where(self.sensor, 95.0, np.nan) + np.zeros(shape),
            "swap_usage": np.clip(self.swap + rng.normal(0, 0.1, shape), 0, 100).round(1),
            "cpu_count": np.broadcast_to(self.cores, shape),
            "ssh_failures": rng.poisson(0.05, shape),
            "security_age": rng.uniform(0, 30, shape).round(1),
            "cert_days_left": ((self.expiry - ts) / DAY).round(2),
        }
        return {name: np.ascontiguousarray(values).reshape(-1) for name, values in cols.items()}

    def samples(self, ticks: np.ndarray, seed: int) -> list[list[Sample]]:
        """The same as :meth:`columns`, as one list of ``Sample`` per sweep (for the CPU measurement)."""
        cols = self.columns(ticks, seed)
        lists = {name: values.tolist() for name, values in cols.items()}
        sweeps: list[list[Sample]] = []
        for i in range(len(ticks)):
            sweep = []
            for j in range(i * self.agents, (i + 1) * self.agents):
                row: dict[str, Any] = {name: _plain(lists[name][j]) for name in SAMPLE_COLUMNS if name in lists}
                row["agent"] = self.names[lists["agent"][j]]
                row["threat_level"] = str(THREATS[lists["threat_level"][j]])
                row["temperature_reason"] = NO_SENSOR if lists["temperature_reason"][j] else None
                sweep.append(Sample.model_construct(**row, findings=(), extra={}))
            sweeps.append(sweep)
        return sweeps


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _decimal(values: np.ndarray, digits: int) -> pa.Array:
    """Non-negative floats with at most ``digits`` decimals as their shortest text (what pydantic writes:
    ``40.0``, ``0.25``), null for NaN; vectorised through integer arithmetic."""
    missing = np.isnan(values)
    scale = 10**digits
    scaled = np.rint(np.where(missing, 0, values) * scale).astype(np.int64)
    whole = pc.cast(pa.array(scaled // scale), pa.string())
    frac = pc.utf8_rtrim(pc.utf8_lpad(pc.cast(pa.array(scaled % scale), pa.string()), digits, "0"), "0")
    frac = pc.if_else(pc.equal(pc.utf8_length(frac), 0), "0", frac)
    text = pc.binary_join_element_wise(whole, frac, ".")
    return pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), text) if missing.any() else text


_DIGITS = {"timestamp": 3, "load_1": 2, "load_5": 2, "load_15": 2, "cert_days_left": 2}


def texts(fleet: Fleet, cols: dict[str, np.ndarray]) -> dict[str, pa.Array]:
    """Each column of :meth:`Fleet.columns` as text (null where null); strings unquoted."""
    out: dict[str, pa.Array] = {}
    names = pa.array(fleet.names)
    for name in SAMPLE_COLUMNS:
        values = cols.get(name)
        if values is None:
            out[name] = pa.nulls(len(cols["timestamp"]), pa.string())
        elif name == "agent":
            out[name] = names.take(pa.array(values))
        elif name == "threat_level":
            out[name] = pa.array(THREATS).take(pa.array(values)).cast(pa.string())
        elif name == "temperature_reason":
            out[name] = pc.if_else(pa.array(values), NO_SENSOR, pa.scalar(None, pa.string()))
        elif values.dtype.kind in "iu":
            out[name] = pc.cast(pa.array(values), pa.string())
        else:
            out[name] = _decimal(values, _DIGITS.get(name, 1))
    return out


def json_lines(text: dict[str, pa.Array]) -> bytes:
    """FileStore's sample lines (``Sample`` serialised by pydantic: its fields in order, then findings, extra)."""
    parts: list[Any] = []
    for i, name in enumerate(SAMPLE_COLUMNS):
        quoted = name in ("agent", "threat_level", "temperature_reason")
        value = text[name]
        if quoted:
            value = pc.binary_join_element_wise('"', value, '"', "")
        parts += [("{" if i == 0 else ",") + f'"{name}":', pc.fill_null(value, "null")]
    parts.append(',"findings":[],"extra":{}}\n')
    return _joined(parts)


def tsv_lines(text: dict[str, pa.Array], columns: Sequence[str]) -> bytes:
    parts: list[Any] = []
    for i, name in enumerate(columns):
        parts += ["\t" if i else "", pc.fill_null(text[name], "\\N")]
    parts.append("\n")
    return _joined(parts)


def _joined(parts: list[Any]) -> bytes:
    joined = pc.binary_join_element_wise(*parts, "")
    joined = joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + len(joined) + 1]
    data = joined.buffers()[2]
    whole: bytes = data.to_pybytes()
    return whole[int(offsets[0]) : int(offsets[-1])]


def day_ticks(fleet: Fleet, days: float) -> Iterator[tuple[int, np.ndarray]]:
    """The sweep times of ``days`` up to ``fleet.end``, a day at a time, oldest first."""
    first = fleet.end - days * DAY + STEP
    ticks = np.arange(first, fleet.end + 1, STEP)
    per_day = int(DAY / STEP)
    for n, start in enumerate(range(0, len(ticks), per_day)):
        yield n, ticks[start : start + per_day]


def _last_timestamp(path: Path) -> float | None:
    """The timestamp of the last line of ``path`` (our layout)."""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - 65_536))
        tail = handle.read()
    found = re.findall(rb'"timestamp":(-?[0-9.eE+-]+)', tail)
    return float(found[-1]) if found else None


class FamilyWriter:
    """Writes one rotated, indexed line-file family as ``RotatingFile`` would have: files of at most
    ``max_bytes`` (whole lines), the newest live, older ones ``.1`` ... ``.N``, each with its line index."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.parts: list[Path] = []
        self._ends: list[list[np.ndarray]] = []
        self._keys: list[list[np.ndarray]] = []
        self._size = 0
        self._handle: io.BufferedWriter | None = None
        path.parent.mkdir(parents=True, exist_ok=True)

    def _next(self) -> None:
        if self._handle is not None:
            self._handle.close()
        part = self.path.with_name(f".{self.path.name}.part{len(self.parts)}")
        self.parts.append(part)
        self._ends.append([])
        self._keys.append([])
        self._handle = open(part, "wb")  # noqa: SIM115 - closed in _next / finish
        self._size = 0

    def write(self, data: bytes, keys: np.ndarray) -> None:
        """Whole lines ``data``, the i-th of which belongs to the agent with index key ``keys[i]``."""
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10).astype(np.int64) + 1
        done = 0
        while done < len(ends):
            if self._handle is None or self._size >= self.max_bytes:
                self._next()
            base = int(ends[done - 1]) if done else 0
            room = self.max_bytes - self._size
            fit = int(np.searchsorted(ends, base + room, side="right"))
            if fit == done:
                if self._size:
                    self._size = self.max_bytes  # the next line does not fit: rotate
                    continue
                fit = done + 1
            stop = int(ends[fit - 1])
            assert self._handle is not None
            self._handle.write(data[base:stop])
            self._ends[-1].append(ends[done:fit] - base + self._size)
            self._keys[-1].append(keys[done:fit])
            self._size += stop - base
            done = fit

    def finish(self) -> list[Path]:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if len(self.parts) - 1 > BACKUPS:
            raise SystemExit(f"{self.path}: {len(self.parts)} files, more than 1 + {BACKUPS}: raise MAX_BYTES")
        final = []
        for n, part in enumerate(self.parts):
            back = len(self.parts) - 1 - n
            target = self.path if back == 0 else self.path.with_name(f"{self.path.name}.{back}")
            os.replace(part, target)
            last = _last_timestamp(target)
            if last is not None:  # as the collector's writer leaves it: modified when its newest line came
                os.utime(target, (last, last))
            info = target.stat()
            entries = np.empty(sum(len(e) for e in self._ends[n]), dtype=ENTRY)
            entries["end"] = np.concatenate(self._ends[n]) if self._ends[n] else []
            entries["key"] = np.concatenate(self._keys[n]) if self._keys[n] else []
            index_path(target).write_bytes(_INDEX_HEADER.pack(MAGIC, info.st_dev, info.st_ino) + entries.tobytes())
            final.append(target)
        return final


def status_lines(fleet: Fleet, ticks: np.ndarray) -> tuple[bytes, bytes, np.ndarray]:
    """Agent states ``up`` for every poll of ``ticks``: JSON lines, TSV lines, agent index per line."""
    agent = np.tile(np.arange(fleet.agents), len(ticks))
    ts = (ticks[:, None] + fleet.offset[None, :]).reshape(-1)
    text = {"agent": pa.array(fleet.names).take(pa.array(agent)), "timestamp": _decimal(ts, 3)}
    latency = _decimal(np.full(len(ts), 3.2), 1)
    data = _joined(['{"agent":"', text["agent"], '","timestamp":', text["timestamp"],
                    ',"state":"up","detail":"","latency_ms":', latency, "}\n"])
    tsv = _joined([text["agent"], "\t", text["timestamp"], "\tup\t\t", latency, "\n"])
    return data, tsv, agent


# -- the backends ----------------------------------------------------------------------------------------


class RawPath:
    """A store as before trends: no rollups stored (``viz.resolution.load`` falls back to raw samples)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def query_trends(self, level: Any, start: float, end: float, agent: str | None = None, step: Any = None) -> Any:
        return trends.empty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@contextlib.contextmanager
def raw_path(on: bool) -> Iterator[None]:
    if not on:
        yield
        return
    original = getattr(viz_cli, "open_store")  # noqa: B009 - what viz.cli calls

    def wrapped(config: StorageConfig, *, readonly: bool = False) -> Any:
        return RawPath(original(config, readonly=readonly))

    setattr(viz_cli, "open_store", wrapped)  # noqa: B010 - a module attribute viz.cli imported
    try:
        yield
    finally:
        setattr(viz_cli, "open_store", original)  # noqa: B010


def _cpu_all() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def run_viz(config: Path, out: Path, hours: float, agent: str | None, raw: bool) -> tuple[float, float]:
    """One ``secure-viz --plot all``: (wall seconds, CPU seconds of this process and its plot helpers)."""
    argv = ["--config", str(config), "--plot", "all", "--hours", f"{hours:g}", "--output-dir", str(out)]
    if agent is not None:
        argv += ["--agent", agent]
    cpu = _cpu_all()
    started = time.perf_counter()
    with raw_path(raw), contextlib.redirect_stdout(io.StringIO()):
        code = viz_cli.main(argv)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"secure-viz {' '.join(argv)} exited {code}")
    return wall, _cpu_all() - cpu


def best_of(repeat: int, action: Callable[[], tuple[float, float]]) -> tuple[float, float, list[float]]:
    runs = [action() for _ in range(max(1, repeat))]
    walls = [w for w, _ in runs]
    best = min(range(len(runs)), key=lambda i: walls[i])
    return runs[best][0], runs[best][1], walls


def breakdown(config: StorageConfig, hours: float, agent: str | None) -> dict[str, float]:
    """Where the trend path's reading goes: ``resolution.load`` and the two queries it makes."""
    store = open_store(config, readonly=True)
    try:
        end = time.time()
        window = Window(end - hours * 3600, end)
        level = resolution.choose(window)
        started = time.perf_counter()
        drawable = resolution.load(store, window, agent)
        load = time.perf_counter() - started
        out = {"load_s": round(load, 3), "rows": float(len(drawable.frame))}
        if level is not None:
            started = time.perf_counter()
            rollups = store.query_trends(level, window.start, window.end, agent, resolution.step_for(window, level))
            out["query_trends_s"] = round(time.perf_counter() - started, 3)  # the bins, merged by storage
            # the raw samples after the newest rollup of at most an hour (resolution reads the last bin so)
            edge = min(level, HOURLY, key=lambda candidate: candidate.width)
            recent = store.query_trends(edge, window.end - 2 * edge.width, window.end, agent)
            if not rollups.empty and not recent.empty:
                newest = float(recent["bucket"].max())
                started = time.perf_counter()
                tail = store.query_samples(newest, window.end, agent)
                out["tail_query_samples_s"] = round(time.perf_counter() - started, 3)
                out["tail_rows"] = float(len(tail))
            started = time.perf_counter()  # what the dashboard reads on a window drawn from trends
            latest = getattr(store, "latest_statuses", None)
            if latest is not None:
                latest(window.start, window.end, agent)
            else:
                store.query_statuses(max(window.start, window.end - STATES_WINDOW), window.end, agent)
            out["dashboard_states_s"] = round(time.perf_counter() - started, 3)
        return out
    finally:
        store.close()


def profile_of(action: Callable[[], object], top: int = 8) -> dict[str, Any]:
    """cProfile of one run: the top functions by own time and, under our code, by inclusive time (shares)."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        action()
    finally:
        profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tottime for (_, _, tottime, _, _) in entries.values()) or 1e-9

    def name(key: tuple[str, int, str]) -> str:
        filename, _line, function = key
        short = filename.replace(str(REPO) + "/", "")
        if "site-packages/" in short:
            short = short.split("site-packages/", 1)[1]
        return f"{function} ({short})"

    own = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    ours = [(k, v) for k, v in entries.items() if k[0].startswith(str(REPO)) and "/bench/" not in k[0]]
    inclusive = sorted(ours, key=lambda item: item[1][3], reverse=True)[:top]
    return {
        "samples": len(entries),
        "seconds": round(total, 3),
        "self": [[name(k), round(100 * v[2] / total, 1)] for k, v in own],
        "total": [[name(k), round(100 * v[3] / total, 1)] for k, v in inclusive],
    }


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def hourly_year(fleet: Fleet, first: float, last: float) -> Any:
    """Generated hourly rollups (decoded, :func:`storage.trends.columns`) of every agent over ``[first, last)``:
    120 samples an hour, means following the same daily cycle as the raw samples, plausible extremes."""
    import pandas as pd

    hours = np.arange(first, last, HOURLY.width, dtype=np.float64)
    a, h = fleet.agents, len(hours)
    rng = np.random.default_rng(365)
    shape = (h, a)
    mid = hours[:, None] + HOURLY.width / 2
    day = 2 * np.pi * mid / DAY
    count = np.full(shape, int(HOURLY.width / STEP))
    cpu = np.clip(fleet.cpu + 20 * np.sin(day + fleet.phase) + rng.normal(0, 1, shape), 0, 100)
    load = cpu / 25 * fleet.cores / 4
    sensor = np.broadcast_to(fleet.sensor, shape)
    spec: dict[str, tuple[np.ndarray, float]] = {  # mean, half the spread of the hour's values
        "cpu_usage": (cpu, 15.0),
        "cpu_temperature": (np.where(sensor, 35 + 0.4 * cpu, np.nan), 6.0),
        "load_1": (load, 0.5),
        "load_5": (load * 0.9, 0.4),
        "load_15": (load * 0.8, 0.3),
        "memory_usage": (np.clip(fleet.memory + 5 * np.sin(day / 2 + fleet.phase), 0, 100), 2.0),
        "disk_usage": (np.clip(fleet.disk + 2 * (mid - fleet.end) / (30 * DAY) + 2, 0, 100), 0.05),
        "security_issues": (np.full(shape, 0.01), 0.0),
        "temperature_high": (np.where(sensor, 80.0, np.nan), 0.0),
        "temperature_critical": (np.where(sensor, 95.0, np.nan), 0.0),
        "swap_usage": (np.broadcast_to(fleet.swap, shape), 0.3),
        "cpu_count": (np.broadcast_to(fleet.cores, shape).astype(np.float64), 0.0),
        "ssh_failures": (np.full(shape, 0.05), 0.0),
        "security_age": (np.full(shape, 15.0) + rng.normal(0, 1, shape), 15.0),
        "cert_days_left": ((fleet.expiry - mid) / DAY, 0.02),
    }
    out: dict[str, Any] = {
        "agent": np.asarray(fleet.names, dtype=object)[np.tile(np.arange(a), h)],
        "bucket": np.repeat(hours, a),
        "count": count.reshape(-1).astype(np.int64),
        "threat_max": (rng.uniform(size=shape) < 0.02).astype(np.int64).reshape(-1),
    }
    for metric in trends.metrics():
        mean, spread = spec.get(metric.name, (np.full(shape, np.nan), 0.0))
        mean = np.asarray(mean, dtype=np.float64).round(3)
        present = ~np.isnan(mean)
        low = np.clip(mean - spread, 0, None) if spread else mean
        high = mean + spread if spread else mean
        if metric.name in ("security_issues", "ssh_failures"):
            low, high = np.zeros(shape), np.ones(shape)
        out[metric.name] = mean.reshape(-1)
        out[f"{metric.name}_min"] = np.asarray(low, dtype=np.float64).reshape(-1)
        out[f"{metric.name}_max"] = np.asarray(high, dtype=np.float64).reshape(-1)
        out[f"{metric.name}_n"] = np.where(present, count, 0).reshape(-1).astype(np.int64)
    frame = pd.DataFrame(out, columns=list(trends.columns()))
    return frame.sort_values(["agent", "bucket"], kind="stable").reset_index(drop=True)


def float_text(values: np.ndarray) -> pa.Array:
    arr = pa.array(values, from_pandas=True)
    return pc.cast(arr, pa.string())


# -- the CPU of a stored sample ---------------------------------------------------------------------------


@contextlib.contextmanager
def trends_off(backend: str) -> Iterator[None]:
    if backend == "mysql":
        refresh, touched = storage.mysqltrends.refresh_statements, trends.touched  # storage.mysql's touched

        def no_statements(spans: Any) -> list[Any]:
            return []

        def no_spans(agents: Any, timestamps: Any, width: int) -> dict[str, tuple[float, float]]:
            return {}

        storage.mysqltrends.refresh_statements = no_statements
        setattr(storage.mysql, "touched", no_spans)  # noqa: B010 - the name storage.mysql.write calls
        try:
            yield
        finally:
            storage.mysqltrends.refresh_statements = refresh
            setattr(storage.mysql, "touched", touched)  # noqa: B010
    else:
        add = FileTrends.add
        FileTrends.add = lambda self, samples: None  # type: ignore[method-assign]
        try:
            yield
        finally:
            FileTrends.add = add  # type: ignore[method-assign]


def cpu_per_sample(
    backend: str, args: argparse.Namespace, fleet: Fleet, scratch: Path, server: MariaDBServer | None
) -> dict[str, Any]:
    """Microseconds of this process's CPU per stored sample, trends on and off, in alternating blocks."""
    span = args.cpu_sweeps * STEP
    base = math.floor((fleet.end - 400 * DAY) / HOURLY.width) * HOURLY.width
    results: dict[str, list[float]] = {"on": [], "off": []}
    server_us: dict[str, list[float]] = {"on": [], "off": []}
    store: Any = None
    config: StorageConfig | None = None
    server_pid = 0
    if backend == "mysql":
        assert server is not None
        with server.root_connection() as conn, conn.cursor() as cursor:
            cursor.execute("CREATE DATABASE IF NOT EXISTS `cpubench` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
            for host in ("localhost", "127.0.0.1"):
                cursor.execute(f"GRANT ALL PRIVILEGES ON `cpubench`.* TO '{server.user}'@'{host}'")
        config = StorageConfig.model_validate(server.storage_section(mysql_database="cpubench"))
        store = MySQLStore(config)
        store.init_schema()
        server_pid = int((server.base / "mariadbd.pid").read_text().split()[0])
    block = 0
    try:
        for round_ in range(args.cpu_rounds):
            order = ("on", "off") if round_ % 2 == 0 else ("off", "on")
            for mode in order:
                start = base + block * (span + HOURLY.width)
                block += 1
                ticks = np.arange(start, start + span, STEP)
                sweeps = fleet.samples(ticks, seed=1000 + block)
                batches = [Batch(samples=sweep) for sweep in sweeps]
                with trends_off(backend) if mode == "off" else contextlib.nullcontext():
                    if backend == "files":
                        folder = scratch / f"cpu-{block}"
                        cpu0 = time.process_time()
                        store = FileStore(folder / "metrics_data.json", max_bytes=MAX_BYTES, backup_count=2)
                        for batch in batches:
                            store.write(batch)
                        store.close()
                        used = time.process_time() - cpu0
                        shutil.rmtree(folder, ignore_errors=True)
                    else:
                        server0 = cpu_seconds(server_pid)
                        cpu0 = time.process_time()
                        for batch in batches:
                            store.write(batch)
                        used = time.process_time() - cpu0
                        server_us[mode].append((cpu_seconds(server_pid) - server0) / (len(ticks) * fleet.agents) * 1e6)
                results[mode].append(used / (len(ticks) * fleet.agents) * 1e6)
    finally:
        if backend == "mysql" and store is not None:
            store.close()
    on, off = float(np.median(results["on"])), float(np.median(results["off"]))
    out: dict[str, Any] = {"on_us": on, "off_us": off, "blocks_on": results["on"], "blocks_off": results["off"],
                           "samples_per_block": args.cpu_sweeps * fleet.agents}
    if backend == "mysql":
        out["server_on_us"] = float(np.median(server_us["on"]))
        out["server_off_us"] = float(np.median(server_us["off"]))
    return out


def collector_us(args: argparse.Namespace) -> tuple[float, str]:
    """The collector's whole CPU per stored sample (one poll stores one sample)."""
    if args.collector_us is not None:
        return args.collector_us, "given with --collector-us"
    command = [sys.executable, "-m", "bench.bench_collector", "--sweeps", "10", "--floor-rounds", "1"]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
        result = parse(done.stdout) or {}
    except subprocess.TimeoutExpired:
        result = {}
    for table in result.get("tables", []):
        for row in table.get("rows", []):
            if isinstance(row, dict) and isinstance(row.get("cpu_per_poll_us"), int | float):
                return float(row["cpu_per_poll_us"]), "measured now: bench_collector --sweeps 10 (file store)"
    return DOCUMENTED_COLLECTOR_US, "bench_collector gave no figure: docs/benchmarks.md of 2026-12-03"


# -- per backend --------------------------------------------------------------------------------------------


def load_mysql(server: MariaDBServer, fleet: Fleet, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    config = StorageConfig.model_validate(server.storage_section())
    MySQLStore(config).init_schema()
    tsv = scratch / "load.tsv"
    columns = list(SAMPLE_COLUMNS)
    names = ", ".join(f"`{c}`" for c in columns)
    rows = 0
    started = time.perf_counter()
    with server.root_connection(database=server.database, local_infile=True, read_timeout=3600,
                                write_timeout=3600) as conn, conn.cursor() as cursor:
        for n, ticks in day_ticks(fleet, args.days):
            cols = fleet.columns(ticks, seed=n)
            tsv.write_bytes(tsv_lines(texts(fleet, cols), columns))
            cursor.execute(f"LOAD DATA LOCAL INFILE '{tsv}' INTO TABLE `metrics` ({names})")
            rows += len(cols["timestamp"])
        status_ticks = np.arange(fleet.end - args.status_days * DAY + STEP, fleet.end + 1, STEP)
        _, status_tsv, _ = status_lines(fleet, status_ticks)
        tsv.write_bytes(status_tsv)
        cursor.execute(f"LOAD DATA LOCAL INFILE '{tsv}' INTO TABLE `agent_status` "
                       "(`agent`, `timestamp`, `state`, `detail`, `latency_ms`)")
        cursor.executemany(
            "INSERT INTO `alerts` (`agent`, `timestamp`, `metric`, `value`, `threshold`, `severity`, `state`, "
            "`message`) VALUES (%s, %s, 'cpu_usage', 95.0, 80.0, 'warning', 'firing', 'CPU usage above threshold')",
            [(fleet.names[i % fleet.agents], fleet.end - i * 3 * 3600.0) for i in range(int(args.days * 8))])
    tsv.unlink(missing_ok=True)
    return {"rows": rows, "seconds": time.perf_counter() - started}


def load_files(fleet: Fleet, args: argparse.Namespace, json_file: Path) -> dict[str, Any]:
    started = time.perf_counter()
    writer = FamilyWriter(json_file)
    rows = 0
    for n, ticks in day_ticks(fleet, args.days):
        cols = fleet.columns(ticks, seed=n)
        writer.write(json_lines(texts(fleet, cols)), fleet.keys[cols["agent"]])
        rows += len(cols["timestamp"])
    files = writer.finish()
    status_ticks = np.arange(fleet.end - args.status_days * DAY + STEP, fleet.end + 1, STEP)
    data, _, agent = status_lines(fleet, status_ticks)
    statuses = FamilyWriter(sibling(json_file, "status"))
    statuses.write(data, fleet.keys[agent])
    statuses.finish()
    alerts = FamilyWriter(sibling(json_file, "alerts"))
    lines = []
    owners = []
    for i in reversed(range(int(args.days * 8))):
        owners.append(i % fleet.agents)
        lines.append(json.dumps({"agent": fleet.names[i % fleet.agents], "timestamp": fleet.end - i * 3 * 3600.0,
                                 "metric": "cpu_usage", "value": 95.0, "threshold": 80.0, "severity": "warning",
                                 "state": "firing", "technique": None, "message": "CPU usage above threshold"},
                                separators=(",", ":")))
    alerts.write(("\n".join(lines) + "\n").encode(), fleet.keys[np.asarray(owners)])
    alerts.finish()
    return {"rows": rows, "seconds": time.perf_counter() - started, "files": [str(p) for p in files]}


def backfill(config_path: Path) -> dict[str, Any]:
    """``python -m storage trends --config ...``, timed; its summary line."""
    started = time.perf_counter()
    before = os.times()
    done = subprocess.run([sys.executable, "-m", "storage", "trends", "--config", str(config_path)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    after = os.times()
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"python -m storage trends failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return {"seconds": wall, "cpu_s": cpu, "summary": done.stdout.strip().splitlines()[-1:]}


def mysql_sizes(server: MariaDBServer) -> dict[str, Any]:
    tables = ("metrics", "trends_5m", "trends_1h", "trends_6h")
    started = time.perf_counter()
    with server.root_connection(database=server.database, read_timeout=3600) as conn, conn.cursor() as cursor:
        for table in tables:
            cursor.execute(f"OPTIMIZE TABLE `{table}`")
            cursor.fetchall()
            cursor.execute(f"ANALYZE TABLE `{table}`")
            cursor.fetchall()
        cursor.execute(
            "SELECT TABLE_NAME, DATA_LENGTH, INDEX_LENGTH, TABLE_ROWS FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = %s AND TABLE_NAME IN ('metrics', 'trends_5m', 'trends_1h', 'trends_6h')",
            (server.database,))
        found = {name: (int(data), int(index), int(rows)) for name, data, index, rows in cursor.fetchall()}
    raw = sum(found["metrics"][:2])
    rolled = sum(found["trends_5m"][:2]) + sum(found["trends_1h"][:2]) + sum(found["trends_6h"][:2])
    return {"raw_mb": raw / 1e6, "trends_mb": rolled / 1e6, "share_percent": 100 * rolled / raw,
            "five_mb": sum(found["trends_5m"][:2]) / 1e6, "hour_mb": sum(found["trends_1h"][:2]) / 1e6,
            "six_mb": sum(found["trends_6h"][:2]) / 1e6,
            "tables": {k: {"data_mb": round(v[0] / 1e6, 1), "index_mb": round(v[1] / 1e6, 1), "rows": v[2]}
                       for k, v in found.items()},
            "optimize_s": round(time.perf_counter() - started, 1)}


def file_sizes(json_file: Path) -> dict[str, Any]:
    members = [p for p in json_file.parent.iterdir()
               if p.name == json_file.name or p.name.startswith(json_file.name + ".")]
    data = sum(p.stat().st_size for p in members if not p.name.endswith((".idx", ".lock")))
    index = sum(p.stat().st_size for p in members if p.name.endswith(".idx"))
    rolled = dir_bytes(trends_dir(json_file))
    per_level = {level.name: dir_bytes(trends_dir(json_file) / level.name) / 1e6 for level in LEVELS}
    return {"raw_mb": data / 1e6, "raw_index_mb": index / 1e6, "trends_mb": rolled / 1e6,
            "share_percent": 100 * rolled / data, "levels_mb": {k: round(v, 2) for k, v in per_level.items()},
            "five_mb": per_level["5m"], "hour_mb": per_level["1h"]}


def steady_share(sizes: dict[str, Any], days: float) -> float:
    """The rollups' share of storage once retention holds at its defaults: raw samples ``history_days`` (90),
    5-minute trends at most 17 days (storage.retention), hourly and 6-hour trends ``trends_days`` (365);
    from the sizes of ``days`` of each measured here."""
    defaults = RetentionConfig()
    five_days = min(defaults.history_days, FIVE_MINUTE_DAYS)
    kept_a_year = sizes["hour_mb"] + sizes.get("six_mb", 0.0)
    rolled = sizes["five_mb"] * five_days / days + kept_a_year * defaults.trends_days / days
    return 100 * rolled / (sizes["raw_mb"] * defaults.history_days / days)


def year_mysql(server: MariaDBServer, fleet: Fleet, first: float, last: float, scratch: Path) -> dict[str, Any]:
    started = time.perf_counter()
    frame = trends.encode(hourly_year(fleet, first, last))
    names = storage.mysqltrends.names()
    text = {}
    for column in names:
        values = frame[column].to_numpy()
        if column == "agent":
            text[column] = pa.array(values.astype(str))
        else:
            text[column] = float_text(values.astype(np.float64)) if values.dtype.kind == "f" else pc.cast(
                pa.array(values), pa.string())
    tsv = scratch / "year.tsv"
    tsv.write_bytes(tsv_lines(text, names))
    cols = ", ".join(f"`{c}`" for c in names)
    with server.root_connection(database=server.database, local_infile=True, read_timeout=3600,
                                write_timeout=3600) as conn, conn.cursor() as cursor:
        cursor.execute(f"LOAD DATA LOCAL INFILE '{tsv}' INTO TABLE `trends_1h` ({cols})")
        conn.commit()
        merged = time.perf_counter()
        low = first
        while low < last:  # the 6-hour level, as the store's own statements keep it, a month at a time
            high = min(low + 30 * DAY, last)
            for sql, params in storage.mysqltrends.six_hours_statements(low, high):
                cursor.execute(sql, params)
            conn.commit()
            low = high
    tsv.unlink(missing_ok=True)
    return {"rollups": len(frame), "seconds": time.perf_counter() - started,
            "six_hours_s": round(time.perf_counter() - merged, 1)}


def year_files(json_file: Path, fleet: Fleet, first: float, last: float) -> dict[str, Any]:
    started = time.perf_counter()
    frame = hourly_year(fleet, first, last)
    writer = FileTrends(json_file, read_raw=lambda start, end, agent: trends.empty(), fsync=False)
    written = writer.write_compacted(HOURLY, frame)
    return {"rollups": len(frame), "seconds": time.perf_counter() - started, "segments": len(written)}


def measure_backend(
    backend: str, args: argparse.Namespace, fleet: Fleet, scratch: Path, server: MariaDBServer | None
) -> dict[str, Any]:
    """Load, back-fill, size, and every viz figure of one backend."""
    out: dict[str, Any] = {"backend": backend}
    folder = scratch / backend
    folder.mkdir(parents=True, exist_ok=True)
    json_file = folder / "data" / "metrics_data.json"
    if backend == "mysql":
        assert server is not None
        section: dict[str, Any] = server.storage_section()
    else:
        section = {"type": "file", "json_file": str(json_file),
                   "rotation": {"max_size": f"{MAX_BYTES // 1024**2}MB", "backup_count": BACKUPS}}
    config_path = folder / "collector.json"
    config_path.write_text(json.dumps({"storage": section}))
    config = StorageConfig.model_validate(section)

    log(f"{backend}: loading {fleet.agents} agents x {args.days:g} days of raw samples")
    out["load"] = load_mysql(server, fleet, args, folder) if server is not None else load_files(fleet, args, json_file)
    log(f"{backend}: {out['load']['rows']:,} samples in {out['load']['seconds']:.0f} s; back-fill command")
    out["backfill"] = backfill(config_path)
    log(f"{backend}: back-fill {out['backfill']['seconds']:.1f} s ({out['backfill']['summary']}); sizes")
    out["size"] = mysql_sizes(server) if server is not None else file_sizes(json_file)
    log(f"{backend}: trends {out['size']['trends_mb']:.1f} MB against raw {out['size']['raw_mb']:.0f} MB")

    hours_month = args.days * 24
    agent = fleet.names[min(42, fleet.agents - 1)]
    scenarios = [("fleet_month", hours_month, None), ("agent_month", hours_month, agent)]
    for name, hours, who in scenarios:
        target = folder / "out" / name
        log(f"{backend}: {name}: trend path x{args.repeat}")
        wall, cpu, walls = best_of(args.repeat, functools.partial(run_viz, config_path, target, hours, who, False))
        row: dict[str, Any] = {"trend_s": wall, "trend_cpu_s": cpu, "trend_runs": walls}
        row["breakdown"] = breakdown(config, hours, who)
        if name == "fleet_month" and args.no_raw_fleet:
            row["raw_s"] = None
        else:
            log(f"{backend}: {name}: raw path x{args.raw_repeat}")
            wall, cpu, walls = best_of(args.raw_repeat,
                                       functools.partial(run_viz, config_path, target, hours, who, True))
            row.update(raw_s=wall, raw_cpu_s=cpu, raw_runs=walls)
        out[name] = row
        log(f"{backend}: {name}: trends {row['trend_s']:.2f} s, raw {row.get('raw_s')}")

    month_start = fleet.end - args.days * DAY
    first = math.floor((fleet.end - args.year_days * DAY) / HOURLY.width) * HOURLY.width
    last = math.floor(month_start / HOURLY.width) * HOURLY.width
    log(f"{backend}: generating {args.year_days - args.days:g} days of hourly trends before the month")
    out["year_load"] = (year_mysql(server, fleet, first, last, folder) if server is not None
                        else year_files(json_file, fleet, first, last))
    hours_year = args.year_days * 24.0
    target = folder / "out" / "fleet_year"
    wall, cpu, walls = best_of(args.repeat, lambda: run_viz(config_path, target, hours_year, None, False))
    out["fleet_year"] = {"trend_s": wall, "trend_cpu_s": cpu, "trend_runs": walls,
                         "breakdown": breakdown(config, hours_year, None)}
    log(f"{backend}: fleet_year: trends {wall:.2f} s")

    profiles: dict[str, Any] = {}
    for name, hours, who, limit in (("fleet_month", hours_month, None, FLEET_MONTH_GOAL),
                                    ("agent_month", hours_month, agent, AGENT_MONTH_GOAL),
                                    ("fleet_year", hours_year, None, FLEET_YEAR_GOAL)):
        if out[name]["trend_s"] > limit:
            log(f"{backend}: {name} missed its goal: cProfile of one more run")
            target = folder / "out" / f"{name}-profile"
            profiles[f"{backend} {name}"] = profile_of(
                functools.partial(run_viz, config_path, target, hours, who, False))
    out["profiles"] = profiles
    return out


# -- the report --------------------------------------------------------------------------------------------------


def _ratio(raw: float | None, trend: float) -> str:
    return f"{raw / trend:.1f}x" if raw else "not measured"


def result(args: argparse.Namespace, fleet: Fleet, outcome: dict[str, Any]) -> dict[str, Any]:
    rows_viz = []
    goals = []
    size_rows = []
    cpu_rows = []
    profiles: dict[str, Any] = {}
    collector, collector_source = outcome["collector_us"]
    size = f"{fleet.agents} agents x {args.days:g} days"
    for backend in args.backend:
        data = outcome.get(backend)
        if data is None:
            continue
        for name, label, limit in (("fleet_month", f"--plot all --hours {args.days * 24:g}", FLEET_MONTH_GOAL),
                                   ("agent_month", f"--plot all --hours {args.days * 24:g} --agent",
                                    AGENT_MONTH_GOAL),
                                   ("fleet_year", f"--plot all --hours {args.year_days * 24:g}", FLEET_YEAR_GOAL)):
            row = data[name]
            raw = row.get("raw_s")
            rows_viz.append({
                "backend": backend, "viz": label, "trend_path_s": round(row["trend_s"], 3),
                "raw_path_s": None if raw is None else round(raw, 2), "raw_over_trend": _ratio(raw, row["trend_s"]),
                "trend_cpu_s": round(row["trend_cpu_s"], 2),
                "raw_cpu_s": None if row.get("raw_cpu_s") is None else round(row["raw_cpu_s"], 2),
                "resolution.load_s": row["breakdown"].get("load_s"),
                "query_trends_s": row["breakdown"].get("query_trends_s"),
                "tail_query_samples_s": row["breakdown"].get("tail_query_samples_s"),
                "dashboard_states_s": row["breakdown"].get("dashboard_states_s"),
            })
            what = {"fleet_month": f"{size}", "agent_month": f"one agent's {args.days:g} days",
                    "fleet_year": f"{fleet.agents} agents x {args.year_days} days"}[name]
            detail = f"raw path {raw:.2f} s ({_ratio(raw, row['trend_s'])} slower)" if raw else (
                "raw path: the raw history holds the month only (the year before it is generated as hourly trends),"
                " so the raw path would read the month's samples: see the month's raw figure" if name == "fleet_year"
                else "raw path not measured (--no-raw-fleet)")
            detail += (f"; resolution.load {row['breakdown'].get('load_s')} s of which query_trends "
                       f"{row['breakdown'].get('query_trends_s')} s and the raw tail after the newest rollup "
                       f"{row['breakdown'].get('tail_query_samples_s')} s")
            key = f"{backend} {name}"
            made = goal(f"trends: viz {label} ({what}) from {backend}", row["trend_s"], "<=", limit, "s", detail,
                        profile=key if key in data["profiles"] else None)
            goals.append(made)
        profiles.update(data["profiles"])
        cpu = outcome["cpu"][backend]
        added = cpu["on_us"] - cpu["off_us"]
        share = 100 * added / collector
        cpu_row = {"backend": backend, "write_on_us": round(cpu["on_us"], 2), "write_off_us": round(cpu["off_us"], 2),
                   "write_path_ratio": round(cpu["on_us"] / cpu["off_us"], 3), "added_us": round(added, 2),
                   "collector_us": round(collector, 1), "share_of_collector_percent": round(share, 2),
                   "blocks_on": [round(v, 2) for v in cpu["blocks_on"]],
                   "blocks_off": [round(v, 2) for v in cpu["blocks_off"]]}
        detail = (f"store.write of {fleet.agents}-agent sweeps: {cpu['on_us']:.1f} us a sample with trends, "
                  f"{cpu['off_us']:.1f} without ({cpu['on_us'] / cpu['off_us']:.2f}x the write path); "
                  f"the collector's whole CPU per stored sample {collector:.0f} us ({collector_source})")
        if backend == "mysql":
            cpu_row["server_on_us"] = round(cpu["server_on_us"], 1)
            cpu_row["server_off_us"] = round(cpu["server_off_us"], 1)
            detail += (f"; the MySQL server's CPU (not the collector's) {cpu['server_on_us']:.0f} us a sample with "
                       f"trends, {cpu['server_off_us']:.0f} without")
        cpu_rows.append(cpu_row)
        goals.append(goal(f"trends: rollups' share of the collector's CPU per stored sample ({backend})", share,
                          "<=", CPU_SHARE_GOAL, "%", detail))
        sizes = data["size"]
        size_rows.append({"backend": backend, "raw_mb": round(sizes["raw_mb"], 1),
                          "trends_mb": round(sizes["trends_mb"], 2), "share_percent": round(sizes["share_percent"], 2),
                          "detail": sizes.get("tables") or sizes.get("levels_mb")})
        what = ("data_length + index_length after OPTIMIZE TABLE: trends_5m + trends_1h + trends_6h against metrics"
                if backend == "mysql" else "the .trends directory against the sample files (line indexes "
                f"{sizes.get('raw_index_mb', 0):.0f} MB not counted as raw)")
        steady = steady_share(sizes, args.days)
        size_rows[-1]["steady_share_percent"] = round(steady, 2)
        goals.append(goal(f"trends: storage added by rollups at the default retention ({backend})", steady, "<=",
                          SIZE_SHARE_GOAL, "%",
                          f"90 days raw, 17 days of 5-minute and 365 of hourly trends, from {args.days} days of each: "
                          f"{sizes['trends_mb']:.1f} MB against {sizes['raw_mb']:.0f} MB over the same "
                          f"{args.days} days ({sizes['share_percent']:.1f} %); {what}"))
    loads = []
    for backend in args.backend:
        data = outcome.get(backend)
        if data:
            loads.append({"backend": backend, "raw_samples": data["load"]["rows"],
                          "bulk_load_s": round(data["load"]["seconds"], 1),
                          "backfill_command_s": round(data["backfill"]["seconds"], 1),
                          "backfill_cpu_s": round(data["backfill"]["cpu_s"], 1),
                          "backfill_says": " ".join(data["backfill"]["summary"]),
                          "year_trends_generated": data["year_load"]["rollups"],
                          "year_trends_load_s": round(data["year_load"]["seconds"], 1)})
    return {
        "bench": "trends",
        "title": "Trend rollups: long ranges from trends against the raw path (issue 17)",
        "params": {"agents": fleet.agents, "days": args.days, "year_days": args.year_days,
                   "status_days": args.status_days, "repeat": args.repeat, "raw_repeat": args.raw_repeat,
                   "cpu_sweeps": args.cpu_sweeps, "cpu_rounds": args.cpu_rounds, "backends": args.backend,
                   "mariadb": " ".join(SERVER_ARGS)},
        "tables": [
            {"title": "secure-viz, trend path against the raw path (best of runs, seconds)", "rows": rows_viz},
            {"title": "the collector's CPU per stored sample, trends on and off (us)", "rows": cpu_rows},
            {"title": "storage", "rows": size_rows},
            {"title": "bulk load and the back-fill command (python -m storage trends)", "rows": loads},
        ],
        "goals": goals,
        "notes": [
            f"machine busy at start: {100 * outcome['busy']:.0f}% of all cores; whole bench {outcome['seconds']:.0f} s",
            "viz runs in this process after the imports (as bench_viz): the raw path is the same viz.cli.main with "
            "a store whose query_trends returns storage.trends.empty()",
            f"agent states are stored for the last {args.status_days:g} day(s) only: the raw path reads the states "
            "of its whole window, so with a month of them its figures would be larger than shown",
            f"the year: hourly rollups for {args.year_days} days before now, generated (not rolled up from raw "
            "samples) before the raw month; 5-minute rollups exist for the raw month only",
            "MariaDB: " + " ".join(SERVER_ARGS) + " and a private --tmpdir (the tests' server otherwise)",
        ],
        "profile": profiles,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    args.backend = args.backend or ["mysql", "files"]
    busy = busy_share()
    started = time.perf_counter()
    end = float(int(time.time()))
    fleet = Fleet(args.agents, end)
    outcome: dict[str, Any] = {"busy": busy, "cpu": {}}
    scratch = Path(tempfile.mkdtemp(prefix="smon-bt-", dir=args.scratch))
    server: MariaDBServer | None = None
    try:
        log(f"scratch {scratch}; machine {machine()['host_cpu']}, busy {100 * busy:.0f}%")
        outcome["collector_us"] = collector_us(args)
        log(f"collector CPU per stored sample: {outcome['collector_us'][0]:.0f} us ({outcome['collector_us'][1]})")
        if "mysql" in args.backend:
            private_tmp = scratch / "dbtmp"  # a server sharing /tmp had our GROUP BY temp tables deleted
            private_tmp.mkdir()
            server = MariaDBServer.create(scratch / "db", extra_args=(*SERVER_ARGS, f"--tmpdir={private_tmp}"))
        for backend in args.backend:
            log(f"{backend}: CPU per stored sample, trends on and off")
            outcome["cpu"][backend] = cpu_per_sample(backend, args, fleet, scratch, server)
            cpu = outcome["cpu"][backend]
            log(f"{backend}: on {cpu['on_us']:.1f} us, off {cpu['off_us']:.1f} us a sample")
        for backend in args.backend:
            outcome[backend] = measure_backend(backend, args, fleet, scratch,
                                               server if backend == "mysql" else None)
            if backend == "mysql" and server is not None:
                server.stop()
                server = None
            shutil.rmtree(scratch / backend, ignore_errors=True)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    outcome["seconds"] = time.perf_counter() - started
    made = result(args, fleet, outcome)
    for table in made["tables"]:
        print(table["title"])
        for row in table["rows"]:
            print("  " + ", ".join(f"{k}: {v}" for k, v in row.items()))
    for item in made["goals"]:
        verdict = "met" if item["met"] else f"MISSED ({item['miss']})"
        print(f"{item['name']}: {item['value']:.3g} {item['unit']} (goal {item['op']} {item['target']}): {verdict}")
    emit(made)
    return 0


if __name__ == "__main__":
    sys.exit(main())
