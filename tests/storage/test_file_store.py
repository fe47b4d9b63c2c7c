"""The file backend against real files: round trips, rotation, torn lines, replays, permissions."""

from __future__ import annotations

import itertools
import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import ALERT_COLUMNS, SAMPLE_COLUMNS, STATUS_COLUMNS, AgentStatus, Alert, Batch, Sample
from storage.config import StorageConfig
from storage.errors import StorageConfigError, StorageError, StorageUnavailable
from storage.factory import open_store
from storage.file import FileStore, human_alert_line
from storage.memory import MemoryStore
from tests.storage import strategies
from tests.storage.helpers import assert_same_frames

T0 = 1_700_000_000.0


def sample(agent: str = "web-1", ts: float = T0, **fields: object) -> Sample:
    return Sample.model_validate({"agent": agent, "timestamp": ts, "cpu_usage": 12.5, "load_1": 0.5, **fields})


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FileStore]:
    s = FileStore(tmp_path / "data" / "metrics.json", metrics_file=tmp_path / "data" / "metrics.log")
    try:
        yield s
    finally:
        s.close()


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_round_trip_of_every_kind(store: FileStore) -> None:
    batch = Batch(
        samples=[sample(ts=T0 + 1, cpu_temperature=None, temperature_reason="no sensor"), sample("db-1", T0)],
        alerts=[Alert(agent="web-1", timestamp=T0 + 1, metric="cpu_usage", value=91.0, threshold=80.0,
                      severity="critical", message="cpu at 91%")],
        statuses=[AgentStatus(agent="db-1", timestamp=T0, state="timeout", detail="timed out after 10 s")],
    )
    store.write(batch)
    frame = store.query_samples(0, T0 + 10)
    assert tuple(frame.columns) == SAMPLE_COLUMNS
    assert frame["agent"].tolist() == ["db-1", "web-1"]  # sorted by time
    assert frame["temperature_reason"].tolist() == [None, "no sensor"]
    assert tuple(store.query_alerts(0, T0 + 10).columns) == ALERT_COLUMNS
    assert store.query_alerts(0, T0 + 10)["message"].tolist() == ["cpu at 91%"]
    assert tuple(store.query_statuses(0, T0 + 10).columns) == STATUS_COLUMNS
    assert store.query_statuses(0, T0 + 10)["state"].tolist() == ["timeout"]
    # the sample line holds exactly the model's fields: the contract's, then the details
    assert list(lines(store.json_file)[0]) == list(Sample.model_fields)
    assert store.alerts_file.name == "metrics.alerts.json"
    assert store.status_file.name == "metrics.status.json"


def test_human_readable_log(store: FileStore) -> None:
    alert = Alert(agent="web-1", timestamp=T0, metric="security", severity="warning", technique="T1110",
                  message="ssh brute force\nFAKE 2024 line")
    store.write(Batch(samples=[sample(cpu_temperature=51.25)], alerts=[alert]))
    assert store.metrics_file is not None
    log_lines = store.metrics_file.read_text().splitlines()
    assert log_lines[0] == (
        "2023-11-14T22:13:20Z web-1 cpu=12.5% temp=51.2C load=0.50/n/a/n/a mem=n/a disk=n/a issues=0 threat=none"
    )
    assert log_lines[1] == human_alert_line(alert).rstrip("\n")
    assert "\\x0aFAKE" in log_lines[1]  # a newline from an agent cannot forge a log line
    assert len(log_lines) == 2


def test_range_and_agent_filters_are_inclusive(store: FileStore) -> None:
    store.write(Batch(samples=[sample(a, T0 + i) for i in range(5) for a in ("web-1", "web-10", "db-1")]))
    frame = store.query_samples(T0 + 1, T0 + 3, agent="web-1")
    assert frame["timestamp"].tolist() == [T0 + 1, T0 + 2, T0 + 3]
    assert set(frame["agent"]) == {"web-1"}  # not web-10, whose name starts the same
    assert len(store.query_samples(T0 + 1, T0 + 3)) == 9
    assert store.query_samples(T0 + 1, T0 + 3, agent="nobody").empty
    assert store.query_samples(T0 + 1, T0 + 3, agent='bad"name').empty


def test_agent_filter_ignores_agent_keys_nested_in_details(store: FileStore) -> None:
    store.write(Batch(samples=[sample("web-1", T0, extra={"peer": {"agent": "db-1", "x": 1}}), sample("db-1", T0)]))
    assert store.query_samples(0, T0, agent="db-1")["agent"].tolist() == ["db-1"]


