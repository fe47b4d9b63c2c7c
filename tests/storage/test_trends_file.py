"""Trend rollups of the file backend: equal to the reference rollup of the raw samples through sweeps,
restarts, replays, late samples and compaction; torn segment lines; the list encoding round trip."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import Batch, Sample, rotating
from storage import file as file_module
from storage.file import FileStore
from storage.filetrends import encode_lines, parse_lines, trends_dir
from storage.trends import FIVE_MINUTES, HOURLY, columns, rollup, rollup_rows
from tests.storage.test_trends_mysql import T0, assert_rollups_equal, make_samples


def sweeps(samples: list[Sample], size: int) -> list[list[Sample]]:
    by_time = sorted(samples, key=lambda s: s.timestamp)
    return [by_time[i : i + size] for i in range(0, len(by_time), size)]


def test_rollups_follow_sweeps_a_restart_a_replay_and_a_late_sample(tmp_path: Path) -> None:
    path = tmp_path / "data" / "metrics_data.json"
    batches = sweeps(make_samples(3, 3.2, 30.0), 3)
    late = batches.pop(20)  # an agent's back-fill, stored 2 hours later
    store = FileStore(path, fsync=False)
    for batch in batches[:200]:
        store.write(Batch(samples=batch))
    store.close()  # a restart in the middle of an hour
    store = FileStore(path, fsync=False)
    store.write(Batch(samples=[s for b in batches[150:200] for s in b]))  # spool replay: nothing twice
    for batch in batches[200:]:
        store.write(Batch(samples=batch))
    store.write(Batch(samples=late))
    store.close()
    reader = FileStore(path, readonly=True)
    raw = reader.query_samples(0, T0 + 86400)
    assert len(raw) == sum(len(b) for b in batches) + len(late)
    assert_rollups_equal(reader.query_trends(FIVE_MINUTES, 0, T0 + 86400), rollup(raw, 300))
    assert_rollups_equal(reader.query_trends(HOURLY, 0, T0 + 86400), rollup(raw, 3600))
    one = reader.query_trends(HOURLY, T0 + 3600, T0 + 7200, "srv-01")
    assert set(one["agent"]) == {"srv-01"} and one["bucket"].tolist() == [T0 + 3600, T0 + 7200]


def test_compacted_segments_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "metrics_data.json"
    store = FileStore(path, fsync=False)
    for batch in sweeps(make_samples(2, 2, 60.0, seed=11), 2):
        store.write(Batch(samples=batch))
    store.close()
    before = FileStore(path, readonly=True).query_trends(FIVE_MINUTES, 0, T0 + 86400)
    written = FileStore(path, readonly=True).trends.compact_closed(T0 + 10 * 86400)
    assert written and all(p.suffix == ".parquet" for p in written)
    assert not list((trends_dir(path) / "5m").glob("*.json"))
    after = FileStore(path, readonly=True).query_trends(FIVE_MINUTES, 0, T0 + 86400)
    pd.testing.assert_frame_equal(before, after)


def test_a_torn_segment_line_is_cut_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "metrics_data.json"
    store = FileStore(path, fsync=False)
    batches = sweeps(make_samples(1, 1, 60.0, seed=2), 1)
    for batch in batches[:30]:
        store.write(Batch(samples=batch))
    segment = next((trends_dir(path) / "5m").glob("*.json"))
    with open(segment, "ab") as handle:
        handle.write(b'{"agent":"srv-00","bucket":17')  # a crash in the middle of a line
    for batch in batches[30:]:
        store.write(Batch(samples=batch))
    store.close()
    reader = FileStore(path, readonly=True)
    raw = reader.query_samples(0, T0 + 1e6)
    assert_rollups_equal(reader.query_trends(FIVE_MINUTES, 0, T0 + 86400), rollup(raw, 300))


Stat = tuple[float, float, float, int]
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b.c", "d_1"]), st.integers(0, 50), st.integers(1, 30),
                          st.lists(st.one_of(st.none(), st.tuples(finite, finite, finite, st.integers(0, 30))),
                                   min_size=len(columns()[4::4]), max_size=len(columns()[4::4]))),
                max_size=20))
def test_segment_lines_round_trip(rows: list[tuple[str, int, int, list[Stat | None]]]) -> None:
    """Any decoded rollup written as lines reads back equal (the sparse list form loses nothing)."""
    records = []
    for agent, bucket, count, stats in rows:
        record = {"agent": agent, "bucket": float(bucket * 300), "count": count, "threat_max": bucket % 4}
        for name, stat in zip(columns()[4::4], stats, strict=True):
            if stat is None:
                record.update({name: np.nan, f"{name}_min": np.nan, f"{name}_max": np.nan, f"{name}_n": 0})
            else:
                mean, low, high, n = stat
                n = min(max(n, 1), count)
                record.update({name: mean, f"{name}_min": low, f"{name}_max": high, f"{name}_n": n})
        records.append(record)
    frame = pd.DataFrame(records, columns=list(columns())) if records else pd.DataFrame(columns=list(columns()))
    back = parse_lines(b"".join(encode_lines(frame)))
    assert len(back) == len(frame)
    for column in columns()[1:]:
        np.testing.assert_array_equal(back[column].to_numpy(np.float64), frame[column].to_numpy(np.float64),
                                      err_msg=column)


@pytest.mark.parametrize("data", [b'not json\n', b'{"agent":"a","bucket":"x","count":1}\n'])
def test_damaged_segment_lines_are_skipped_and_counted(data: bytes, caplog: pytest.LogCaptureFixture) -> None:
    good = encode_lines(rollup(pd.DataFrame(), 300))
    assert good == []
    line = b'{"agent":"a","bucket":300,"count":2,"threat_max":0,"cpu_usage":[5,4,6]}\n'
    frame = parse_lines(line + data + line, "seg")
    assert len(frame) == 2 and frame["cpu_usage_min"].tolist() == [4.0, 4.0]
    assert "1 trend lines are not rollups" in caplog.text


def test_a_recent_range_reads_only_the_files_written_since(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The open hour of a long history (viz's trend path) does not parse every rotated file."""
    path = tmp_path / "metrics_data.json"
    now = time.time()
    store = FileStore(path, fsync=False, max_bytes=64 * 1024, backup_count=100)
    for batch in sweeps(make_samples(2, 24, 60.0, seed=1, start=now - 86_400), 2 * 30):  # half-hour batches
        store.write(Batch(samples=batch))
    store.close()
    backups = sorted(path.parent.glob("metrics_data.json.*[0-9]"))
    assert len(backups) > 10
    for backup in backups:  # as if written over the last day, oldest first
        index = int(backup.name.rsplit(".", 1)[1])
        os.utime(backup, (now - index * 3600 / 2, now - index * 3600 / 2))
    read: list[Path] = []
    real = rotating.whole_lines

    def spy(member: Path) -> bytes:
        read.append(member)
        return real(member)

    monkeypatch.setattr(file_module, "whole_lines", spy)
    reader = FileStore(path, readonly=True, backup_count=100)
    recent = reader.query_samples(now - 3600, now)
    assert path in read and len(read) < len(backups) / 2
    assert len(recent) == 2 * 60  # the last hour whole
    read.clear()
    assert len(reader.query_samples(0, now)) == 2 * 24 * 60 and len(read) == len(backups) + 1


