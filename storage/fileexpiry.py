"""Retention by age for the file backend's rotated line files (:mod:`storage.retention`).

Size rotation stays the cap; on top of it no line older than the history retention is kept. A file whose
every line is older goes whole (with its line index); a file holding some older lines is rewritten
without them (a temporary file, fsync'd, renamed over it; its line index is dropped and rebuilt by the
next reader or writer). Lines are judged by their ``timestamp``; a line without one is kept.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from storage.lineindex import index_path
from storage.rotating import FILE_MODE, family, whole_lines

_TIMESTAMP = re.compile(rb'"timestamp":\s*(-?[0-9][0-9.eE+-]*)')


def line_time(line: bytes) -> float | None:
    """The ``timestamp`` of one stored line (None: not a record)."""
    match = _TIMESTAMP.search(line)
    if match is not None:
        try:
            return float(match.group(1))
        except ValueError:
            pass
    try:
        record = json.loads(line)
    except ValueError:
        return None
    value = record.get("timestamp") if isinstance(record, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def expire_file(path: Path, before: float, *, fsync: bool = True) -> int:
    """Remove ``path``'s lines older than ``before``; how many went."""
    data = whole_lines(path)
    if not data:
        return 0
    lines = data.splitlines(keepends=True)
    kept = []
    for line in lines:
        stamp = line_time(line)
        if stamp is None or stamp >= before:
            kept.append(line)
    removed = len(lines) - len(kept)
    if removed == 0:
        return 0
    index_path(path).unlink(missing_ok=True)
    if not kept:
        path.unlink(missing_ok=True)
        return removed
    temporary = path.with_name(f".{path.name}.expire")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        view = memoryview(b"".join(kept))
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    return removed


def expire_family(path: Path, backup_count: int, before: float, *, fsync: bool = True) -> int:
    """:func:`expire_file` over the live file and its backups; the live file is left in place (emptied at
    most). The caller has closed its writer of ``path``."""
    removed = 0
    for member in family(path, backup_count):
        removed += expire_file(member, before, fsync=fsync)
    if not path.exists():  # the live file is always there for the writer that opens next
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE))
    return removed
