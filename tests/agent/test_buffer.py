"""The agent's sample buffer survives crashes, stays bounded, and says what it dropped (issue 18, item 1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agent.buffer import SampleBuffer

ROOT = Path(__file__).resolve().parents[2]
NOW = 1_800_000_000.0


def _buffer(path: Path, *, max_bytes: int = 1024 * 1024, max_age: float = 86_400.0) -> SampleBuffer:
    return SampleBuffer(path, max_bytes=max_bytes, max_age=max_age, fsync_interval=0.0, clock=lambda: NOW)


def _sample(i: int) -> dict[str, object]:
    return {"timestamp": NOW - 1000 + i, "cpu_usage": float(i % 100), "agent": "a"}


def test_samples_come_back_in_order_by_page_and_continue_after_a_restart(tmp_path: Path) -> None:
    buffer = _buffer(tmp_path / "buf")
    assert [buffer.append(_sample(i)) for i in range(5)] == [1, 2, 3, 4, 5]
    page = buffer.page(0, 3)
    assert [s["seq"] for s in page.samples] == [1, 2, 3] and page.more and not page.gap
    assert [s["seq"] for s in buffer.page(3, 10).samples] == [4, 5]
    assert buffer.page(5, 10) == ([], False, False)
    buffer.close()
    again = _buffer(tmp_path / "buf")
    assert again.newest_seq == 5 and again.append(_sample(6)) == 6


def test_a_torn_tail_is_cut_back_to_the_last_whole_sample_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = _buffer(tmp_path / "buf")
    for i in range(3):
        buffer.append(_sample(i))
    buffer.close()
    (segment,) = (tmp_path / "buf").iterdir()
    whole = segment.read_bytes()
    with open(segment, "ab") as handle:
        handle.write(b'0badf00d {"seq":4,"timest')  # a crash mid-append
    again = _buffer(tmp_path / "buf")
    assert segment.read_bytes() == whole
    assert again.newest_seq == 3 and [s["seq"] for s in again.page(0, 10).samples] == [1, 2, 3]
    assert any("torn or corrupt tail" in r.getMessage() for r in caplog.records)
    segment.write_bytes(whole[:-5] + b"XXXX\n")  # a corrupt last line: checksum mismatch
    assert _buffer(tmp_path / "buf").newest_seq == 2


def test_oldest_segments_go_first_when_full_counted_and_a_caller_behind_them_sees_the_gap(tmp_path: Path) -> None:
    buffer = _buffer(tmp_path / "buf", max_bytes=64 * 1024)
    for i in range(2000):
        buffer.append(_sample(i))
    assert buffer.dropped > 0
    size = sum(p.stat().st_size for p in (tmp_path / "buf").iterdir())
    assert size <= 64 * 1024 + 64 * 1024 // 8
    page = buffer.page(1, 5)
    oldest = page.samples[0]["seq"]
    assert page.gap and oldest == buffer.dropped + 1
    assert buffer.page(oldest - 1, 5).gap is False  # just behind the oldest kept: nothing missing


def test_samples_older_than_max_age_are_dropped(tmp_path: Path) -> None:
    buffer = _buffer(tmp_path / "buf", max_bytes=64 * 1024, max_age=600)
    for i in range(900):  # one a second, the oldest 1,000 s old
        buffer.append(_sample(i))
    remaining = buffer.page(0, 1000).samples
    assert buffer.dropped > 0 and remaining[-1]["seq"] == 900
    assert all(float(str(s["timestamp"])) >= NOW - 600 - 200 for s in remaining)  # at most a segment older


WRITER = """
import sys
from pathlib import Path
from secure_agent.buffer import SampleBuffer
buffer = SampleBuffer(Path(sys.argv[1]), max_bytes=1 << 30, max_age=1e9, fsync_interval=0.0)
i = 0
while True:
    i += 1
    buffer.append({"timestamp": 1.0 * i, "payload": "x" * 3000, "agent": "a"})
"""


def test_a_writer_killed_with_sigkill_mid_append_leaves_every_whole_sample(tmp_path: Path) -> None:
    directory = tmp_path / "buf"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(directory)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it has written a few hundred samples
            if directory.is_dir() and sum(p.stat().st_size for p in directory.iterdir()) > 1_000_000:
                break
            time.sleep(0.01)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.wait(timeout=10)
    buffer = SampleBuffer(directory, max_bytes=1 << 30, max_age=1e9, fsync_interval=0.0)
    newest = buffer.newest_seq
    assert newest > 100
    seqs: list[object] = []
    after = 0
    while True:
        page = buffer.page(after, 1000)
        seqs += [s["seq"] for s in page.samples]
        if not page.more:
            break
        after = int(str(seqs[-1]))
    assert seqs == list(range(1, newest + 1))  # every whole sample, in order, none torn
    assert buffer.append({"timestamp": 0.5, "agent": "a"}) == newest + 1


@settings(max_examples=60, deadline=None)
@given(
    count=st.integers(min_value=0, max_value=300),
    max_bytes=st.sampled_from([64 * 1024, 128 * 1024, 1024 * 1024]),
    asks=st.lists(
        st.tuples(st.integers(min_value=0, max_value=320), st.integers(min_value=1, max_value=50)), max_size=8
    ),
)
def test_a_page_is_what_reading_every_kept_line_gives(
    tmp_path_factory: pytest.TempPathFactory, count: int, max_bytes: int, asks: list[tuple[int, int]]
) -> None:
    """The indexed reader against the plain one: every whole line of every segment, in order."""
    directory = tmp_path_factory.mktemp("buf")
    buffer = _buffer(directory, max_bytes=max_bytes)
    for i in range(count):
        buffer.append({**_sample(i), "payload": "y" * 400})
    kept = [
        json.loads(line.split(b" ", 1)[1])
        for path in sorted(directory.iterdir())
        for line in path.read_bytes().splitlines()
    ]
    seqs = [s["seq"] for s in kept]
    assert seqs == list(range(seqs[0], count + 1)) if seqs else count == 0
    for after, limit in asks:
        page = buffer.page(after, limit)
        oldest = seqs[0] if seqs else buffer.newest_seq + 1
        start = oldest if after < oldest else after + 1
        rest = [s for s in kept if s["seq"] >= start] if after <= buffer.newest_seq else kept
        assert page.samples == rest[:limit]
        assert page.more == (len(rest) > limit)
        assert page.gap == (after > buffer.newest_seq or 0 < after < oldest - 1)


def test_a_corrupt_sample_in_the_middle_is_skipped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    buffer = _buffer(tmp_path / "buf")
    for i in range(3):
        buffer.append(_sample(i))
    (segment,) = (tmp_path / "buf").iterdir()
    lines = segment.read_bytes().splitlines(keepends=True)
    segment.write_bytes(lines[0] + b"0" * (len(lines[1]) - 1) + b"\n" + lines[2])  # the disk damaged seq 2
    assert [s["seq"] for s in buffer.page(0, 10).samples] == [1, 3]
    assert buffer.corrupt == 1
    assert any("skipped a corrupt sample" in r.getMessage() for r in caplog.records)
