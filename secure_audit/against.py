"""Checking a host's audit log against the collector's central copy (``secure-audit verify HOST --against``).

The host's log is read as one chain from its oldest segment to the live file; the central copy (a file the
collector wrote, or its MySQL rows) is read in order. Both are streamed, so neither is held in memory.

Alignment
    The host's oldest record ``h0`` is placed in the central copy: at the central record it is (same hash),
    right after the central record it follows (``h0.prev``), or at the central copy's start when both follow
    the same record (the genesis hash, or the same older segment). Central records before that point are
    older than the host's oldest segment: rotated away, not missing, because that segment links to the
    central copy. A host whose oldest record links to no central record does not hold the central copy.

Comparison
    From there every central record must be on the host, in order, byte for byte. The first one that is not
    is named: *lacks* (the host's chain goes on without it: a cut tail, a deleted segment) or *holds it
    differently* (the host has another record in its place: an edit, a rewritten chain). Records on the host
    after the central copy's last are newer than the copy: fine. An empty host log whose central copy has
    records lacks the first of them.

Then the host's own chain is verified (:func:`secure_audit.segments.verify_segments`): a copy can match
while the host log is broken after it.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from pki.auditchain import MAX_LINE


class Place(NamedTuple):
    """A record and where it is, for messages."""

    where: str  # "FILE line N" or "central record N"
    line: str
    hash: str
    prev: str
    text: str  # "seq 12 (time, hash 1a2b...)"


class Comparison(NamedTuple):
    ok: bool
    problem: str | None = None
    central: int = 0  # central records read
    rotated: int = 0  # central records older than the host's oldest segment
    matched: int = 0  # central records found on the host
    empty_host: bool = False


def _place(where: str, line: str) -> Place:
    try:
        record = json.loads(line)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        return Place(where, line, "", "", "a line that is not a record")
    digest, prev, seq, when = record.get("hash"), record.get("prev"), record.get("seq"), record.get("time")
    digest = digest if isinstance(digest, str) else ""
    text = f"seq {seq} ({when if isinstance(when, str) else 'no time'}, hash {digest[:16]})"
    return Place(where, line, digest, prev if isinstance(prev, str) else "", text)


def _open(path: Path) -> gzip.GzipFile | io.BufferedReader:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def host_records(segments: Sequence[Path]) -> Iterator[Place]:
    """Every line of the host's segments, oldest first. Raises OSError (and EOFError for broken gzip)."""
    for path in segments:
        with _open(path) as handle:
            for number, raw in enumerate(iter(lambda: handle.readline(MAX_LINE + 2), b""), start=1):
                line = raw.decode("ascii", "replace").rstrip("\n")
                yield _place(f"{path} line {number}", line)


def central_records(lines: Iterable[str]) -> Iterator[Place]:
    for number, line in enumerate(lines, start=1):
        yield _place(f"central record {number}", line)


def compare(host: Iterator[Place], central: Iterator[Place]) -> Comparison:
    """Does ``host`` hold every record of ``central`` unchanged (module docstring)?"""
    first = next(host, None)
    head = next(central, None)
    if head is None:
        return Comparison(True)
    if first is None:
        problem = f"the host's log holds no record; the central copy does, the first is {head.text}"
        return Comparison(False, problem, central=1, empty_host=True)
    read, rotated = 1, 0
    current: Place | None = head
    if head.prev != first.prev:  # not the same start: find where the host's oldest record sits
        while current is not None and current.hash not in (first.hash, first.prev):
            rotated += 1
            current = next(central, None)
            read += current is not None
        if current is None:
            problem = (
                f"the host's oldest record ({first.where}: {first.text}) follows no record of the central copy: "
                f"the host lacks the central copy's first record, {head.text}"
            )
            return Comparison(False, problem, central=read)
        if current.hash == first.prev:  # the host's oldest segment starts right after it
            rotated += 1
            current = next(central, None)
            read += current is not None
    matched = 0
    on_host: Place | None = first
    while current is not None:
        if on_host is None:
            problem = (
                f"the host lacks {current.text} ({current.where}) and every central record after it: "
                "its log ends before them (cut tail?)"
            )
            return Comparison(False, problem, read, rotated, matched)
        if on_host.line != current.line:
            if current.prev and on_host.prev == current.prev:
                what = f"holds {current.text} ({current.where}) differently: {on_host.where} is {on_host.text}"
            else:
                what = f"lacks {current.text} ({current.where}): in its place {on_host.where} is {on_host.text}"
            return Comparison(False, f"the host {what}", read, rotated, matched)
        matched += 1
        current = next(central, None)
        read += current is not None
        on_host = next(host, None)
    return Comparison(True, None, read, rotated, matched)
