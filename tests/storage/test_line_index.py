"""The file backend's line index: one agent's lines without a scan, and never a wrong answer from it."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import AgentStatus, Batch, Sample
from storage.file import FileStore
from storage.lineindex import SAMPLED_CHECKS, agent_lines, index_path, lines_of
from storage.rotating import family, whole_lines

T0 = 1_700_000_000.0
NAMES = ("web-1", "web-10", "web-1.x", "web-11", "w", "web-1-", "db_1")


def sample(agent: str, ts: float, cpu: float = 10.0) -> Sample:
    return Sample.model_validate({"agent": agent, "timestamp": ts, "cpu_usage": cpu})


def fill(store: FileStore, sweeps: int, names: tuple[str, ...] = NAMES, t0: float = T0) -> None:
    for i in range(sweeps):
        store.write(Batch(
            samples=[sample(name, t0 + i * 30 + n, float(n)) for n, name in enumerate(names)],
            statuses=[AgentStatus(agent=name, timestamp=t0 + i * 30 + n, state="up") for n, name in enumerate(names)],
        ))


def scanned(path: Path, agent: str) -> bytes:
    return b"".join(lines_of(whole_lines(p), agent) for p in family(path, 5))


def indexed(path: Path, agent: str) -> bytes:
    return b"".join(agent_lines(p, agent) for p in family(path, 5))


@pytest.fixture
def json_file(tmp_path: Path) -> Path:
    path = tmp_path / "data" / "metrics.json"
    store = FileStore(path)
    try:
        fill(store, 20)
    finally:
        store.close()
    return path


def test_every_data_file_gets_an_index_and_queries_use_it(json_file: Path) -> None:
    for kind in ("metrics.json", "metrics.status.json", "metrics.alerts.json"):
        assert index_path(json_file.with_name(kind)).is_file()
    reader = FileStore(json_file, readonly=True)
    frame = reader.query_samples(0, T0 + 10_000, "web-1")
    assert len(frame) == 20 and set(frame["agent"]) == {"web-1"}
    assert set(reader.query_statuses(0, T0 + 10_000, "web-1")["agent"]) == {"web-1"}


@pytest.mark.parametrize("agent", NAMES)
def test_an_agent_whose_name_prefixes_another_gets_only_its_own_lines(json_file: Path, agent: str) -> None:
    found = indexed(json_file, agent)
    assert found == scanned(json_file, agent)
    assert found.count(b"\n") == 20
    assert all(line.startswith(b'{"agent":"' + agent.encode() + b'",') for line in found.splitlines())


@pytest.mark.parametrize("hostile", ['web-1"', 'web-1",', "web-.*", "", "web-1\n", "x" * 65, "../web-1", "web 1"])
def test_hostile_agent_filters_find_nothing(json_file: Path, hostile: str) -> None:
    reader = FileStore(json_file, readonly=True)
    assert reader.query_samples(0, T0 + 10_000, hostile).empty


def test_a_missing_index_falls_back_to_a_scan_and_the_next_writer_rebuilds_it(json_file: Path) -> None:
    expected = scanned(json_file, "web-10")
    index_path(json_file).unlink()
    assert indexed(json_file, "web-10") == expected
    FileStore(json_file).close()
    assert index_path(json_file).is_file()
    assert indexed(json_file, "web-10") == expected


def test_a_file_rewritten_in_place_is_not_read_through_its_stale_index(
    json_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # same inode, same size, other lines at the indexed offsets: every agent's line moves by one
    lines = json_file.read_bytes().splitlines(keepends=True)
    with open(json_file, "r+b") as handle:
        handle.write(b"".join(lines[1:] + lines[:1]))
    with caplog.at_level(logging.WARNING, logger="storage.lineindex"):
        for agent in NAMES:
            assert indexed(json_file, agent) == scanned(json_file, agent)
    assert "stale" in caplog.text or "does not match" in caplog.text


def test_a_line_of_one_agent_overwritten_by_another_is_caught_by_the_sampled_check(tmp_path: Path) -> None:
    # web-10's indexed lines all still hold web-10; one more web-10 line sits where web-11 was indexed.
    # Only the sampled check of other agents' lines can see it (every line is sampled in a file this small).
    path = tmp_path / "metrics.json"
    store = FileStore(path)
    try:
        fill(store, 4)
    finally:
        store.close()
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) <= SAMPLED_CHECKS
    victim = next(i for i, line in enumerate(lines) if line.startswith(b'{"agent":"web-11"'))
    forged = lines[victim].replace(b'"web-11"', b'"web-10"')
    assert len(forged) == len(lines[victim])
    lines[victim] = forged
    path.write_bytes(b"".join(lines))  # truncate and rewrite: same inode, same line boundaries
    assert indexed(path, "web-10") == scanned(path, "web-10")
    assert indexed(path, "web-10").count(b"\n") == 5


def test_a_truncated_data_file_is_scanned(json_file: Path) -> None:
    with open(json_file, "r+b") as handle:
        handle.truncate(json_file.stat().st_size // 2)
    assert indexed(json_file, "web-1") == scanned(json_file, "web-1")


def test_an_index_of_another_file_is_ignored(json_file: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.json"
    shutil.copyfile(json_file, copy)
    os.replace(copy, json_file)  # new inode, same bytes
    assert indexed(json_file, "web-1") == scanned(json_file, "web-1")
    shutil.copyfile(index_path(json_file), tmp_path / "x.idx")
    FileStore(json_file).close()  # rebuilt for the new inode
    assert index_path(json_file).read_bytes() != (tmp_path / "x.idx").read_bytes()
    assert indexed(json_file, "web-1") == scanned(json_file, "web-1")


@pytest.mark.parametrize("damage", [b"", b"garbage", b"SMONIDX1" + b"\xff" * 40])
def test_a_damaged_index_is_ignored_and_rebuilt(json_file: Path, damage: bytes) -> None:
    index_path(json_file).write_bytes(damage)
    assert indexed(json_file, "web-1") == scanned(json_file, "web-1")
    FileStore(json_file).close()
    assert indexed(json_file, "web-1") == scanned(json_file, "web-1")
    assert index_path(json_file).stat().st_size > 100


def test_lines_appended_without_the_index_are_found_in_the_tail(json_file: Path) -> None:
    line = sample("web-1", T0 + 99_999).__pydantic_serializer__.to_json(sample("web-1", T0 + 99_999)) + b"\n"
    with open(json_file, "ab") as handle:  # as a writer that keeps no index would
        handle.write(line)
    found = indexed(json_file, "web-1")
    assert found.endswith(line) and found == scanned(json_file, "web-1")
    reader = FileStore(json_file, readonly=True)
    assert reader.query_samples(0, T0 + 100_000, "web-1")["timestamp"].iloc[-1] == T0 + 99_999


def test_a_torn_tail_cut_by_the_next_writer_leaves_a_consistent_index(json_file: Path) -> None:
    with open(json_file, "ab") as handle:
        handle.write(b'{"agent":"web-1","timestamp":')
    store = FileStore(json_file)
    try:
        fill(store, 2, t0=T0 + 50_000)
    finally:
        store.close()
    assert indexed(json_file, "web-1") == scanned(json_file, "web-1")
    assert indexed(json_file, "web-1").count(b"\n") == 22


def test_an_index_that_cannot_be_written_is_removed_not_left_with_a_gap(json_file: Path) -> None:
    store = FileStore(json_file)
    try:
        # swap the writer's own index descriptor for a read-only one: the next append fails as a full disk would
        writer = store._samples._index
        assert writer is not None and writer._fd is not None
        os.close(writer._fd)
        writer._fd = os.open(os.devnull, os.O_RDONLY)
        fill(store, 1, t0=T0 + 70_000)
        assert not index_path(json_file).exists()
        fill(store, 1, t0=T0 + 80_000)
    finally:
        store.close()
    assert indexed(json_file, "web-1").count(b"\n") == 22
    assert indexed(json_file, "web-1") == scanned(json_file, "web-1")


def test_indexes_follow_their_files_through_rotation(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    store = FileStore(path, max_bytes=4096, backup_count=3)
    try:
        fill(store, 30)
    finally:
        store.close()
    members = family(path, 3)
    assert len(members) == 4
    for member in members:
        assert index_path(member).is_file()
        for agent in NAMES:
            assert agent_lines(member, agent) == lines_of(whole_lines(member), agent)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    writes=st.lists(st.lists(st.sampled_from(NAMES), min_size=1, max_size=6), min_size=1, max_size=12),
    max_bytes=st.sampled_from([300, 1000, 1 << 20]),
)
def test_indexed_queries_equal_scanned_queries(tmp_path_factory: pytest.TempPathFactory,
                                               writes: list[list[str]], max_bytes: int) -> None:
    path = tmp_path_factory.mktemp("idx") / "metrics.json"
    store = FileStore(path, max_bytes=max_bytes, backup_count=3, fsync=False)
    try:
        for i, names in enumerate(writes):
            store.write(Batch(samples=[sample(name, T0 + i * 10 + n) for n, name in enumerate(names)]))
    finally:
        store.close()
    reader = FileStore(path, readonly=True, max_bytes=max_bytes, backup_count=3)
    everything = reader.query_samples(0, T0 + 1e6)
    for agent in NAMES:
        expected = everything[everything["agent"] == agent].reset_index(drop=True)
        pd.testing.assert_frame_equal(reader.query_samples(0, T0 + 1e6, agent), expected)
