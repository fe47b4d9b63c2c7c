"""Following a log: offsets, rotation mid-read, truncation, rewrites, partial lines, backlogs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secure_agent.probes.logfollow import LogFollower


def append(path: Path, *lines: str, end: str = "\n") -> None:
    with path.open("a") as handle:
        handle.write("".join(line + end for line in lines))


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "auth.log"


def test_reads_only_what_was_appended(log: Path) -> None:
    append(log, "one", "two")
    follower = LogFollower(log)
    assert follower.poll().lines == ("one", "two")
    assert follower.poll().lines == ()
    append(log, "three")
    assert follower.poll().lines == ("three",)
    assert follower.offset == log.stat().st_size


def test_partial_line_waits_for_its_newline(log: Path) -> None:
    follower = LogFollower(log)
    log.write_text("whole\npart")
    assert follower.poll().lines == ("whole",)
    append(log, "ial")
    assert follower.poll().lines == ("partial",)


def test_rotation_mid_read_loses_nothing(log: Path) -> None:
    """Lines written after our last poll, just before logrotate renamed the file, are still read."""
    append(log, "a1", "a2")
    follower = LogFollower(log)
    assert follower.poll().lines == ("a1", "a2")
    append(log, "a3", "a4")  # not yet read...
    log.rename(log.with_name("auth.log.1"))  # ...when the log is rotated
    append(log.with_name("auth.log.1"), "a5")  # sshd still holds the old file for a moment
    poll = follower.poll()
    assert poll.lines == ("a3", "a4", "a5") and not poll.missing  # old file drained; no new file yet
    append(log, "b1", "b2")  # the new file appears
    assert follower.poll().lines == ("b1", "b2")  # read from its start
    append(log, "b3")
    assert follower.poll().lines == ("b3",)


def test_rotation_with_the_new_file_already_there(log: Path) -> None:
    append(log, "a1")
    follower = LogFollower(log)
    follower.poll()
    append(log, "a2", "a3")
    log.rename(log.with_name("auth.log.1"))
    append(log, "b1")
    assert follower.poll().lines == ("a2", "a3", "b1")


def test_rotation_carries_an_unterminated_last_line(log: Path) -> None:
    follower = LogFollower(log)
    log.write_text("a1\nlast-without-newline")
    assert follower.poll().lines == ("a1",)
    log.rename(log.with_name("auth.log.1"))
    append(log, "b1")
    assert follower.poll().lines == ("last-without-newline", "b1")


def test_truncation_starts_over(log: Path) -> None:
    append(log, "x" * 50, "y" * 50)
    follower = LogFollower(log)
    follower.poll()
    log.write_text("")  # copytruncate
    append(log, "after")
    assert follower.poll().lines == ("after",)


def test_rewrite_in_place_to_a_larger_size_is_noticed(log: Path) -> None:
    """copytruncate followed by more writes than we had read: the size alone would not tell."""
    append(log, "old-1", "old-2")
    follower = LogFollower(log)
    follower.poll()
    with log.open("w") as handle:
        handle.write("new-line-number-1\nnew-line-number-2\nnew-line-number-3\n")
    assert follower.poll().lines == ("new-line-number-1", "new-line-number-2", "new-line-number-3")


def test_first_sight_reads_only_the_tail_from_a_line_start(log: Path) -> None:
    append(log, *(f"line-{i:04d}" for i in range(1000)))  # 10 000 bytes
    follower = LogFollower(log, initial_tail=105)
    lines = follower.poll().lines
    assert lines == tuple(f"line-{i:04d}" for i in range(990, 1000))  # line 989, cut at 9895, is dropped


def test_backlog_beyond_max_read_skips_to_the_newest(log: Path) -> None:
    append(log, "start")
    follower = LogFollower(log, max_read=100, initial_tail=100)
    follower.poll()
    append(log, *(f"line-{i:04d}" for i in range(100)))  # 1000 bytes appended
    poll = follower.poll()
    assert poll.skipped == 900
    assert poll.lines == tuple(f"line-{i:04d}" for i in range(91, 100))
    append(log, "next")
    assert follower.poll().lines == ("next",)


def test_overlong_lines_are_dropped_not_split(log: Path) -> None:
    follower = LogFollower(log, max_line=20)
    append(log, "short", "z" * 100, "after")
    assert follower.poll().lines == ("short", "after")
    log.write_text(log.read_text() + "q" * 50)  # an overlong unterminated line, then its end
    follower.poll()
    append(log, "tail-of-q", end="\n")
    append(log, "fine")
    assert follower.poll().lines == ("fine",)


def test_missing_unreadable_and_not_regular(tmp_path: Path) -> None:
    missing = LogFollower(tmp_path / "nope.log").poll()
    assert missing.missing and missing.error is None and missing.lines == ()
    fifo = tmp_path / "fifo.log"
    os.mkfifo(fifo)
    assert LogFollower(fifo).poll().error == "not a regular file"  # and it did not block
    directory = LogFollower(tmp_path).poll()
    assert directory.error == "not a regular file"


def test_close_keeps_the_offset(log: Path) -> None:
    append(log, "one")
    follower = LogFollower(log)
    follower.poll()
    follower.close()
    append(log, "two")
    assert follower.poll().lines == ("two",)


def test_invalid_utf8_is_replaced_not_fatal(log: Path) -> None:
    log.write_bytes(b"ok\n\xff\xfe bad\n")
    assert LogFollower(log).poll().lines == ("ok", "\ufffd\ufffd bad")
