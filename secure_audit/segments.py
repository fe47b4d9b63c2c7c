"""Verifying an audit log kept in several segments: ``audit.log.N`` ... ``audit.log.1``, ``audit.log``.

A segment is a file of sealed records (:mod:`secure_agent.audit`). The agent rotates between two
records, so the first record of a new segment carries ``prev`` = the hash of the last record of the
segment before, and it is a ``rotate`` record. The chain therefore runs through all segments:

- the first segment given starts either at the genesis hash (the log's very beginning) or with a
  ``rotate`` record (it continues an older segment that was archived or removed by retention: the
  report says from which hash, so archived segments can be tied to it). Anything else means records
  were cut from its start, and is reported as broken;
- every later segment must start with ``prev`` = the last hash of the one before it, or a segment
  is missing, out of order, or was replaced;
- inside a segment, :func:`secure_agent.audit.verify_lines` checks every record.

Segments may be gzip-compressed (``.gz``): archives often are. Reading is line by line with the
writer's line cap, so a huge or hostile file costs time, never memory.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from pki.auditchain import GENESIS, MAX_LINE, ROTATE_EVENT, verify_lines

_MAX_SEGMENTS = 100_000


class UnreadableSegment(Exception):
    """A segment cannot be read (missing, unreadable, a broken gzip stream); the message names it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: cannot read: {reason}")
        self.path = path


def _reason(exc: BaseException) -> str:
    if isinstance(exc, gzip.BadGzipFile | EOFError):
        return "not a complete gzip file"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class Segment(NamedTuple):
    path: Path
    records: int
    last_hash: str


class ChainVerdict(NamedTuple):
    ok: bool
    segments: tuple[Segment, ...]  # the intact ones, in order
    start: str  # prev of the very first record: GENESIS, or the hash an older segment ended with
    last_hash: str
    bad_path: Path | None = None
    bad_line: int | None = None
    problem: str | None = None
    partial: int = 0  # intact records of the broken segment, before its bad line

    @property
    def records(self) -> int:
        """Intact records: those of the intact segments, and those of a broken one before its bad line."""
        return sum(segment.records for segment in self.segments) + self.partial


def rotated_segments(path: Path) -> list[Path]:
    """``path.N`` ... ``path.1`` (those that exist, oldest first) followed by ``path`` itself.

    A compressed backup (``path.N.gz``) takes the place of ``path.N``. A ``path`` that is a symlink is
    followed first: the agent refuses a symlinked log, so its segments are beside the real file (beside the
    link, none would be found and their records would pass as rotated away). Raises OSError if the
    directory cannot be listed.
    """
    if path.is_symlink():
        path = path.resolve()
    pattern = re.compile(rf"^{re.escape(path.name)}\.([1-9][0-9]{{0,5}})(\.gz)?$")
    numbered: dict[int, Path] = {}
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match is not None:
            numbered.setdefault(int(match.group(1)), entry)
    return [numbered[number] for number in sorted(numbered, reverse=True)] + [path]


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # GzipFile is a BufferedIOBase: readline with a cap works
    return open(path, "rb")


def _lines(handle: gzip.GzipFile | io.BufferedReader) -> Iterator[bytes]:
    return iter(lambda: handle.readline(MAX_LINE + 2), b"")


def _first_record(path: Path) -> dict[str, object] | None:
    with _open(path) as handle:
        line = handle.readline(MAX_LINE + 2)
    try:
        record = json.loads(line) if line else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _start_of(path: Path) -> str | None:
    """Where the chain of the first segment given starts, or None if it starts nowhere legitimate."""
    record = _first_record(path)
    if record is None:  # empty, or a first line that verify_lines will name
        return GENESIS
    prev = record.get("prev")
    if prev == GENESIS:
        return GENESIS
    if record.get("event") == ROTATE_EVENT and isinstance(prev, str):
        return prev
    return None


def verify_segments(paths: Sequence[Path]) -> ChainVerdict:
    """Verify ``paths`` (oldest first) as one chain. Raises :class:`UnreadableSegment` naming the file."""
    if not paths or len(paths) > _MAX_SEGMENTS:
        raise ValueError(f"give between 1 and {_MAX_SEGMENTS} segments")
    try:
        start = _start_of(paths[0])
    except (OSError, EOFError) as exc:
        raise UnreadableSegment(paths[0], _reason(exc)) from exc
    if start is None:
        problem = "does not start a chain: its first record follows a record that is not there (records cut)"
        return ChainVerdict(False, (), GENESIS, GENESIS, paths[0], 1, problem)
    intact: list[Segment] = []
    prev = start
    for index, path in enumerate(paths):
        try:
            with _open(path) as handle:
                verdict = verify_lines(_lines(handle), prev)
        except (OSError, EOFError) as exc:
            raise UnreadableSegment(path, _reason(exc)) from exc
        if not verdict.ok:
            problem = verdict.problem or "broken"
            if verdict.bad_line == 1 and index > 0 and "does not follow" in problem:
                problem = f"does not follow {paths[index - 1]} (a segment is missing, out of order or replaced)"
            return ChainVerdict(
                False, tuple(intact), start, verdict.last_hash, path, verdict.bad_line, problem, verdict.records
            )
        intact.append(Segment(path, verdict.records, verdict.last_hash))
        prev = verdict.last_hash
    return ChainVerdict(True, tuple(intact), start, prev)
