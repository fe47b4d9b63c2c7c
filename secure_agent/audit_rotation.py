"""Size-based rotation of the audit log that keeps one hash chain across its segments.

Segments are named like the file store's backups: ``audit.log`` is the live one, ``audit.log.1`` the
newest full one ... ``audit.log.N`` the oldest kept (N = ``backup_count``). An archive job may
compress a rotated segment in place (``audit.log.3.gz``); it is shifted under its compressed name.

:class:`secure_agent.audit.AuditLog` rotates between two records, under the lock that orders them,
once the live file has reached ``max_bytes``: it syncs and closes the file, :func:`shift_segments`
renames the segments one step up (dropping the oldest beyond ``backup_count``) and the full file to
``audit.log.1``, and the writer opens a new ``audit.log`` whose first record is a ``rotate`` record
carrying ``prev`` = the hash of the last record of ``audit.log.1``. So the chain never restarts, and
``secure-audit verify --rotated audit.log`` checks it from the oldest segment kept to the newest
record. If the agent stops between the rename and that first record (a crash), the next start finds
an empty or missing live file next to ``audit.log.1`` and continues from its last record
(:func:`predecessor`), again with a ``rotate`` record first.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import NamedTuple

ROTATE_EVENT = "rotate"
COMPRESSED_SUFFIX = ".gz"


class RotationPolicy(NamedTuple):
    max_bytes: int  # rotate once the live segment has reached this size
    backup_count: int  # rotated segments kept; the oldest beyond this is deleted


def segment_path(path: Path, number: int) -> Path:
    """``audit.log`` -> ``audit.log.3`` for ``number`` 3."""
    return path.with_name(f"{path.name}.{number}")


def _existing(path: Path) -> Path | None:
    """The segment at ``path``, or its compressed form, whichever exists (plain first)."""
    for candidate in (path, path.with_name(path.name + COMPRESSED_SUFFIX)):
        if os.path.lexists(candidate):
            return candidate
    return None


def shift_segments(path: Path, backup_count: int) -> None:
    """Make room for a new live segment: ``.N-1`` -> ``.N`` ... ``.1`` -> ``.2``, then ``path`` -> ``.1``.

    The segment at ``.backup_count`` (plain or compressed) is deleted first. Each step is one
    ``rename(2)`` in one directory, so a crash leaves every record in some segment (at worst a
    number is skipped, which ``secure-audit verify`` does not mind: it follows hashes, not numbers).
    Raises OSError.
    """
    if backup_count < 1:
        raise ValueError("backup_count must be at least 1")
    oldest = _existing(segment_path(path, backup_count))
    if oldest is not None:
        oldest.unlink()
    for number in range(backup_count - 1, 0, -1):
        source = _existing(segment_path(path, number))
        if source is not None:
            suffix = COMPRESSED_SUFFIX if source.name.endswith(COMPRESSED_SUFFIX) else ""
            os.replace(source, path.with_name(f"{path.name}.{number + 1}{suffix}"))
    os.replace(path, segment_path(path, 1))


def predecessor(path: Path) -> Path | None:
    """``audit.log.1`` when it is a regular, non-empty file (the segment a new live file continues)."""
    candidate = segment_path(path, 1)
    try:
        info = candidate.lstat()
    except FileNotFoundError:
        return None
    return candidate if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None