values = st.one_of(st.none(), st.floats(min_value=-1e12, max_value=1e12, allow_nan=False), st.integers(0, 2**31))


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["web-1", "web-10", "a", "Z.z_9"]), st.floats(0, 5e5, allow_nan=False),
                  st.sampled_from(["none", "low", "medium", "high", "bogus"]),
                  st.lists(values, min_size=len(columns()[4::4]), max_size=len(columns()[4::4]))),
        max_size=60,
    ),
    st.sampled_from([300, 3600]),
)
def test_the_numpy_rollup_equals_the_reference(rows: list[tuple[str, float, str, list[float | None]]],
                                                width: int) -> None:
    """storage.trends.rollup_rows (the file backend's fast path) against rollup (pandas), for any samples."""
    flat = [(agent, ts, threat, *stats) for agent, ts, threat, stats in rows]
    names = ["agent", "timestamp", "threat_level", *columns()[4::4]]
    frame = pd.DataFrame(flat, columns=names) if flat else pd.DataFrame(columns=names)
    for name in columns()[4::4]:
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
    fast, reference = rollup_rows(flat, width), rollup(frame, width)
    assert list(fast.columns) == list(reference.columns) and len(fast) == len(reference)
    assert fast["agent"].tolist() == reference["agent"].tolist()
    for column in columns()[1:]:
        np.testing.assert_allclose(fast[column].to_numpy(np.float64), reference[column].to_numpy(np.float64),
                                   rtol=1e-12, atol=1e-6, equal_nan=True, err_msg=column)
