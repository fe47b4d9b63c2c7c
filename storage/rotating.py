"""An append-only line file rotated by size: ``path``, ``path.1`` ... ``path.N`` (newest backup first).

Guarantees:

* Whole lines only. A batch of lines is written with as few ``write`` calls as fit; when the next line
  would take the live file past ``max_bytes`` the file is rotated first, so no line is ever split across
  files (a single line longer than ``max_bytes`` gets a file of its own).
* No torn line survives. If a write fails half-way the file is truncated back to its previous length;
  if the process dies half-way, the next writer to open the file cuts the torn tail (everything after
  the last newline) before appending, and readers ignore anything after the last newline anyway.
* Durability (``fsync=True``, the default): the live file is fsync'd once per :meth:`append` call (once
  per polling sweep), and before a rotation; the directory is fsync'd after the renames of a rotation.
* ``indexed=True`` keeps a line index beside each file (``NAME.idx``, renamed with it on rotation;
  :mod:`storage.lineindex`), given each line's agent key in :meth:`RotatingFile.append`.
* Files are opened with ``O_NOFOLLOW`` (a symlink planted at the path is refused) and created 0640;
  missing directories are created 0750 (both further narrowed by the umask).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from storage.lineindex import IndexWriter, index_path

log = logging.getLogger(__name__)

FILE_MODE = 0o640
DIR_MODE = 0o750
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
_TAIL_CHUNK = 64 * 1024


def backup_path(path: Path, index: int) -> Path:
    """``path.index`` (``index`` >= 1)."""
    return path.with_name(f"{path.name}.{index}")


def family(path: Path, backup_count: int) -> list[Path]:
    """The live file and its backups that exist, oldest first (``path.N`` ... ``path.1``, ``path``)."""
    paths = [backup_path(path, i) for i in range(backup_count, 0, -1)]
    paths.append(path)
    return [p for p in paths if p.exists()]


def make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents with mode :data:`DIR_MODE`."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for path in reversed(missing):
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            continue


def whole_lines(path: Path) -> bytes:
    """The bytes of ``path`` up to and including its last newline (b"" if it is missing)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return b""
    end = data.rfind(b"\n")
    return data[: end + 1]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RotatingFile:
    """The writer of one rotated line file. Not thread-safe: the owner serialises calls."""

    def __init__(
        self, path: Path, max_bytes: int, backup_count: int, *, fsync: bool = True, indexed: bool = False
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backup_count = backup_count
        self.fsync = fsync
        self._fd: int | None = None
        self._size = 0
        self._index = IndexWriter(path) if indexed else None

    def open(self) -> None:
        """Create the directory and file if needed and cut a torn last line. Raises OSError."""
        make_dirs(self.path.parent)
        self._fd = os.open(self.path, _OPEN_FLAGS, FILE_MODE)
        self._size = os.fstat(self._fd).st_size
        self._cut_torn_tail()
        if self._index is not None:
            self._index.open(self._fd)

    def _cut_torn_tail(self) -> None:
        if self._fd is None or self._size == 0:
            return
        with open(self.path, "rb") as handle:
            handle.seek(self._size - 1)
            if handle.read(1) == b"\n":
                return
            end = self._size
            keep = 0
            while end > 0:
                start = max(0, end - _TAIL_CHUNK)
                handle.seek(start)
                chunk = handle.read(end - start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                end = start
        log.warning("cut a torn last line of %s (%d bytes) left by an interrupted write", self.path, self._size - keep)
        os.ftruncate(self._fd, keep)
        self._size = keep

    def tail(self, limit: int) -> bytes:
        """The whole lines among the last ``limit`` bytes of the live file."""
        if self._size == 0:
            return b""
        with open(self.path, "rb") as handle:
            start = max(0, self._size - limit)
            handle.seek(start)
            data = handle.read(self._size - start)
        if start > 0:
            data = data[data.find(b"\n") + 1 :]
        return data[: data.rfind(b"\n") + 1]

    def _require_fd(self) -> int:
        if self._fd is None:
            raise OSError(f"{self.path} is not open")
        return self._fd

    def append(self, lines: Sequence[bytes], keys: Sequence[int] = ()) -> None:
        """Append ``lines`` (each ending in a newline), rotating between lines as needed. Raises OSError.

        ``keys``: each line's agent key (:func:`storage.lineindex.agent_key`), for an indexed file.
        """
        self._require_fd()
        index = 0
        while index < len(lines):
            room = self.max_bytes - self._size
            first = index
            ends: list[int] = []
            used = 0
            while index < len(lines) and (used + len(lines[index]) <= room or (not ends and self._size == 0)):
                used += len(lines[index])
                ends.append(self._size + used)
                index += 1
            if ends:
                self._write(b"".join(lines[first:index]))
                if self._index is not None:
                    self._index.append(ends, keys[first:index] if keys else [0] * len(ends))
            if index < len(lines):
                self._rotate()
        if self.fsync:
            os.fsync(self._require_fd())

    def _write(self, data: bytes) -> None:
        fd = self._require_fd()
        before = self._size
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError:
            try:
                os.ftruncate(fd, before)
            except OSError:
                log.error("could not cut a partial write from %s; readers will skip it", self.path)
            raise
        self._size = before + len(data)

    def _rotate(self) -> None:
        fd = self._require_fd()
        if self.fsync:
            os.fsync(fd)
        os.close(fd)
        self._fd = None
        if self._index is not None:
            self._index.close()
        oldest = backup_path(self.path, self.backup_count)
        oldest.unlink(missing_ok=True)
        index_path(oldest).unlink(missing_ok=True)
        for i in range(self.backup_count - 1, 0, -1):
            source = backup_path(self.path, i)
            if source.exists():
                os.replace(source, backup_path(self.path, i + 1))
            if index_path(source).exists():
                os.replace(index_path(source), index_path(backup_path(self.path, i + 1)))
        os.replace(self.path, backup_path(self.path, 1))
        if self._index is not None and index_path(self.path).exists():
            os.replace(index_path(self.path), index_path(backup_path(self.path, 1)))
        self._fd = os.open(self.path, _OPEN_FLAGS, FILE_MODE)
        self._size = 0
        if self._index is not None:
            self._index.open(self._fd)
        if self.fsync:
            _fsync_dir(self.path.parent)
        log.info("rotated %s", self.path)

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
