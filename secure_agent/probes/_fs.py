"""Bounded reads of small kernel files (procfs, sysfs) under a root the caller gives.

Every probe reads through these helpers so that a fixture tree can stand in for ``/proc`` or ``/sys``
and so that no read is unbounded: a procfs file that is unexpectedly huge is cut, not slurped.
Errors are returned to the caller as ``OSError`` for it to classify; nothing here logs.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

SMALL_FILE = 64 * 1024
"""Upper bound for the kernel files we parse (/proc/stat on a 1024-core host is ~150 KiB: see LARGE_FILE)."""

LARGE_FILE = 4 * 1024 * 1024
"""Upper bound for files that grow with the host (/proc/stat, /proc/net/tcp, /proc/mounts)."""

# O_NONBLOCK: a FIFO planted where a sysfs/procfs file is expected must not block the probe.
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def read_bytes(path: str | Path, limit: int = SMALL_FILE) -> bytes:
    """Read at most ``limit`` bytes of ``path`` (raises ``OSError``)."""
    fd = os.open(path, _READ_FLAGS)
    try:
        return _read_fd(fd, limit)
    finally:
        os.close(fd)


def _read_fd(fd: int, limit: int) -> bytes:
    """Read ``fd`` from where it stands to its end, at most ``limit`` bytes."""
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_text(path: str | Path, limit: int = SMALL_FILE) -> str:
    """Read at most ``limit`` bytes of ``path`` as text; undecodable bytes are kept as surrogates."""
    return read_bytes(path, limit).decode("utf-8", "surrogateescape")


# -- procfs files read on every call, kept open ----------------------------------------------------

MAX_KEPT = 8
_kept: OrderedDict[str, int] = OrderedDict()  # path -> fd of a procfs file, least recently used first
_kept_lock = threading.Lock()  # held around every read of a kept fd, so none is closed under a reader
_procfs_device: int | None = None


def _on_procfs(fd: int) -> bool:
    """True if ``fd`` is a file of the procfs mounted at /proc (same device as ``/proc/self``)."""
    global _procfs_device
    if _procfs_device is None:
        try:
            _procfs_device = os.stat("/proc/self").st_dev
        except OSError:
            _procfs_device = -1
    return os.fstat(fd).st_dev == _procfs_device


def _pread_whole(fd: int, limit: int) -> bytes:
    """The file from its start, at most ``limit`` bytes. A short read is its end: procfs generates a
    ``single_open`` file whole on each read from offset 0 and returns all of it that fits."""
    chunks: list[bytes] = []
    offset = 0
    while offset < limit:
        want = min(limit - offset, 65536)
        chunk = os.pread(fd, want, offset)
        chunks.append(chunk)
        offset += len(chunk)
        if len(chunk) < want:
            break
    return b"".join(chunks)


def read_kernel_text(path: str) -> str:
    """:func:`read_text` (up to :data:`LARGE_FILE`) for a file read on every call, such as /proc/stat.

    A file of the real procfs is kept open and read again from its start with ``pread``, a fraction of
    the cost of ``open``, ``read``, ``read``, ``close`` (docs/benchmarks.md). Its content is generated
    anew by the kernel on each read, so nothing is stale.
    Anything else (a fixture tree, a FIFO planted in one) is read afresh each time, as
    :func:`read_text` does. At most :data:`MAX_KEPT` files stay open.
    """
    with _kept_lock:
        fd = _kept.get(path)
        if fd is not None:
            try:
                data = _pread_whole(fd, LARGE_FILE)
            except OSError:
                del _kept[path]
                os.close(fd)
            else:
                _kept.move_to_end(path)
                return data.decode("utf-8", "surrogateescape")
    fd = os.open(path, _READ_FLAGS)
    try:
        kept = _on_procfs(fd)
        data = _pread_whole(fd, LARGE_FILE) if kept else _read_fd(fd, LARGE_FILE)
    except BaseException:
        os.close(fd)
        raise
    if not kept:  # a fixture tree or anything else: read afresh next time
        os.close(fd)
        return data.decode("utf-8", "surrogateescape")
    with _kept_lock:
        if path in _kept:  # another thread kept it meanwhile
            os.close(fd)
        else:
            _kept[path] = fd
            while len(_kept) > MAX_KEPT:
                os.close(_kept.popitem(last=False)[1])
    return data.decode("utf-8", "surrogateescape")


def read_optional(path: str | Path, limit: int = SMALL_FILE) -> str | None:
    """The stripped text of ``path``, or ``None`` when it cannot be read."""
    try:
        return read_text(path, limit).strip()
    except (OSError, ValueError):
        return None


def numeric_entries(directory: Path) -> list[int]:
    """The names of ``directory`` that are decimal numbers (the pids of a procfs), sorted."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(int(name) for name in names if name.isdigit() and name.isascii())
