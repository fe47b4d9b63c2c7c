"""``get_audit(after, limit)``: the audit log's records after the one a collector holds, oldest first.

The answer is ``{"records": [line, ...], "more": bool, "gap": bool}`` (docs/protocol.md): each record's
exact JSON line as a string, starting after the record whose ``hash`` is ``after`` (``""``: from the
oldest record still on the host), across rotated segments, at most ``limit`` of them (1..1000) and at
most :data:`MAX_ANSWER_CHARS` characters of XML (so the answer stays well inside the collector's 1 MiB
cap whatever the records hold); ``more`` says whether records follow the last one given. ``gap`` is true
when a non-empty ``after`` is not on the host (any more, or ever): the records then start at the oldest
one it has, and the collector raises its ``audit_chain`` alert.

Finding ``after``
    The segments are read as one snapshot (:meth:`secure_agent.audit.AuditLog.open_segments`, taken
    under the writer's lock: no rotation in between, the live segment cut at a record boundary). Each
    segment has an index in memory (:class:`_Index`): the first 8 bytes of every record's hash and its
    offset, built by reading the segment once and extended as the live one grows; a lookup is a byte
    search of the index, then the line at the candidate offset is checked against the whole hash. So a
    collector that is up to date costs a read of the records written since its last call, and one that
    asks for an unknown hash costs a search of a few bytes per record in memory, never a re-read of the
    log. Indexes are kept per inode (rotated segments keep theirs) and checked against the segment's
    first bytes, so a reused inode is never trusted.

A caller that asks for what follows a record holds every record up to it: the segment holding it is
marked as collected (:meth:`secure_agent.audit.AuditLog.mark_collected`) for the retention rule.
"""

from __future__ import annotations

import os
import re
import threading
from array import array
from dataclasses import dataclass, field
from typing import Any

from pki.auditchain import HASH_PATTERN
from secure_agent.audit import AuditLog, Segment

MAX_LIMIT = 1000
MAX_ANSWER_CHARS = 768 * 1024  # of the answer's XML: records escaped, plus their tags
_READ_BLOCK = 256 * 1024
_HEAD_BYTES = 512  # the first bytes of a segment, to recognise the file an index was built from
_PREFIX = 8  # bytes of each hash kept in the index
_HASH = re.compile(rb'"hash":"([0-9a-f]{64})"')
_STRING_TAGS = len("<value><string></string></value>\n")


class ParamsError(ValueError):
    """The parameters are not ``(after: "" or 64 hex digits, limit: 1..1000)``."""


def check_params(params: tuple[Any, ...]) -> tuple[str, int]:
    if len(params) != 2:
        raise ParamsError("two parameters")
    after, limit = params
    if type(after) is not str or (after and HASH_PATTERN.fullmatch(after) is None):
        raise ParamsError("after")
    if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
        raise ParamsError("limit")
    return after, limit


