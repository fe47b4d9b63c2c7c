"""Reading an audit log file's end: where appending goes on, what a torn write left, and ``--check``.

A file ends with a whole record and its newline. Bytes after the last newline (at most one record's
worth, then any number of zero bytes, which a power loss leaves where unsynced records were to go) are a
record a crash or a full disk cut short: :func:`read_tail` reports them so that the writer
cuts them (and records that it did) instead of refusing to start. Anything else at the end (a last line
that is not one of our sealed records, or more than a record's worth of bytes without a newline) is
refused: that is not a torn write.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import NamedTuple

from pki.auditchain import GENESIS, MAX_LINE, Verdict, parse_timestamp, record_hash, verify_lines
from secure_agent.errors import AuditError

_TAIL_BYTES = MAX_LINE + 1
_ZERO_BLOCK = 1024 * 1024


def open_regular(path: Path) -> int:
    """A descriptor open for reading on ``path``, which must be a regular file, not a link. Raises OSError
    (FileNotFoundError when there is none).

    Opened non-blocking: a FIFO (or a device) planted under a segment's name would otherwise block the open
    until a writer came, with the caller holding the audit log's lock (every call's record waits on it).
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def verify_file(path: Path, prev: str = GENESIS) -> Verdict:
    """Verify an audit file, reading it line by line (bounded line length). Raises OSError."""
    with os.fdopen(open_regular(path), "rb") as handle:
        return verify_lines(iter(lambda: handle.readline(MAX_LINE + 2), b""), prev)


class Tail(NamedTuple):
    prev: str
    seq: int
    time: float | None
    size: int  # bytes up to and including the last whole record
    torn: int  # bytes after it (a record a crash or a full disk cut short), to be cut


def _end_of_data(fd: int, size: int) -> int:
    """``size`` less the zero bytes at the end: what a power loss leaves where unsynced data was to go (the new
    size on disk, the data not). No record holds a zero byte."""
    end = size
    while end > 0:
        start = max(0, end - _ZERO_BLOCK)
        kept = len(os.pread(fd, end - start, start).rstrip(b"\0"))
        if kept:
            return start + kept
        end = start
    return 0


def read_tail(fd: int, size: int) -> Tail:
    """Where to go on appending to a file of ``size`` bytes open for reading at ``fd``.

    Bytes after the last newline (at most one record's worth, then any number of zero bytes) are a torn
    write: reported in ``torn``.
    """
    data_end = _end_of_data(fd, size)
    tail = _read_tail(fd, data_end)
    return tail._replace(torn=tail.torn + size - data_end)


def _read_tail(fd: int, size: int) -> Tail:
    if size == 0:
        return Tail(GENESIS, 0, None, 0, 0)
    start = max(0, size - 2 * _TAIL_BYTES)
    data = os.pread(fd, size - start, start)
    end = data.rfind(b"\n") + 1  # 0: no newline in what was read
    torn = len(data) - end
    if torn > MAX_LINE:
        raise ValueError("does not end with a complete record, and what follows the last one is not one of ours")
    if end == 0:
        if start > 0:
            raise ValueError("last record is too long")
        return Tail(GENESIS, 0, None, 0, torn)  # nothing but a torn first record
    lines = data[: end - 1].split(b"\n")
    if start > 0 and len(lines) < 2:
        raise ValueError("last record is too long")
    last = lines[-1]
    try:
        record = json.loads(last)
    except ValueError:
        raise ValueError("last record is not JSON") from None
    if not isinstance(record, dict) or type(record.get("seq")) is not int or record_hash(record) != record.get("hash"):
        raise ValueError("last record is not a sealed audit record")
    return Tail(str(record["hash"]), int(record["seq"]) + 1, parse_timestamp(record.get("time")), start + end, torn)


def check_directory(directory: Path) -> None:
    """The audit log's directory must be writable by no one but us (or root): whoever can write there can
    delete segments no collector has fetched, or plant ``audit.log.N`` files that ``get_audit`` would serve
    as our records. Raises :class:`AuditError` naming it; OSError when it cannot be read."""
    info = os.stat(directory)
    if info.st_mode & 0o022:
        raise AuditError(
            f"{directory}: the audit log's directory is writable by group or others, who could delete or plant "
            "segments; make it 0700 (chmod go-w)"
        )
    if info.st_uid not in (0, os.geteuid()):
        raise AuditError(f"{directory}: the audit log's directory belongs to another user (uid {info.st_uid})")


def check_audit_path(path: Path) -> None:
    """Could an audit log be kept at ``path``? Checks without creating or changing anything.

    A torn last record is fine (the agent cuts it at start). Raises :class:`AuditError` naming the file.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise AuditError(f"{path}: cannot create the audit log: {parent} is not writable") from None
        if parent == path.parent:
            check_directory(parent)
        return
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise AuditError(f"{path}: the audit log must be a regular file")
    try:
        check_directory(path.parent)
        fd = open_regular(path)
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from exc
    try:
        read_tail(fd, info.st_size)
    except ValueError as exc:
        raise AuditError(f"{path}: {exc}; check it with secure-audit verify and move it aside") from exc
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if not os.access(path, os.W_OK):
        raise AuditError(f"{path}: the audit log is not writable")


class Segment(NamedTuple):
    """One segment of the log opened for reading (:meth:`AuditLog.open_segments`); the caller closes ``fd``."""

    number: int  # 0: the live one
    fd: int
    inode: int
    size: int  # bytes of whole records (for the live one: as of the snapshot)
