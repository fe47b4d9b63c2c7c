"""Benchmark storage: batched inserts into MariaDB and files, and loading one agent's day from each.

Run from the repository root: ``.venv/bin/python -m bench.bench_storage [--agents 100] [--hours 24]``.
It starts a private MariaDB (``tests.plugins.mariadb.MariaDBServer``, needs ``mariadb-server``)
under a temporary directory and stops it at the end. The data: ``agents`` x ``hours`` at 30 s
(288,000 samples by default), built with ``Sample.model_construct`` (validation is the collector's
cost, not storage's). Measured:

* raw PyMySQL ``executemany`` of plain tuples into a copy of ``metrics``, 1,000 rows a statement:
  the floor of what a pymysql backend can do here;
* ``MySQLStore.write`` of the whole day in batches of 1,000 samples (goal: >= 25,000 rows/s), and
  of one sweep (100 samples) at a time, as the collector writes;
* ``FileStore.write`` one sweep at a time with fsync on (the default);
* ``query_samples`` of one agent's day (2,880 of the 288,000 rows) and of the whole fleet, from both.

Prints a summary and, last, the ``BENCH_RESULT`` line that ``python -m bench`` reads.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.measure import busy_share, machine
from bench.result import emit, goal
from storage.base import Batch
from storage.config import StorageConfig
from storage.file import FileStore
from storage.models import Sample
from storage.mysql import MySQLStore, sample_params
from tests.plugins.mariadb import MariaDBServer

STEP = 30.0
INSERT_GOAL = 25_000.0
AGENT_DAY_GOAL = 0.3  # viz's budget for one agent's day, of which loading is a part
FLEET_FILE_GOAL = 1.0
FLOOR_ROWS = 100_000


def build_samples(agents: int, hours: float, end: float) -> list[list[Sample]]:
    """One list of samples per polling sweep, oldest first."""
    rng = np.random.default_rng(11)
    ticks = np.arange(end - hours * 3600 + STEP, end + 1, STEP)
    names = [f"host-{i:03d}" for i in range(agents)]
    cpu = rng.uniform(0, 100, (len(ticks), agents)).round(2)
    temp = (35 + cpu * 0.4).round(1)
    load = (cpu / 25).round(2)
    memory = rng.uniform(20, 90, (len(ticks), agents)).round(2)
    sweeps: list[list[Sample]] = []
    for t, tick in enumerate(ticks.tolist()):
        sweep = []
        for a, name in enumerate(names):
            c = float(cpu[t, a])
            sweep.append(
                Sample.model_construct(
                    agent=name, timestamp=tick + a * 0.001, cpu_usage=c, cpu_temperature=float(temp[t, a]),
                    load_1=float(load[t, a]), load_5=float(load[t, a]), load_15=float(load[t, a]),
                    memory_usage=float(memory[t, a]), disk_usage=55.0, security_issues=0, threat_level="none",
                    temperature_reason=None, temperature_high=80.0, temperature_critical=95.0, swap_usage=1.0,
                    cpu_count=4, ssh_failures=0, security_age=12.0, findings=(), extra={},
                )
            )
        sweeps.append(sweep)
    return sweeps


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def write_all(store: MySQLStore | FileStore, batches: Sequence[Sequence[Sample]]) -> float:
    """Seconds spent in ``store.write``, one call per batch (building the batches is not counted)."""
    total = 0.0
    for batch in batches:
        request = Batch(samples=batch)
        total += timed(lambda: store.write(request))  # noqa: B023 - called before the loop moves on
    return total


def median_time(action: Callable[[], object], repeat: int) -> float:
    return statistics.median(timed(action) for _ in range(repeat))


def raw_floor(server: MariaDBServer, samples: Sequence[Sample]) -> float:
    """Rows/s of bare pymysql executemany (1,000 a statement) into an empty copy of ``metrics``."""
    rows = [sample_params(s) for s in samples]
    columns = ", ".join(f"`{c}`" for c in (*Sample.model_fields, "details") if c not in ("findings", "extra"))
    sql = f"INSERT INTO `floor` ({columns}) VALUES ({', '.join(['%s'] * len(rows[0]))})"  # noqa: S608 - fixed
    with server.root_connection(database=server.database, autocommit=False) as conn, conn.cursor() as cursor:
        cursor.execute("CREATE TABLE `floor` LIKE `metrics`")
        started = time.perf_counter()
        for i in range(0, len(rows), 1000):
            cursor.executemany(sql, rows[i : i + 1000])
            conn.commit()
        elapsed = time.perf_counter() - started
        cursor.execute("DROP TABLE `floor`")
    return len(rows) / elapsed


def bench_mysql(server: MariaDBServer, sweeps: list[list[Sample]], agent: str, end: float) -> dict[str, Any]:
    everything = [s for sweep in sweeps for s in sweep]
    config = StorageConfig.model_validate(server.storage_section(batch_size=1000))
    store = MySQLStore(config)
    try:
        store.init_schema()
        floor = raw_floor(server, everything[:FLOOR_ROWS])
        batches = [everything[i : i + 1000] for i in range(0, len(everything), 1000)]
        seconds = write_all(store, batches)
        per_batch = len(everything) / seconds
        replay = timed(lambda: store.write(Batch(samples=batches[0])))
        start, stop = end - len(sweeps) * STEP, end + STEP
        agent_day = median_time(lambda: store.query_samples(start, stop, agent=agent), 5)
        loaded = len(store.query_samples(start, stop, agent=agent))
        fleet = median_time(lambda: store.query_samples(start, stop), 1)
        # as the collector writes: one sweep per call, into a fresh table
        with server.root_connection(database=server.database) as conn, conn.cursor() as cursor:
            cursor.execute("TRUNCATE TABLE `metrics`")
        some = sweeps[: max(1, 20_000 // max(1, len(sweeps[0])))]
        sweep_seconds = write_all(store, some)
        per_sweep = sum(len(s) for s in some) / sweep_seconds
    finally:
        store.close()
    return {"floor": floor, "per_batch": per_batch, "per_sweep": per_sweep, "replay_ms": replay * 1000,
            "agent_day": agent_day, "agent_rows": loaded, "fleet": fleet}


def bench_files(directory: Path, sweeps: list[list[Sample]], agent: str, end: float) -> dict[str, Any]:
    json_file = directory / "data" / "metrics_data.json"
    store = FileStore(json_file, max_bytes=256 * 1024 * 1024, backup_count=2)  # fsync on, as deployed
    try:
        seconds = write_all(store, sweeps)
    finally:
        store.close()
    rows = sum(len(s) for s in sweeps)
    reader = FileStore(json_file, readonly=True, max_bytes=256 * 1024 * 1024, backup_count=2)
    start, stop = end - len(sweeps) * STEP, end + STEP
    agent_day = median_time(lambda: reader.query_samples(start, stop, agent=agent), 5)
    loaded = len(reader.query_samples(start, stop, agent=agent))
    fleet = median_time(lambda: reader.query_samples(start, stop), 3)
    size = sum(p.stat().st_size for p in json_file.parent.iterdir())
    return {"per_sweep": rows / seconds, "agent_day": agent_day, "agent_rows": loaded, "fleet": fleet,
            "megabytes": size / 1e6}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--hours", type=float, default=24.0)
    args = parser.parse_args(argv)
    busy = busy_share()
    end = float(int(time.time()))
    sweeps = build_samples(args.agents, args.hours, end)
    rows = sum(len(s) for s in sweeps)
    agent = f"host-{min(42, args.agents - 1):03d}"
    with tempfile.TemporaryDirectory(prefix="smon-bench-storage-") as tmp:
        base = Path(tmp)
        server = MariaDBServer.create(base / "db")
        try:
            mysql = bench_mysql(server, sweeps, agent, end)
        finally:
            server.stop()
        files = bench_files(base / "files", sweeps, agent, end)
    print(f"{rows} samples ({args.agents} agents x {args.hours:g} h at 30 s)")
    print(f"raw PyMySQL floor        {mysql['floor']:10,.0f} rows/s  (executemany, 1,000 a statement)")
    print(f"MySQLStore, 1,000/write  {mysql['per_batch']:10,.0f} rows/s")
    print(f"MySQLStore, a sweep      {mysql['per_sweep']:10,.0f} rows/s  ({args.agents} a write)")
    print(f"FileStore, a sweep       {files['per_sweep']:10,.0f} rows/s  (fsync per write)")
    print(f"one agent's day          MySQL {mysql['agent_day'] * 1000:.0f} ms, files {files['agent_day'] * 1000:.0f} ms"
          f"  ({mysql['agent_rows']} / {files['agent_rows']} rows)")
    print(f"whole fleet              MySQL {mysql['fleet']:.2f} s, files {files['fleet']:.2f} s")
    emit({
        "bench": "storage",
        "title": "Storage: batched inserts and loading a day",
        "params": {"agents": args.agents, "hours": args.hours, "samples": rows, "machine": machine()},
        "tables": [{
            "title": "Throughput and load times",
            "rows": [
                {"what": "raw PyMySQL executemany (floor)", "rows_per_s": round(mysql["floor"])},
                {"what": "MySQLStore.write, 1,000 samples a call", "rows_per_s": round(mysql["per_batch"])},
                {"what": f"MySQLStore.write, one sweep ({args.agents}) a call",
                 "rows_per_s": round(mysql["per_sweep"])},
                {"what": "FileStore.write, one sweep a call, fsync", "rows_per_s": round(files["per_sweep"])},
                {"what": "MySQL: one agent's day", "seconds": round(mysql["agent_day"], 4)},
                {"what": "files: one agent's day", "seconds": round(files["agent_day"], 4)},
                {"what": "MySQL: whole fleet", "seconds": round(mysql["fleet"], 3)},
                {"what": "files: whole fleet", "seconds": round(files["fleet"], 3),
                 "megabytes": round(files["megabytes"], 1)},
            ],
        }],
        "goals": [
            goal("mysql batched insert rows/s through the backend", mysql["per_batch"], ">=", INSERT_GOAL, "rows/s",
                 f"batches of 1,000; raw PyMySQL floor {mysql['floor']:,.0f} rows/s"),
            goal("load one agent's day from mysql", mysql["agent_day"], "<", AGENT_DAY_GOAL, "s",
                 f"{mysql['agent_rows']} of {rows} rows"),
            goal("load one agent's day from files", files["agent_day"], "<", AGENT_DAY_GOAL, "s",
                 f"{files['agent_rows']} of {rows} rows"),
            goal("load the whole fleet's day from files", files["fleet"], "<", FLEET_FILE_GOAL, "s",
                 f"{rows} rows, {files['megabytes']:.0f} MB of JSON lines; most of it is pandas' C CSV tokenizer "
                 "reading every line (storage/jsonlines.py rewrites the JSON into tokens it can read; json.loads "
                 "per line was several times slower), the rest reading the files and checking for lines that "
                 "need json; from run to run this has moved between 0.99 and 1.16 s on this machine"),
        ],
        "notes": [
            f"machine busy at start: {100 * busy:.0f}% of all cores (other processes)",
            "replaying an already stored batch of 1,000 took "
            f"{mysql['replay_ms']:.0f} ms (ON DUPLICATE KEY UPDATE no-op)",
            "inserts: literals are built column by column (storage/sqlvalues.py); the rest is the server's "
            "commit and index work and pymysql's packet handling",
            "MySQL whole-fleet reads are bound by pymysql decoding every field in Python (~1 us a field)",
        ],
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
