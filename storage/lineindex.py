"""A sidecar index of line ends and agents per data file, so one agent's lines are read without a scan.

Reading one agent's day out of a 100-agent file otherwise reads and searches every byte of it (138 MB
for a day of samples). For each data file ``NAME`` (live or backup) the writer keeps ``NAME.idx``::

    header   8 bytes magic, then st_dev and st_ino of the data file it describes (u64 little-endian)
    entries  16 bytes each, one per line in file order: the line's end offset (u64), its agent key (u64)

Line ``i`` spans ``[end[i-1], end[i])`` (``end[-1]`` = 0); the agent key is the first 8 bytes of
BLAKE2b of the agent name (0: a line without an agent). The index is a cache, never trusted:

* it is used only when its header names the data file's current inode, its ends increase and the
  last one lies within the file; otherwise the reader scans the whole file (:func:`lines_of`);
* every line it selects must be exactly one line of that agent (``{"agent":"NAME",`` at its start, or,
  in another layout, as :func:`json.loads` reads it), and a sample of other lines must carry the agent
  their key says; any mismatch means a stale index: full scan;
* lines after the last indexed end (a writer that died between the two writes, or one that does not
  index) are found by scanning just that tail.

The writer appends entries after the data they describe, renames indexes with their data files on
rotation, and on opening repairs the live file's index (cuts entries beyond the data, indexes what is
missing, rebuilds one that is foreign or damaged). An index it cannot write is removed, never left
with a gap.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

SUFFIX = ".idx"
MAGIC = b"SMONIDX1"
_HEADER = struct.Struct("<8sQQ")
ENTRY = np.dtype([("end", "<u8"), ("key", "<u8")])
SAMPLED_CHECKS = 32
"""Lines of other agents checked against their key on each indexed read."""
_AGENT_AT_START = re.compile(rb'\{"agent":"([A-Za-z0-9][A-Za-z0-9._-]{0,63})",')
_LINE_START = re.compile(rb'\n\{"agent":"[A-Za-z0-9][A-Za-z0-9._-]{0,63}",')
_INDEX_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW


def index_path(path: Path) -> Path:
    """``NAME`` -> ``NAME.idx``."""
    return path.with_name(path.name + SUFFIX)


@functools.lru_cache(maxsize=4096)
def agent_key(agent: str) -> int:
    """The index key of ``agent`` (never 0, which marks a line without an agent)."""
    key = int.from_bytes(hashlib.blake2b(agent.encode(), digest_size=8).digest(), "little")
    return key or 1


def line_prefix(agent: str) -> bytes:
    """How every stored line of ``agent`` begins (the closing quote keeps ``web-1`` from ``web-10``)."""
    return b'{"agent":"' + agent.encode() + b'",'


def agent_of(line: bytes) -> str | None:
    """The agent of one line, as :func:`json.loads` reads it; None for a line that is not a record."""
    match = _AGENT_AT_START.match(line)
    if match is not None:
        return match.group(1).decode()
    try:
        record = json.loads(line)
    except ValueError:
        return None
    agent = record.get("agent") if isinstance(record, dict) else None
    return agent if isinstance(agent, str) else None


def _all_ours(data: bytes) -> bool:
    """Does every line of ``data`` begin ``{"agent":"NAME",`` (our writer's layout), with no JSON escape?"""
    if b"\\" in data:
        return False
    lines = data.count(b"\n")
    return len(_LINE_START.findall(data)) + bool(_AGENT_AT_START.match(data)) == lines


def lines_of(data: bytes, agent: str) -> bytes:
    """The lines of ``data`` (whole lines) that belong to ``agent``, as :func:`json.loads` reads them.

    In our writer's layout every line begins with its agent, and ``bytes.find`` from one line start of
    the agent to the next beats a regex or a split (docs/fast-paths.md). Any other layout (whitespace, another
    key order, escapes: a file the predecessor or another tool wrote) is read line by line; lines that
    are not records are counted in a warning.
    """
    if not _all_ours(data):
        return _lines_of_any(data, agent)
    prefix = line_prefix(agent)
    needle = b"\n" + prefix
    parts: list[bytes] = []
    if data.startswith(prefix):
        start = 0
    else:
        found = data.find(needle)
        start = found + 1 if found >= 0 else -1
    while start >= 0:
        end = data.index(b"\n", start) + 1
        parts.append(data[start:end])
        found = data.find(needle, end - 1)
        start = found + 1 if found >= 0 else -1
    return b"".join(parts)


def _lines_of_any(data: bytes, agent: str) -> bytes:
    kept: list[bytes] = []
    unreadable = 0
    for line in data.splitlines(keepends=True):
        owner = agent_of(line)
        if owner is None:
            unreadable += bool(line.strip())
        elif owner == agent:
            kept.append(line)
    if unreadable:
        log.warning("skipped %d line(s) that are not records while looking for %s", unreadable, agent)
    return b"".join(kept)


def _key_of_line(line: bytes) -> int:
    agent = agent_of(line)
    return agent_key(agent) if agent is not None else 0


def scan_entries(data: bytes, base: int) -> bytes:
    """Index entries for the whole lines of ``data``, which starts at offset ``base`` of its file."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    entries = np.empty(len(newlines), dtype=ENTRY)
    entries["end"] = newlines + 1 + base
    starts = np.r_[0, newlines[:-1] + 1] if len(newlines) else newlines
    ends = (newlines + 1).tolist()
    keys = []
    for start, end in zip(starts.tolist(), ends, strict=True):
        match = _AGENT_AT_START.match(data, start, min(end, start + 80))
        keys.append(agent_key(match.group(1).decode()) if match else _key_of_line(data[start:end]))
    entries["key"] = keys
    return entries.tobytes()


def _header_matches(raw: bytes, info: os.stat_result) -> bool:
    if len(raw) < _HEADER.size:
        return False
    magic, dev, ino = _HEADER.unpack_from(raw)
    return bool(magic == MAGIC and dev == info.st_dev and ino == info.st_ino)


def _entries(raw: bytes) -> npt.NDArray[np.void]:
    count = (len(raw) - _HEADER.size) // ENTRY.itemsize
    return np.frombuffer(raw, dtype=ENTRY, count=count, offset=_HEADER.size)


def _increasing(ends: npt.NDArray[np.uint64]) -> bool:
    return len(ends) == 0 or (int(ends[0]) > 0 and bool(np.all(ends[1:] > ends[:-1])))


class IndexWriter:
    """Keeps ``NAME.idx`` in step with the data file ``NAME``; owned by :class:`storage.rotating.RotatingFile`."""

    def __init__(self, data_path: Path) -> None:
        self.path = index_path(data_path)
        self.data_path = data_path
        self._fd: int | None = None

    def open(self, data_fd: int) -> None:
        """Open (or create, repair, rebuild) the index of the open data file. Raises nothing: a
        failure leaves the file unindexed (readers scan it)."""
        try:
            self._open(data_fd)
        except OSError as exc:
            self._give_up(f"cannot open: {exc.strerror or exc}")

    def _open(self, data_fd: int) -> None:
        info = os.fstat(data_fd)
        reader = os.open(self.data_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)  # the writer's fd is O_WRONLY
        try:
            read_info = os.fstat(reader)
            if (read_info.st_dev, read_info.st_ino) != (info.st_dev, info.st_ino):
                raise OSError(f"{self.data_path} changed while being opened")
            self._repair(reader, info)
        finally:
            os.close(reader)

    def _repair(self, data_fd: int, info: os.stat_result) -> None:
        self._fd = os.open(self.path, _INDEX_FLAGS, 0o640)
        raw = _read_all(self._fd)
        ends = _entries(raw)["end"] if _header_matches(raw, info) else None
        keep = 0
        if ends is not None and _increasing(ends):
            keep = int(np.searchsorted(ends, info.st_size, side="right"))
            if keep and os.pread(data_fd, 1, int(ends[keep - 1]) - 1) != b"\n":
                keep, ends = 0, None
        else:
            ends = None
        if ends is None:
            log.info("building the line index of %s", self.data_path)
            os.ftruncate(self._fd, 0)
            os.write(self._fd, _HEADER.pack(MAGIC, info.st_dev, info.st_ino))
        else:
            os.ftruncate(self._fd, _HEADER.size + keep * ENTRY.itemsize)
        covered = int(ends[keep - 1]) if ends is not None and keep else 0
        if covered < info.st_size:
            tail = os.pread(data_fd, info.st_size - covered, covered)
            self._write(scan_entries(tail[: tail.rfind(b"\n") + 1], covered))

    def append(self, ends: Sequence[int], keys: Sequence[int]) -> None:
        """Entries for lines just written to the data file, ending at ``ends``."""
        if self._fd is None or not ends:
            return
        entries = np.empty(len(ends), dtype=ENTRY)
        entries["end"] = ends
        entries["key"] = keys
        try:
            self._write(entries.tobytes())
        except OSError as exc:
            self._give_up(f"cannot append: {exc.strerror or exc}")

    def _write(self, payload: bytes) -> None:
        if self._fd is None:
            return
        written = os.write(self._fd, payload)
        if written != len(payload):
            raise OSError(f"short write to {self.path}")

    def _give_up(self, why: str) -> None:
        """Remove the index (a gap in it would hide lines) and index nothing more until reopened."""
        log.warning("line index %s: %s; readers will scan %s", self.path, why, self.data_path)
        self.close()
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("cannot remove the line index %s: %s", self.path, exc.strerror or exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _whole_lines(fd: int, start: int, size: int) -> bytes:
    data = os.pread(fd, size - start, start) if size > start else b""
    return data[: data.rfind(b"\n") + 1]


def agent_lines(path: Path, agent: str) -> bytes:
    """The whole lines of data file ``path`` that belong to ``agent``; b"" when the file is missing.

    Uses ``path``'s index when it checks out (see the module docstring), else scans. Raises OSError.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        info = os.fstat(fd)
        found = _indexed_lines(fd, info, path, agent)
        if found is None:
            return lines_of(_whole_lines(fd, 0, info.st_size), agent)
        return found
    finally:
        os.close(fd)


def _load_index(path: Path, info: os.stat_result) -> npt.NDArray[np.void] | None:
    try:
        with open(index_path(path), "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    if not _header_matches(raw, info):
        return None
    entries = _entries(raw)
    ends = entries["end"]
    if not _increasing(ends) or (len(ends) and int(ends[-1]) > info.st_size):
        return None
    return entries


def _indexed_lines(fd: int, info: os.stat_result, path: Path, agent: str) -> bytes | None:
    """The agent's lines through the index, or None when there is no usable index."""
    entries = _load_index(path, info)
    if entries is None:
        return None
    ends = entries["end"].astype(np.int64)
    keys = entries["key"]
    starts = np.r_[0, ends[:-1]] if len(ends) else ends
    key = agent_key(agent)
    prefix = line_prefix(agent)
    mine = keys == key
    parts: list[bytes] = []
    for start, end in zip(starts[mine].tolist(), ends[mine].tolist(), strict=True):
        line = os.pread(fd, end - start, start)
        whole = line.endswith(b"\n") and line.count(b"\n") == 1
        if whole and (line.startswith(prefix) or agent_of(line) == agent):
            parts.append(line)
        elif not whole or _key_of_line(line) != key:  # a name sharing the key (a collision) is skipped
            log.warning("line index of %s is stale; scanning the file", path)
            return None
    if len(ends) and not _sample_agrees(fd, starts, ends, keys):
        log.warning("line index of %s does not match its file; scanning the file", path)
        return None
    covered = int(ends[-1]) if len(ends) else 0
    parts.append(lines_of(_whole_lines(fd, covered, info.st_size), agent))
    return b"".join(parts)


def _sample_agrees(
    fd: int, starts: npt.NDArray[np.int64], ends: npt.NDArray[np.int64], keys: npt.NDArray[np.uint64]
) -> bool:
    """Whether evenly spread lines hold the agent their key names (and are each one whole line)."""
    picks = np.unique(np.linspace(0, len(ends) - 1, num=min(SAMPLED_CHECKS, len(ends))).astype(np.int64))
    for i in picks.tolist():
        line = os.pread(fd, int(ends[i] - starts[i]), int(starts[i]))
        if not line.endswith(b"\n") or line.count(b"\n") != 1 or _key_of_line(line) != int(keys[i]):
            return False
    return True
