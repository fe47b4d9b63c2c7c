"""Follow a growing log file from a saved offset, across rotation and truncation, at bounded cost.

A :class:`LogFollower` keeps its file open between polls and remembers the offset it has read to, so a
poll reads only what was appended since, however large the file. It notices:

- **rotation** (the path now names another inode): it first reads what is left of the old file through
  the descriptor it still holds, then opens the new file from its start;
- **truncation or rewrite** (the file is shorter than the offset, or the bytes just before the offset are
  no longer the ones it read): it starts again from the beginning;
- **a backlog** larger than ``max_read``: it skips to the newest ``max_read`` bytes (the recent lines are
  the ones a time window needs) and counts what it skipped.

On first sight of a file it reads only the last ``initial_tail`` bytes. Partial last lines wait for
their newline; lines longer than ``max_line`` are dropped. Not thread-safe: one scanner owns it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NamedTuple

MAX_READ = 8 * 1024 * 1024
INITIAL_TAIL = 1024 * 1024
MAX_LINE = 8192
CHUNK = 1024 * 1024
MARK = 64
"""Bytes before the offset remembered to recognise a file rewritten in place (copytruncate and growth)."""


class Poll(NamedTuple):
    lines: tuple[str, ...]
    error: str | None  # why the path could not be read this time (None also when it was merely quiet)
    skipped: int  # bytes skipped because the backlog exceeded max_read
    missing: bool  # the path does not exist (and no older file of it is open)


def _pread(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows has no pread; one scanner owns the descriptor
    return os.read(fd, size)


def _describe(exc: OSError) -> str:
    if exc.errno in {errno.EACCES, errno.EPERM}:
        return "permission denied"
    return exc.strerror or errno.errorcode.get(exc.errno or 0, "error")


class LogFollower:
    def __init__(
        self,
        path: Path,
        *,
        max_read: int = MAX_READ,
        initial_tail: int = INITIAL_TAIL,
        max_line: int = MAX_LINE,
    ) -> None:
        self.path = path
        self._max_read = max_read
        self._initial_tail = min(initial_tail, max_read)
        self._max_line = max_line
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._mark = b""
        self._pending = b""
        self._resync = False  # drop bytes up to the next newline (we landed mid-line)
        self._seen_before = False

    @property
    def offset(self) -> int:
        return self._offset

    def close(self) -> None:
        """Close the descriptor; the offset is kept, so a later poll of the same file resumes there."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def poll(self) -> Poll:
        """Every complete line appended since the last poll (within ``max_read`` bytes)."""
        lines: list[str] = []
        budget = self._max_read
        skipped = 0
        if self._fd is not None:
            budget, skipped = self._drain(lines, budget, skipped)
        try:
            path_stat = os.stat(self.path)
        except FileNotFoundError:
            # rotated away and not yet recreated: keep the old descriptor for what it still gets
            return Poll(tuple(lines), None, skipped, self._fd is None)
        except OSError as exc:
            return Poll(tuple(lines), _describe(exc), skipped, False)
        if self._fd is not None and (path_stat.st_dev, path_stat.st_ino) == self._identity:
            return Poll(tuple(lines), None, skipped, False)
        error = self._switch(lines)
        if error is None:
            budget, skipped = self._drain(lines, budget, skipped)
        return Poll(tuple(lines), error, skipped, False)

    def _switch(self, lines: list[str]) -> str | None:
        """Open the file now at the path: the same one again (after :meth:`close`), or a new one."""
        self.close()
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
        try:
            fd = os.open(self.path, flags)
        except OSError as exc:
            return _describe(exc)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return "not a regular file"
        identity = (info.st_dev, info.st_ino)
        if identity != self._identity:
            if self._pending and not self._resync:
                self._emit(self._pending, lines)  # the old file's unterminated last line
            self._pending, self._mark, self._resync = b"", b"", False
            if self._seen_before:
                self._offset = 0  # a rotated-in file: all of it is new
            else:
                self._offset = max(0, info.st_size - self._initial_tail)
                self._resync = self._offset > 0
                self._seen_before = True
        self._fd, self._identity = fd, identity
        return None

    def _rewritten(self, fd: int, size: int) -> bool:
        if size < self._offset:
            return True
        if not self._mark:
            return False
        return _pread(fd, len(self._mark), self._offset - len(self._mark)) != self._mark

    def _drain(self, lines: list[str], budget: int, skipped: int) -> tuple[int, int]:
        """Read the open file from the offset to its end, within ``budget`` bytes."""
        fd = self._fd
        if fd is None:
            return budget, skipped
        try:
            size = os.fstat(fd).st_size
            if self._rewritten(fd, size):
                self._offset, self._mark, self._pending, self._resync = 0, b"", b"", False
            backlog = size - self._offset
            if backlog > budget:
                skipped += backlog - budget
                self._offset, self._mark, self._pending, self._resync = size - budget, b"", b"", True
            while self._offset < size and budget > 0:
                data = _pread(fd, min(CHUNK, size - self._offset, budget), self._offset)
                if not data:
                    break
                self._offset += len(data)
                budget -= len(data)
                self._mark = (self._mark + data)[-MARK:]
                self._split(data, lines)
        except OSError:
            self.close()  # the descriptor went bad: reopen next poll, resuming at the offset if it is the same file
        return budget, skipped

    def _split(self, data: bytes, lines: list[str]) -> None:
        parts = (self._pending + data).split(b"\n")
        self._pending = parts.pop()
        for part in parts:
            if self._resync:
                self._resync = False  # the first piece is the tail of a line we did not see start
                continue
            self._emit(part, lines)
        if len(self._pending) > self._max_line:
            self._pending, self._resync = b"", True

    def _emit(self, raw: bytes, lines: list[str]) -> None:
        if len(raw) <= self._max_line:
            lines.append(raw.decode("utf-8", "replace"))
