"""The audit log as the durable replay cache: the nonces of accepted tokens, read back at start.

The verifier's replay cache lives in memory and the start floor does not cover a token dated *ahead* of
the agent's clock, so every ``call`` record carries its token's ``ts`` and ``nonce`` and
:func:`recorded_tokens` reads back those that could still be accepted. The search runs backwards from the
newest record and stops at the first record too old to matter (record times never decrease along the log),
within :data:`MAX_PRELOAD_BYTES`. It fails closed: when it cannot reach such a record (the byte cap, a
missing or unreadable segment), :meth:`Preload.floor` refuses every token the unread records could hold.
docs/audit-log.md gives the reasoning in full.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

from pki.auditchain import GENESIS, MAX_LINE, parse_timestamp
from secure_agent.audit_file import open_regular
from secure_agent.audit_record import utc_timestamp
from secure_agent.audit_rotation import COMPRESSED_SUFFIX, segment_path

logger = logging.getLogger(__name__)

MAX_PRELOAD_BYTES = 64 * 1024 * 1024
_BLOCK = 1024 * 1024
# Records are canonical JSON: a '"' inside a string value is always escaped as '\"', so these byte
# patterns can only match our own keys, never text a client chose.
_TIME = re.compile(rb'"time":"([0-9T:.Z-]{27})"')
_CALL = b'"event":"call"'
_NONCE = b'"nonce":"'
_CHAIN_START = b'"prev":"' + GENESIS.encode("ascii") + b'"'


class RecordedToken(NamedTuple):
    key_id: str
    nonce: str
    ts: int


class Preload(NamedTuple):
    tokens: tuple[RecordedToken, ...]  # the accepted tokens whose ts is still inside the window
    complete: bool  # every record that could hold such a token was read
    oldest: float | None  # time of the oldest record read (None: none was)
    bytes_read: int
    stopped_by: str  # why reading stopped, for the log

    def floor(self, window: int, now: float) -> float | None:
        """The lowest token ``ts`` to accept so that records not read cannot be replayed; None if all were read."""
        if self.complete:
            return None
        since = now if self.oldest is None else self.oldest
        return float(math.floor(since) + window + 1)


class _Step(enum.Enum):
    DONE = "done"  # reached a record older than the window, or the start of the chain
    OLDER = "older"  # reached the start of the segment: go on with the one before it
    EXHAUSTED = "exhausted"  # read max_bytes
    BAD_LINE = "bad_line"  # a line longer than any record we write: not ours, stop


def _token(line: bytes) -> RecordedToken | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != "call":
        return None
    key_id, nonce, ts = record.get("key_id"), record.get("nonce"), record.get("ts")
    if isinstance(key_id, str) and isinstance(nonce, str) and type(ts) is int:
        return RecordedToken(key_id, nonce, ts)
    return None


class _Scan:
    def __init__(self, now: float, window: int, max_bytes: int) -> None:
        self.cutoff = utc_timestamp(now - 2 * window).encode("ascii")
        self.first_ts = now - window
        self.budget = max_bytes
        self.bytes_read = 0
        self.oldest: bytes | None = None
        self.tokens: list[RecordedToken] = []
        self.lines_seen = 0

    def result(self, complete: bool, stopped_by: str) -> Preload:
        oldest = parse_timestamp(self.oldest.decode("ascii")) if self.oldest is not None else None
        return Preload(tuple(self.tokens), complete, oldest, self.bytes_read, stopped_by)

    def line(self, line: bytes) -> bool:
        """Take one record (newest first); True when nothing older can matter."""
        self.lines_seen += 1
        match = _TIME.search(line)
        if match is not None:
            if match.group(1) < self.cutoff:  # fixed-width UTC times compare as strings
                return True
            self.oldest = match.group(1)
        if _CALL in line and _NONCE in line:
            token = _token(line)
            if token is not None and token.ts >= self.first_ts:
                self.tokens.append(token)
        return _CHAIN_START in line

    def segment(self, fd: int, size: int) -> _Step:
        """Read one segment from its end backwards, in blocks, within the byte budget. Raises OSError."""
        end, carry = size, b""
        while end > 0:
            if self.budget <= 0:
                return _Step.EXHAUSTED
            start = max(0, end - min(_BLOCK, self.budget))
            chunk = os.pread(fd, end - start, start)
            if len(chunk) != end - start:
                raise OSError(f"short read ({len(chunk)} of {end - start} bytes)")
            self.budget -= len(chunk)
            self.bytes_read += len(chunk)
            end = start
            lines = (chunk + carry).split(b"\n")
            carry = lines.pop(0) if start > 0 else b""  # the start of a line that began in the block before
            if len(carry) > MAX_LINE:
                return _Step.BAD_LINE
            for line in reversed(lines):
                if line and self.line(line):
                    return _Step.DONE
        return _Step.OLDER


def _open_segment(path: Path) -> tuple[int, int] | None:
    """(fd, size) of a plain regular segment, or None if there is none. Raises OSError."""
    try:
        fd = open_regular(path)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
    except OSError:
        os.close(fd)
        raise
    return fd, size


def recorded_tokens(
    path: Path, *, now: float, window: int, backup_count: int, max_bytes: int = MAX_PRELOAD_BYTES
) -> Preload:
    """The tokens accepted within the window before ``now``, from the audit log at ``path`` and its segments.

    Never raises for what it finds on disk: a segment it cannot read ends the search, incomplete.
    """
    scan = _Scan(now, window, max_bytes)
    for number in range(backup_count + 1):
        segment = path if number == 0 else segment_path(path, number)
        try:
            opened = _open_segment(segment)
            if opened is None:
                compressed = segment.with_name(segment.name + COMPRESSED_SUFFIX)
                # No record at all (a new log, nothing ever accepted under it) is complete; a missing
                # segment after some records is history that cannot be read (retention, moved away).
                missing = "compressed" if compressed.exists() else "missing"
                return scan.result(scan.lines_seen == 0 and missing == "missing", f"{segment}: {missing}")
            fd, size = opened
            try:
                step = scan.segment(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            return scan.result(False, f"{segment}: cannot read: {exc.strerror or exc}")
        if step is not _Step.OLDER:
            return scan.result(step is _Step.DONE, f"{segment}: {step.value}")
    return scan.result(False, f"no segment beyond .{backup_count} and no start of the chain")