@dataclass
class _Index:
    head: bytes  # the segment's first bytes when indexed
    size: int = 0  # bytes indexed (whole lines)
    prefixes: bytearray = field(default_factory=bytearray)
    offsets: array[int] = field(default_factory=lambda: array("Q"))

    def extend(self, fd: int, size: int) -> None:
        """Index the whole lines between what is indexed and ``size``."""
        position = self.size  # always at the start of a line
        while position < size:
            chunk = os.pread(fd, min(_READ_BLOCK, size - position), position)
            end = chunk.rfind(b"\n") + 1
            if end == 0:
                break  # a line longer than a block is not a record of ours: index no further
            at = 0
            while at < end:
                stop = chunk.index(b"\n", at) + 1
                match = _HASH.search(chunk, at, stop)
                self.prefixes += bytes.fromhex(match.group(1)[: 2 * _PREFIX].decode()) if match else bytes(_PREFIX)
                self.offsets.append(position + at)
                at = stop
            position += end
        self.size = position

    def find(self, digest: str) -> list[int]:
        """Record numbers whose hash starts like ``digest``'s (candidates, to be checked)."""
        wanted = bytes.fromhex(digest[: 2 * _PREFIX])
        found: list[int] = []
        at = self.prefixes.find(wanted)
        while at >= 0:
            if at % _PREFIX == 0:
                found.append(at // _PREFIX)
            at = self.prefixes.find(wanted, at + 1)
        return found

    def end_of(self, number: int) -> int:
        return self.offsets[number + 1] if number + 1 < len(self.offsets) else self.size


def _escaped_size(line: str) -> int:
    """Characters of ``line`` as an XML-RPC string value (``&``, ``<`` and ``>`` escaped)."""
    return len(line) + 4 * line.count("&") + 3 * (line.count("<") + line.count(">")) + _STRING_TAGS


class AuditReader:
    """Answers ``get_audit`` from the segments of one :class:`AuditLog`. Thread-safe."""

    def __init__(self, audit: AuditLog) -> None:
        self._audit = audit
        self._indexes: dict[int, _Index] = {}
        self._lock = threading.Lock()  # one reader at a time: the indexes are shared

    def get_audit(self, after: str, limit: int) -> dict[str, Any]:
        segments = self._audit.open_segments()
        try:
            with self._lock:
                return self._answer(segments, after, limit)
        finally:
            for segment in segments:
                os.close(segment.fd)

    def _answer(self, segments: list[Segment], after: str, limit: int) -> dict[str, Any]:
        self._forget(segments)
        start, gap = (0, 0), False
        if after:
            found = self._locate(segments, after)
            if found is None:
                gap = True
            else:
                start = found
                self._audit.mark_collected(segments[found[0]].inode)
        records, position = self._read(segments, start, limit)
        return {"records": records, "more": self._more(segments, position), "gap": gap}

    def _forget(self, segments: list[Segment]) -> None:
        """Drop the indexes of segments that are gone (retention deleted them)."""
        alive = {segment.inode for segment in segments}
        for inode in [inode for inode in self._indexes if inode not in alive]:
            del self._indexes[inode]

    def _index(self, segment: Segment) -> _Index:
        head = os.pread(segment.fd, min(_HEAD_BYTES, segment.size), 0)
        index = self._indexes.get(segment.inode)
        if index is None or index.head != head[: len(index.head)] or index.size > segment.size:
            index = _Index(head)  # new, or another file under a reused inode, or cut since: index anew
            self._indexes[segment.inode] = index
        elif len(index.head) < len(head):
            index.head = head
        if index.size < segment.size:
            index.extend(segment.fd, segment.size)
        return index

    def _locate(self, segments: list[Segment], after: str) -> tuple[int, int] | None:
        """(segment position, offset) just after the record whose hash is ``after``; newest segment first."""
        needle = f'"hash":"{after}"'.encode("ascii")
        for position in range(len(segments) - 1, -1, -1):
            segment = segments[position]
            index = self._index(segment)
            for number in index.find(after):
                start, end = index.offsets[number], index.end_of(number)
                if needle in os.pread(segment.fd, end - start, start):
                    return position, end
        return None

    def _read(self, segments: list[Segment], start: tuple[int, int], limit: int) -> tuple[list[str], tuple[int, int]]:
        """Up to ``limit`` lines from ``start`` on, within the answer's size; and where reading stopped."""
        records: list[str] = []
        budget = MAX_ANSWER_CHARS
        position, offset = start
        while position < len(segments) and len(records) < limit:
            segment = segments[position]
            if offset >= segment.size:
                position, offset = position + 1, 0
                continue
            chunk = os.pread(segment.fd, min(_READ_BLOCK, segment.size - offset), offset)
            end = chunk.rfind(b"\n") + 1
            if end == 0:  # a line longer than a block: not one of ours; serve nothing past it
                return records, (len(segments), 0)
            for raw in chunk[:end].split(b"\n")[:-1]:
                line = raw.decode("ascii", "replace")
                if not line.isprintable():  # not one of ours (control characters are escaped in records)
                    line = "".join(ch if ch.isprintable() else "?" for ch in line)
                cost = _escaped_size(line)
                if len(records) >= limit or (cost > budget and records):
                    return records, (position, offset)
                records.append(line)
                budget -= cost
                offset += len(raw) + 1
        return records, (position, offset)

    @staticmethod
    def _more(segments: list[Segment], position: tuple[int, int]) -> bool:
        index, offset = position
        if index >= len(segments):
            return False
        if offset < segments[index].size:
            return True
        return any(segment.size > 0 for segment in segments[index + 1 :])
