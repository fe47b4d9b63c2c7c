"""Bounded reads of small kernel files (procfs, sysfs) under a root the caller gives.

Every probe reads through these helpers so that a fixture tree can stand in for ``/proc`` or ``/sys``
and so that no read is unbounded: a procfs file that is unexpectedly huge is cut, not slurped.
Errors are returned to the caller as ``OSError`` for it to classify; nothing here logs.
"""

from __future__ import annotations

import os
from pathlib import Path

SMALL_FILE = 64 * 1024
"""Upper bound for the kernel files we parse (/proc/stat on a 1024-core host is ~150 KiB: see LARGE_FILE)."""

LARGE_FILE = 4 * 1024 * 1024
"""Upper bound for files that grow with the host (/proc/stat, /proc/net/tcp, /proc/mounts)."""


def read_bytes(path: str | Path, limit: int = SMALL_FILE) -> bytes:
    """Read at most ``limit`` bytes of ``path`` (raises ``OSError``)."""
    # O_NONBLOCK: a FIFO planted where a sysfs/procfs file is expected must not block the probe.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        chunks: list[bytes] = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str | Path, limit: int = SMALL_FILE) -> str:
    """Read at most ``limit`` bytes of ``path`` as text; undecodable bytes are kept as surrogates."""
    return read_bytes(path, limit).decode("utf-8", "surrogateescape")


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
