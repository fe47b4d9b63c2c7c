"""Size-based rotation of the audit log that keeps one hash chain across its segments, and its retention rule.

Segments are named like the file store's backups: ``audit.log`` is the live one, ``audit.log.1`` the
newest full one ... ``audit.log.N`` the oldest kept. An archive job may compress a rotated segment in
place (``audit.log.3.gz``); it is shifted under its compressed name.

:class:`secure_agent.audit.AuditLog` rotates between two records, under the lock that orders them,
once the live file has reached ``max_bytes``: it syncs and closes the file, :func:`shift_segments`
renames the segments one step up (deleting those the retention rule no longer keeps) and the full file
to ``audit.log.1``, and the writer opens a new ``audit.log`` whose first record is a ``rotate`` record
carrying ``prev`` = the hash of the last record of ``audit.log.1``. So the chain never restarts, and
``secure-audit verify --rotated audit.log`` checks it from the oldest segment kept to the newest
record. If the agent stops between the rename and that first record (a crash), the next start finds
an empty or missing live file next to ``audit.log.1`` and continues from its last record
(:func:`predecessor`), again with a ``rotate`` record first.

Retention (:meth:`RotationPolicy.keep`): a segment is deleted only once a collector has fetched every
record in it (``get_audit``) and ``backup_count`` newer segments exist; a segment holding a record no
collector has fetched yet is kept up to ``max_backup_count`` segments, the hard ceiling that bounds the
disk an absent collector can cost. Refusal records are budgeted (:mod:`secure_agent.refusals`), so what
fills the segments is what was served, not what a flood sent.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import NamedTuple

from pki.auditchain import ROTATE_EVENT

__all__ = [
    "ROTATE_EVENT",
    "RotationPolicy",
    "numbered_segments",
    "predecessor",
    "segment_number",
    "segment_path",
    "shift_segments",
]

COMPRESSED_SUFFIX = ".gz"


class RotationPolicy(NamedTuple):
    max_bytes: int  # rotate once the live segment has reached this size
    backup_count: int  # rotated segments kept once a collector has copied them
    max_backup_count: int | None = None  # kept at most while not yet copied (None: backup_count)

    @property
    def ceiling(self) -> int:
        return max(self.backup_count, self.max_backup_count or self.backup_count)

    def keep(self, collected: int | None) -> int:
        """How many rotated segments to keep at a rotation (before the live one becomes ``.1``).

        ``collected`` is the number of the segment that holds the newest record a collector has fetched
        (0: the live one), or None when no collector has fetched anything since the agent started. Every
        segment after that record's is kept, up to :attr:`ceiling`; older ones are kept up to ``backup_count``.
        """
        if collected is None:
            return self.ceiling
        return max(self.backup_count, min(self.ceiling, collected + 1))


def segment_path(path: Path, number: int) -> Path:
    """``audit.log`` -> ``audit.log.3`` for ``number`` 3."""
    return path.with_name(f"{path.name}.{number}")


def numbered_segments(path: Path) -> dict[Path, int]:
    """Every rotated segment beside ``path`` (plain or compressed) and its number. Raises OSError."""
    pattern = re.compile(rf"^{re.escape(path.name)}\.([1-9][0-9]{{0,5}})({re.escape(COMPRESSED_SUFFIX)})?$")
    found: dict[Path, int] = {}
    for entry in os.scandir(path.parent):
        match = pattern.match(entry.name)
        if match is not None:
            found[path.parent / entry.name] = int(match.group(1))
    return found


def segment_number(path: Path, inode: int) -> int | None:
    """The number of the rotated segment beside ``path`` whose inode is ``inode`` (None: there is none)."""
    try:
        for segment, number in numbered_segments(path).items():
            if segment.stat().st_ino == inode:
                return number
    except OSError:
        return None
    return None


def shift_segments(path: Path, keep: int) -> list[int]:
    """Make room for a new live segment: segments numbered ``keep`` and above are deleted (oldest first),
    the others renamed one step up (``.2`` -> ``.3``, ``.1`` -> ``.2``), then ``path`` -> ``.1``.

    Returns the numbers deleted. Each step is one ``unlink(2)`` or ``rename(2)`` in one directory, so a
    crash leaves every kept record in some segment (at worst a number is skipped, which ``secure-audit
    verify`` does not mind: it follows hashes, not numbers). Raises OSError.
    """
    if keep < 1:
        raise ValueError("keep must be at least 1")
    segments = numbered_segments(path)
    deleted: list[int] = []
    for segment, number in sorted(segments.items(), key=lambda item: -item[1]):
        if number >= keep:
            segment.unlink()
            deleted.append(number)
    for segment, number in sorted(segments.items(), key=lambda item: -item[1]):
        if number < keep:
            suffix = COMPRESSED_SUFFIX if segment.name.endswith(COMPRESSED_SUFFIX) else ""
            os.replace(segment, path.with_name(f"{path.name}.{number + 1}{suffix}"))
    os.replace(path, segment_path(path, 1))
    return deleted


def predecessor(path: Path) -> Path | None:
    """``audit.log.1`` when it is a regular, non-empty file (the segment a new live file continues)."""
    candidate = segment_path(path, 1)
    try:
        info = candidate.lstat()
    except FileNotFoundError:
        return None
    return candidate if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None