def test_rotation_keeps_whole_lines_newest_first_and_readers_see_all(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    store = FileStore(path, max_bytes=4096, backup_count=20, fsync=False)
    written = [sample(f"a{i % 3}", T0 + i, findings=()) for i in range(120)]
    for start in range(0, 120, 7):
        store.write(Batch(samples=written[start : start + 7]))
    store.close()
    files = [path] + [path.with_name(f"m.json.{i}") for i in range(1, 21) if path.with_name(f"m.json.{i}").exists()]
    assert len(files) > 4
    newest_first = []
    for f in files:
        data = f.read_bytes()
        assert len(data) <= 4096
        assert data.endswith(b"\n")
        newest_first.append([line["timestamp"] for line in lines(f)])
    for newer, older in itertools.pairwise(newest_first):
        assert min(newer) > max(older)
    frame = FileStore(path, readonly=True, backup_count=20).query_samples(0, T0 + 1000)
    assert frame["timestamp"].tolist() == [s.timestamp for s in written]


def test_rotation_drops_the_oldest_beyond_backup_count(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    store = FileStore(path, max_bytes=4096, backup_count=2, fsync=False)
    for i in range(200):
        store.write(Batch(samples=[sample(ts=T0 + i)]))
    store.close()
    assert not path.with_name("m.json.3").exists()
    kept = sorted(line["timestamp"] for f in (path, path.with_name("m.json.1"), path.with_name("m.json.2"))
                  for line in lines(f))
    frame = FileStore(path, readonly=True, backup_count=2).query_samples(0, T0 + 1000)
    assert frame["timestamp"].tolist() == kept
    assert kept[-1] == T0 + 199 and len(kept) < 200


def test_torn_last_line_is_skipped_by_readers_and_cut_by_the_next_writer(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    store = FileStore(path)
    store.write(Batch(samples=[sample(ts=T0), sample(ts=T0 + 1)]))
    store.close()
    with open(path, "ab") as f:
        f.write(b'{"agent":"web-1","timestamp":17000')  # a crash in the middle of a write
    assert FileStore(path, readonly=True).query_samples(0, T0 + 10)["timestamp"].tolist() == [T0, T0 + 1]
    store = FileStore(path)
    store.write(Batch(samples=[sample(ts=T0 + 2)]))
    store.close()
    assert [line["timestamp"] for line in lines(path)] == [T0, T0 + 1, T0 + 2]


def test_damaged_line_in_the_middle_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "m.json"
    store = FileStore(path)
    store.write(Batch(samples=[sample(ts=T0)]))
    with open(path, "ab") as f:
        f.write(b'{"agent":"web-1","timestamp":"garbage\n\x00\xff not json\n')
    store.close()
    store = FileStore(path)
    store.write(Batch(samples=[sample(ts=T0 + 1)]))
    with caplog.at_level(logging.WARNING, logger="storage.jsonlines"):
        frame = store.query_samples(0, T0 + 10)
    assert frame["timestamp"].tolist() == [T0, T0 + 1]
    assert "skipped 2 line(s) that are not samples records in " in caplog.text
    store.close()


def test_rewriting_a_batch_is_idempotent_also_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    batch = Batch(
        samples=[sample(ts=T0), sample(ts=T0), sample("db-1", T0)],
        alerts=[Alert(agent="web-1", timestamp=T0, metric="cpu_usage", severity="warning")],
        statuses=[AgentStatus(agent="web-1", timestamp=T0, state="up")],
    )
    store = FileStore(path, metrics_file=tmp_path / "m.log")
    store.write(batch)
    store.write(batch)
    store.close()
    store = FileStore(path, metrics_file=tmp_path / "m.log")
    store.write(batch)
    store.close()
    assert len(lines(path)) == 2
    assert len(lines(store.alerts_file)) == 1
    assert len(lines(store.status_file)) == 1
    assert len((tmp_path / "m.log").read_text().splitlines()) == 3  # 2 samples + 1 alert


def test_replays_beyond_the_window_are_still_shown_once(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    store = FileStore(path, dedup_window=2)
    first = sample(ts=T0, cpu_usage=1.0)
    store.write(Batch(samples=[first, sample(ts=T0 + 1), sample(ts=T0 + 2)]))
    store.write(Batch(samples=[sample(ts=T0, cpu_usage=2.0)]))  # forgotten key: reaches the file again
    store.close()
    assert len(lines(path)) == 4
    frame = FileStore(path, readonly=True).query_samples(0, T0 + 10)
    assert frame["timestamp"].tolist() == [T0, T0 + 1, T0 + 2]
    assert frame["cpu_usage"].tolist()[0] == 1.0  # the first write wins, as in MySQL


@pytest.mark.usefixtures("umask_022")
def test_created_directories_and_files_are_private(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "a" / "b" / "m.json", metrics_file=tmp_path / "a" / "b" / "m.log")
    store.write(Batch(samples=[sample()]))
    store.close()
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    for name in ("m.json", "m.alerts.json", "m.status.json", "m.log", "m.json.lock"):
        assert stat.S_IMODE((tmp_path / "a" / "b" / name).stat().st_mode) == 0o640


def test_a_symlink_planted_at_the_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "m.json").symlink_to(target)
    # never written through; an outage the collector spools through (and --check names) until it is removed
    with pytest.raises(StorageUnavailable, match=r"storage\.json_file: cannot write .*m\.json"):
        FileStore(tmp_path / "m.json")


def test_one_writer_at_a_time_but_readers_freely(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "m.json")
    with pytest.raises(StorageConfigError, match="in use by another process"):
        FileStore(tmp_path / "m.json")
    reader = FileStore(tmp_path / "m.json", readonly=True)
    store.write(Batch(samples=[sample()]))
    assert len(reader.query_samples(0, T0)) == 1
    with pytest.raises(StorageConfigError, match="read-only"):
        reader.write(Batch(samples=[sample()]))
    store.close()
    FileStore(tmp_path / "m.json").close()  # free again once closed


def test_readonly_store_of_nothing_creates_nothing(tmp_path: Path) -> None:
    reader = FileStore(tmp_path / "none" / "m.json", readonly=True)
    frame = reader.query_samples(0, T0)
    assert frame.empty and tuple(frame.columns) == SAMPLE_COLUMNS
    assert frame["timestamp"].dtype == "float64"
    assert not (tmp_path / "none").exists()


def test_write_failure_is_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    store = FileStore(path, max_bytes=4096, backup_count=3)
    blocker = tmp_path / "m.json.3"
    blocker.mkdir()  # the rotation cannot unlink the oldest backup when it is a directory
    (blocker / "x").write_text("")
    with pytest.raises(StorageUnavailable, match="cannot write"):
        for i in range(100):
            store.write(Batch(samples=[sample(ts=T0 + i)]))
    (blocker / "x").unlink()
    blocker.rmdir()
    store.write(Batch(samples=[sample(ts=T0 + 1000)]))
    store.close()
    frame = FileStore(path, readonly=True, backup_count=3).query_samples(0, T0 + 1000)
    assert frame["timestamp"].iloc[-1] == T0 + 1000
    assert frame["timestamp"].is_unique


def test_open_store_builds_a_file_store_from_config(tmp_path: Path) -> None:
    config = StorageConfig.model_validate(
        {"type": "file", "json_file": str(tmp_path / "m.json"), "rotation": {"max_size": "8KB", "backup_count": 2}}
    )
    store = open_store(config)
    assert isinstance(store, FileStore)
    store.write(Batch(samples=[sample()]))
    store.close()
    assert len(open_store(config, readonly=True).query_samples(0, T0)) == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    samples=st.lists(strategies.samples, max_size=8),
    alerts=st.lists(strategies.alerts, max_size=4),
    statuses=st.lists(strategies.statuses, max_size=4),
)
def test_file_store_round_trips_like_memory(
    tmp_path_factory: pytest.TempPathFactory, samples: list[Sample], alerts: list[Alert], statuses: list[AgentStatus]
) -> None:
    path = tmp_path_factory.mktemp("rt") / "m.json"
    batch = Batch(samples=samples, alerts=alerts, statuses=statuses)
    store, memory = FileStore(path, fsync=False), MemoryStore()
    store.write(batch)
    memory.write(batch)
    store.close()
    assert_same_frames(FileStore(path, readonly=True), memory, 0, 4e9)
    for s in samples[:2]:
        pd.testing.assert_frame_equal(
            FileStore(path, readonly=True).query_samples(0, 4e9, agent=s.agent), memory.query_samples(0, 4e9, s.agent)
        )


@pytest.mark.parametrize(
    "reason", [":", ":x", '":"', "null", "a\\b", "x,y", '{"agent":"db-1",', "\u2028", " ", "NaN", "NA", ""]
)
def test_awkward_strings_survive_the_fast_reader(tmp_path: Path, reason: str) -> None:
    store = FileStore(tmp_path / "m.json", fsync=False)
    plain = [sample(ts=T0 + i, findings=(), extra={"path": "C:\\tmp", "k": ":x"}) for i in range(3)]
    odd = sample(ts=T0 + 3, temperature_reason=reason)
    status = AgentStatus(agent="web-1", timestamp=T0, state="bad_response", detail=reason)
    store.write(Batch(samples=[*plain, odd], statuses=[status]))
    frame = store.query_samples(0, T0 + 10)
    assert frame["temperature_reason"].tolist() == [None, None, None, reason]
    assert frame["cpu_usage"].tolist() == [12.5] * 4
    assert store.query_statuses(0, T0)["detail"].tolist() == [reason]
    store.close()


def test_a_detail_that_is_not_json_is_refused_and_nothing_is_written(store: FileStore) -> None:
    good = sample(ts=T0)
    bad = Sample(agent="web-1", timestamp=T0 + 1, extra={"blob": object()})
    with pytest.raises(StorageError, match="cannot serialise"):
        store.write(Batch(samples=[good, bad]))
    assert store.json_file.read_bytes() == b""
    store.write(Batch(samples=[good]))  # the store is still usable, and good was not marked as stored
    assert len(store.query_samples(0, T0)) == 1
