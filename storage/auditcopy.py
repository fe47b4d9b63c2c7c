"""The central copies of the agents' audit logs: where each record goes, and the file backend's copies.

Every backend keeps, per agent, a *current copy* (the agent's records in chain order) and the copies a
chain break closed, which are never written again. Where an :class:`~storage.models.AuditEntry` goes is
decided by :func:`placement` from the hash of the current copy's last record alone:

- an entry with ``new_copy`` starts a new current copy if the copy it closes (``closes``) is the current
  one; otherwise it was applied already (a spool replay) and is skipped;
- any other entry is appended if it follows the current copy's last record (``prev``), else skipped.

So a replayed batch, or the part of it that was stored before a failure, is never stored twice, and a
record is never appended where it does not link.

The file backend (:class:`AuditCopies`) keeps ``<audit_dir>/<agent>.log``, the agent's lines byte for
byte with a newline each, so that ``secure-audit verify`` reads it as it reads the host's log. A closed
copy is renamed ``<agent>.<UTC time of the break>.log`` (``-2``, ``-3`` ... if that name is taken). A new
copy is written as ``.<agent>.new`` and renamed into place after the old one was renamed away, so a crash
in between leaves either the old copy or both, never a mix. Files are 0600 (they name clients), written
with one ``write`` per agent per batch; a torn last line (a crash mid-write) is cut when the copy is next
opened. Appends are not fsync'd (a new copy and its rename are): what a power loss takes from the end of a
copy is fetched again, because the collector goes on from the copy's last record on disk and the agent
keeps a segment for ``audit_rotation.backup_count`` segments after a collector has fetched it. One fsync
per agent per sweep was most of what storing the trail cost (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from storage.models import AuditEntry, AuditTail
from storage.rotating import make_dirs

log = logging.getLogger(__name__)

Placement = Literal["append", "new_copy", "skip"]
COPY_SUFFIX = ".log"
FILE_MODE = 0o600
_TAIL_BYTES = 64 * 1024
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def placement(tail: str | None, entry: AuditEntry) -> Placement:
    """Where ``entry`` goes given the hash of the current copy's last record (None: no copy yet)."""
    if entry.new_copy:
        return "new_copy" if (tail or "") == (entry.closes or "") else "skip"
    return "append" if tail is not None and tail == entry.prev else "skip"


def tail_of(line: bytes | str) -> AuditTail | None:
    """The chain position a stored line ends at (None if it is not a record)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    digest, seq, when = record.get("hash"), record.get("seq"), record.get("time")
    if not isinstance(digest, str) or type(seq) is not int:
        return None
    return AuditTail(digest, seq, when if isinstance(when, str) else "")


def copy_name(agent: str, broke_at: float | None) -> str:
    """``web-01.20260310T032200Z.log``: the name a closed copy is kept under."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(broke_at if broke_at is not None else time.time()))
    return f"{agent}.{stamp}{COPY_SUFFIX}"


class AuditCopies:
    """The file backend's central copies in one directory. Not thread-safe: the store's lock serialises it."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self._tails: dict[str, AuditTail | None] = {}

    def path(self, agent: str) -> Path:
        return self.directory / f"{agent}{COPY_SUFFIX}"

    def _pending(self, agent: str) -> Path:
        return self.directory / f".{agent}.new"

    # -- reading ------------------------------------------------------------------------------------

    def tail(self, agent: str) -> AuditTail | None:
        """The last record of ``agent``'s current copy (None: no copy). Raises OSError."""
        if agent not in self._tails:
            self._tails[agent] = self._load_tail(agent)
        return self._tails[agent]

    def _load_tail(self, agent: str) -> AuditTail | None:
        path, pending = self.path(agent), self._pending(agent)
        if pending.exists():
            if path.exists():
                pending.unlink()  # the old copy was not renamed away yet: the new one starts again
            else:
                os.replace(pending, path)  # it was: finish what a crash interrupted
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            start = max(0, size - _TAIL_BYTES)
            data = os.pread(fd, size - start, start)
            end = data.rfind(b"\n") + 1
            if start + end < size:
                log.warning("%s: cut %d bytes of a torn record at the end", path, size - start - end)
                os.ftruncate(fd, start + end)
        finally:
            os.close(fd)
        lines = data[:end].splitlines()
        return tail_of(lines[-1]) if lines else None

    def read(self, agent: str) -> Iterator[str]:
        """The lines of ``agent``'s current copy, oldest first (none if it has no copy). Raises OSError."""
        try:
            handle = open(self.path(agent), "rb")  # noqa: SIM115 - closed by the generator
        except FileNotFoundError:
            return
        with handle:
            for raw in handle:
                if raw.endswith(b"\n"):
                    yield raw[:-1].decode("ascii", "replace")

    # -- writing ------------------------------------------------------------------------------------

    def write(self, entries: Sequence[AuditEntry]) -> None:
        """Apply ``entries`` (in order) to the copies. Raises OSError; then the cached tails are dropped."""
        by_agent: dict[str, list[AuditEntry]] = {}
        for entry in entries:
            by_agent.setdefault(entry.agent, []).append(entry)
        if not by_agent:
            return
        try:
            make_dirs(self.directory)
            for agent, own in by_agent.items():
                self._write_agent(agent, own)
        except OSError:
            self._tails.clear()  # read again from disk: what a failure left is the truth
            raise

    def _write_agent(self, agent: str, entries: list[AuditEntry]) -> None:
        tail = self.tail(agent)
        lines: list[str] = []
        for entry in entries:
            where = placement(tail.hash if tail is not None else None, entry)
            if where == "skip":
                continue
            if where == "new_copy":
                self._append(agent, lines)
                lines = []
                self._start_copy(agent, entry, closing=tail is not None)
            else:
                lines.append(entry.line)
            tail = AuditTail(entry.hash, entry.seq, entry.time)
        self._append(agent, lines)
        self._tails[agent] = tail

    def _append(self, agent: str, lines: list[str]) -> None:
        if not lines:
            return
        data = "".join(f"{line}\n" for line in lines).encode("ascii", "replace")
        fd = os.open(self.path(agent), _OPEN_FLAGS, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"short write ({written} of {len(data)} bytes)")
            except OSError:
                os.ftruncate(fd, size)  # never leave part of a record behind
                raise
        finally:
            os.close(fd)

    def _start_copy(self, agent: str, entry: AuditEntry, *, closing: bool) -> None:
        path, pending = self.path(agent), self._pending(agent)
        try:
            self._write_new(pending, f"{entry.line}\n".encode("ascii", "replace"))
        except OSError:
            pending.unlink(missing_ok=True)  # never start a copy with a torn record
            raise
        if closing and path.exists():
            kept = self._free_name(copy_name(agent, entry.broke_at))
            os.replace(path, kept)
            log.warning("audit copy of %s closed after a chain break; kept as %s", agent, kept.name)
        os.replace(pending, path)
        if self.fsync:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def _write_new(self, pending: Path, data: bytes) -> None:
        fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a disk that filled mid-record
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _free_name(self, name: str) -> Path:
        candidate = self.directory / name
        stem = name[: -len(COPY_SUFFIX)]
        number = 2
        while candidate.exists():
            candidate = self.directory / f"{stem}-{number}{COPY_SUFFIX}"
            number += 1
        return candidate
