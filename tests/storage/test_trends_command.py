"""``python -m storage trends``: the rollups of data stored before trends existed (or loaded by another
tool), built resumably and idempotently, on files and on MariaDB; retention by age on both backends."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from secure_collector.housekeeping import Housekeeping
from storage import Batch, Sample
from storage.buildtrends import build
from storage.config import RetentionConfig, StorageConfig
from storage.file import FileStore
from storage.filetrends import trends_dir
from storage.models import AgentStatus, Alert
from storage.mysql import MySQLStore
from storage.retention import cutoffs, expire
from storage.trends import FIVE_MINUTES, HOURLY, rollup
from tests.plugins.mariadb import MariaDBServer
from tests.storage.test_trends_mysql import T0, assert_rollups_equal, make_samples

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400.0


def write_raw_lines(path: Path, samples: list[Sample], per_file: int) -> None:
    """Samples written the way another tool (or a version before trends) would: raw lines only, in
    several rotated files, oldest in the highest backup."""
    lines = [s.model_dump_json().encode() + b"\n" for s in sorted(samples, key=lambda s: s.timestamp)]
    chunks = [lines[i : i + per_file] for i in range(0, len(lines), per_file)]
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [path.with_name(f"{path.name}.{n}") for n in range(len(chunks) - 1, 0, -1)] + [path]
    for name, chunk in zip(names, chunks, strict=True):
        name.write_bytes(b"".join(chunk))


def run_command(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "storage", "trends", "--config", str(config)],
        capture_output=True, text=True, timeout=300, cwd=REPO, check=False,
    )


def test_files_back_fill_is_resumable_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "data" / "metrics_data.json"
    samples = make_samples(3, 30, 60.0, seed=21)
    write_raw_lines(path, samples, per_file=1500)  # hours straddle files
    config = tmp_path / "collector.json"
    config.write_text(json.dumps({"storage": {"type": "file", "json_file": str(path),
                                              "rotation": {"max_size": "100MB", "backup_count": 10}}}))
    assert not trends_dir(path).exists()
    interrupted: list[int] = []

    def stop_after_two(done: int, total: int, unit: str) -> None:
        assert unit == "file" and total == -(-3 * 30 * 60 // 1500)  # 3 agents x 30 h at 60 s, 1500 per file
        if done == 2:
            interrupted.append(done)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(StorageConfig.model_validate(json.loads(config.read_text())["storage"]), stop_after_two)
    assert interrupted == [2]
    done = run_command(config)
    assert done.returncode == 0, done.stderr
    assert "rollups written" in done.stdout and done.stderr == ""  # no progress bar off a terminal
    again = run_command(config)
    assert again.returncode == 0 and " 0 rollups written" in again.stdout
    reader = FileStore(path, readonly=True)
    raw = reader.query_samples(0, T0 + 10 * DAY)
    assert len(raw) == len(samples)
    assert_rollups_equal(reader.query_trends(FIVE_MINUTES, 0, T0 + 10 * DAY), rollup(raw, 300))
    assert_rollups_equal(reader.query_trends(HOURLY, 0, T0 + 10 * DAY), rollup(raw, 3600))


def test_files_back_fill_refuses_beside_a_running_collector(tmp_path: Path) -> None:
    path = tmp_path / "metrics_data.json"
    writer = FileStore(path, fsync=False)
    try:
        config = tmp_path / "collector.json"
        config.write_text(json.dumps({"storage": {"type": "file", "json_file": str(path)}}))
        done = run_command(config)
        assert done.returncode == 1
        assert "in use by another process" in done.stderr and "Traceback" not in done.stderr
    finally:
        writer.close()


@pytest.mark.mysql
def test_mysql_back_fill_of_rows_loaded_by_another_tool_resumes(tmp_path: Path, mariadb: MariaDBServer) -> None:
    mariadb.start()
    mariadb.reset_database()
    section = mariadb.storage_section()
    store = MySQLStore(StorageConfig.model_validate(section))
    store.write(Batch(samples=make_samples(2, 3 * 24, 300.0, seed=4)))
    store.close()
    with mariadb.root_connection(database=mariadb.database) as conn, conn.cursor() as cursor:
        cursor.execute("DELETE FROM `trends_5m`")  # as if loaded by LOAD DATA, with no rollups
        cursor.execute("DELETE FROM `trends_1h`")
        conn.commit()
    seen: list[tuple[int, int]] = []

    def stop_at_two(done: int, total: int, unit: str) -> None:
        seen.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(StorageConfig.model_validate(section), stop_at_two)
    assert seen[-1] == (2, 4)  # 72 h from an hour that is not midnight: four days
    config = tmp_path / "collector.json"
    config.write_text(json.dumps({"storage": section}))
    done = run_command(config)
    assert done.returncode == 0, done.stderr
    assert "2 day(s) of samples rolled up" in done.stdout  # only the days the interrupted run had left
    reader = MySQLStore(StorageConfig.model_validate(section), readonly=True)
    try:
        raw = reader.query_samples(0, T0 + 10 * DAY)
        assert_rollups_equal(reader.query_trends(HOURLY, 0, T0 + 10 * DAY), rollup(raw, 3600))
        assert_rollups_equal(reader.query_trends(FIVE_MINUTES, 0, T0 + 10 * DAY), rollup(raw, 300))
    finally:
        reader.close()


def old_and_new(now: float) -> Batch:
    samples = make_samples(2, 2, 600.0, seed=8, start=now - 100 * DAY) + make_samples(2, 2, 600.0, start=now - 3600)
    alerts = [Alert(agent="srv-00", timestamp=now - 100 * DAY, metric="cpu_usage", severity="warning"),
              Alert(agent="srv-00", timestamp=now - 60, metric="cpu_usage", severity="warning")]
    statuses = [AgentStatus(agent=s.agent, timestamp=s.timestamp, state="up") for s in samples]
    return Batch(samples=samples, alerts=alerts, statuses=statuses)


def test_file_retention_removes_what_is_older_and_keeps_the_rest(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    now = time.time()
    path = tmp_path / "metrics_data.json"
    store = FileStore(path, fsync=False, max_bytes=8192, backup_count=20)  # old lines in backups and the live file
    batch = old_and_new(now)
    store.write(batch)
    old_hours = {(s.agent, s.timestamp // 3600) for s in batch.samples if s.timestamp < now - 90 * DAY}
    config = StorageConfig.model_validate({"json_file": str(path), "retention": {"history_days": 90,
                                                                               "trends_days": 95}})
    with caplog.at_level(logging.INFO, "storage.retention"):
        removed = expire(store, config.retention, now, go_on=lambda: True)
    assert removed["samples"] == 24 and removed["agent states"] == 24 and removed["alerts"] == 1
    assert removed["5-minute trends"] == 24 and removed["hourly trends"] == len(old_hours)  # 2 or 3 per agent
    assert "retention: removed 24 samples, 24 agent states, 1 alerts" in caplog.text
    store.write(Batch(samples=make_samples(1, 0.1, 60.0, start=now + 30)))  # the writer goes on after the rewrite
    assert store.query_samples(0, now - 90 * DAY).empty and store.query_alerts(0, now - 90 * DAY).empty
    assert len(store.query_samples(now - DAY, now + DAY)) == 24 + 6
    assert store.query_trends(HOURLY, 0, now - 90 * DAY).empty
    assert not store.query_trends(HOURLY, now - DAY, now + DAY).empty
    assert expire(store, config.retention, now, go_on=lambda: True) == dict.fromkeys(removed, 0)
    store.close()


@pytest.mark.mysql
def test_mysql_retention_in_small_batches(mariadb: MariaDBServer) -> None:
    mariadb.start()
    mariadb.reset_database()
    now = time.time()
    store = MySQLStore(StorageConfig.model_validate(mariadb.storage_section()))
    try:
        store.write(old_and_new(now))
        store.write(Batch(samples=make_samples(1, 1, 600.0, start=now - 20 * DAY)))  # raw kept, 5-minute not
        config = StorageConfig.model_validate({"type": "mysql", "retention": {"history_days": 30}})
        steps: list[int] = []

        def go_on() -> bool:
            steps.append(1)
            return True

        removed = expire(store, config.retention, now, batch=5, go_on=go_on)
        assert removed["samples"] == 24 and removed["alerts"] == 1 and removed["agent states"] == 24
        assert removed["5-minute trends"] == 24 + 6 and removed["hourly trends"] == 0  # kept a year
        assert len(store.query_samples(now - 21 * DAY, now - 19 * DAY)) == 6  # 30 days of raw samples
        assert store.query_trends(HOURLY, now - 21 * DAY, now - 19 * DAY).shape[0] >= 1
        assert store.query_trends(FIVE_MINUTES, now - 21 * DAY, now - 19 * DAY).empty  # 17 days at most
        assert len(steps) >= 24 // 5 * 2
        assert store.query_samples(0, now - 30 * DAY).empty and len(store.query_samples(now - DAY, now + DAY)) == 24
        assert cutoffs(RetentionConfig(history_days=7), now).five_minutes == now - 7 * DAY
    finally:
        store.close()


def test_the_collector_s_housekeeping_thread_runs_retention(tmp_path: Path) -> None:
    now = time.time()
    store = FileStore(tmp_path / "m.json", fsync=False)
    store.write(old_and_new(now))
    config = StorageConfig.model_validate({"retention": {"history_days": 7}})
    house = Housekeeping(lambda: store, config.retention, first_delay=0.0, interval=3600).start()
    deadline = time.monotonic() + 30
    while house.passes == 0 and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a condition with a deadline, not a fixed wait
    house.close()
    assert house.passes == 1 and house.removed["samples"] == 24
    store.close()


@pytest.mark.parametrize(("retention", "message"), [
    ({"history_days": 0}, "storage.retention.history_days"),
    ({"trends_days": "a year"}, "storage.retention.trends_days"),
    ({"keep": 3}, "storage.retention.keep"),
])
def test_bad_retention_is_refused_with_its_key_path(tmp_path: Path, retention: dict[str, Any], message: str) -> None:
    config = tmp_path / "collector.json"
    config.write_text(json.dumps({"storage": {"type": "file", "json_file": str(tmp_path / "m.json"),
                                              "retention": retention}}))
    done = run_command(config)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not os.path.exists(tmp_path / "m.json")
