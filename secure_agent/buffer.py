"""The agent's sample buffer: what it measured while no collector asked, kept on disk for ``get_samples``.

A collector that was down (restarted, upgraded, partitioned away) fetches what it missed from here
(``get_samples(after, limit)``), so its outage loses no samples. Two decisions:

- **Crash-safe by construction.** Samples are appended as lines ``CRC32 JSON``; a sample is whole when its
  line ends with a newline and its checksum matches. At open, a torn or corrupt tail (a crash or power loss
  mid-append) is cut back to the last whole sample and logged, never a refusal to start; a corrupt line
  elsewhere is skipped and counted when read. Appends are single ``write(2)`` calls on an ``O_APPEND``
  descriptor, ``fdatasync`` at most every ``buffer.fsync_interval`` seconds.
- **Bounded, oldest dropped first, and counted.** The buffer is a directory of segments named by their
  first sequence number; a new segment starts at an eighth of ``buffer.max_bytes``, and whole segments
  are deleted, oldest first, once the buffer is over ``max_bytes`` or a segment holds only samples older
  than ``buffer.max_age``. Dropped samples are counted (``dropped``) and logged; ``get_samples`` says
  ``gap`` when a caller asks after a sample that is gone.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pki.files import fsync_dir

logger = logging.getLogger(__name__)

SEGMENTS = 8
"""A segment is started at ``max_bytes / SEGMENTS``: dropping the oldest frees about that much."""
PREFIX, SUFFIX = "samples-", ".log"
MAX_LINE = 64 * 1024
PAGE_LIMIT = 1000


class Page(NamedTuple):
    samples: list[dict[str, Any]]
    more: bool
    gap: bool


def _encode(sample: Mapping[str, Any]) -> bytes:
    body = json.dumps(sample, separators=(",", ":"), allow_nan=False, ensure_ascii=True).encode("ascii")
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> dict[str, Any] | None:
    """The sample on a whole line (with its newline), or None when it is torn or corrupt."""
    if len(line) < 11 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        sample = json.loads(body)
    except ValueError:
        return None
    return sample if isinstance(sample, dict) and type(sample.get("seq")) is int else None


class SampleBuffer:
    """The on-disk ring of samples. Thread-safe: the background thread appends, connections read."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        max_age: float,
        fsync_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.fsync_interval = fsync_interval
        self._clock = clock
        self._lock = threading.Lock()
        self.dropped = 0  # samples deleted with their segment (over max_bytes or max_age)
        self.corrupt = 0  # lines skipped when read (a damaged disk)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._segments = self._scan()  # first seq -> path, oldest first
        self._next_seq, self._newest_time = self._recover()
        # first seq -> where each of its lines starts (and, last, where the segment ends): seq k of a segment
        # whose first is f is line k - f, so a page is one read of the bytes it needs
        self._offsets: dict[int, list[int]] = {first: _line_offsets(path) for first, path in self._segments.items()}
        self._fd: int | None = None
        self._size = self._total()
        self._synced_at = time.monotonic()
        self._dirty = False

    # -- opening ----------------------------------------------------------------------------------

    def _scan(self) -> dict[int, Path]:
        found: dict[int, Path] = {}
        for path in self.directory.glob(f"{PREFIX}*{SUFFIX}"):
            number = path.name[len(PREFIX) : -len(SUFFIX)]
            if number.isdigit():
                found[int(number)] = path
        return dict(sorted(found.items()))

    def _recover(self) -> tuple[int, float]:
        """Cut a torn or corrupt tail of the newest segment back to its last whole sample; the next seq."""
        while self._segments:
            first, path = next(reversed(self._segments.items()))
            data = path.read_bytes()
            good, last = 0, None
            for line in data.splitlines(keepends=True):
                sample = _decode(line)
                if sample is None:
                    break
                good += len(line)
                last = sample
            if good < len(data):
                with open(path, "r+b") as handle:
                    handle.truncate(good)
                    os.fsync(handle.fileno())
                logger.warning(
                    "sample buffer: cut %d bytes of a torn or corrupt tail from %s (a crash mid-append)",
                    len(data) - good,
                    path,
                )
            if last is not None:
                return int(last["seq"]) + 1, float(last.get("timestamp", 0.0))
            path.unlink()  # nothing whole in it: a segment started just before a crash
            del self._segments[first]
        return 1, 0.0

    def _total(self) -> int:
        return sum(path.stat().st_size for path in self._segments.values())

    # -- writing ----------------------------------------------------------------------------------

    def append(self, sample: Mapping[str, Any]) -> int:
        """Store ``sample`` under the next sequence number (returned); OSError if the disk refuses it."""
        with self._lock:
            seq = self._next_seq
            line = _encode({**sample, "seq": seq})
            if len(line) > MAX_LINE:
                raise ValueError(f"a sample of {len(line)} bytes is over {MAX_LINE}")
            if self._fd is None or self._segment_full():
                self._start_segment(seq)
            assert self._fd is not None  # noqa: S101 - _start_segment opened it
            written = os.write(self._fd, line)
            if written != len(line):  # a short write (disk full): cut it back, the sample is not stored
                self._cut_back(written)
                raise OSError("short write to the sample buffer")
            offsets = self._offsets[next(reversed(self._segments))]
            offsets.append(offsets[-1] + len(line))
            self._next_seq, self._size, self._dirty = seq + 1, self._size + len(line), True
            self._newest_time = float(sample.get("timestamp", 0.0))
            self._sync_if_due()
            self._trim()
            return seq

    def _segment_full(self) -> bool:
        newest = next(reversed(self._segments.values()))
        return newest.stat().st_size >= self.max_bytes // SEGMENTS

    def _start_segment(self, seq: int) -> None:
        self._close_fd()
        path = self.directory / f"{PREFIX}{seq:020d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._segments[seq] = path
        self._offsets[seq] = [0]
        fsync_dir(self.directory)

    def _cut_back(self, written: int) -> None:
        if self._fd is not None and written > 0:
            os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)

    def _sync_if_due(self) -> None:
        if self._dirty and self._fd is not None and time.monotonic() - self._synced_at >= self.fsync_interval:
            os.fdatasync(self._fd)
            self._synced_at, self._dirty = time.monotonic(), False

    def sync(self) -> None:
        with self._lock:
            if self._dirty and self._fd is not None:
                os.fdatasync(self._fd)
                self._synced_at, self._dirty = time.monotonic(), False

    def _trim(self) -> None:
        """Delete whole segments, oldest first, over ``max_bytes`` or older than ``max_age`` (never the live one)."""
        now = self._clock()
        while len(self._segments) > 1:
            first, path = next(iter(self._segments.items()))
            following = list(self._segments)[1]
            too_big = self._size > self.max_bytes
            too_old = self._newest_in(path) < now - self.max_age
            if not too_big and not too_old:
                return
            size = path.stat().st_size
            path.unlink()
            del self._segments[first]
            self._offsets.pop(first, None)
            self._size -= size
            self.dropped += following - first
            logger.warning(
                "sample buffer: dropped samples %d-%d (%s); no collector fetched them in time",
                first, following - 1, "over buffer.max_bytes" if too_big else "older than buffer.max_age",
            )

    def _newest_in(self, path: Path) -> float:
        """The time of the last sample of a closed segment (its last line)."""
        with open(path, "rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - MAX_LINE))
            lines = handle.read().splitlines(keepends=True)
        for line in reversed(lines):
            sample = _decode(line)
            if sample is not None:
                return float(sample.get("timestamp", 0.0))
        return 0.0

    def _close_fd(self) -> None:
        if self._fd is not None:
            if self._dirty:
                os.fdatasync(self._fd)
                self._dirty = False
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        with self._lock:
            self._close_fd()

    # -- reading ----------------------------------------------------------------------------------

    @property
    def newest_seq(self) -> int:
        """The sequence number of the newest sample (0: none yet)."""
        return self._next_seq - 1

    def page(self, after: int, limit: int) -> Page:
        """The samples after sequence number ``after`` (0: from the oldest), oldest first, at most ``limit``."""
        with self._lock:
            segments = [(first, path, list(self._offsets.get(first, [0]))) for first, path in self._segments.items()]
            newest = self._next_seq - 1
        oldest = segments[0][0] if segments else self._next_seq
        gap = after > newest or (0 < after < oldest - 1)
        start = oldest if gap or after < oldest else after + 1
        samples: list[dict[str, Any]] = []
        for first, path, offsets in segments:
            count = len(offsets) - 1  # whole lines indexed in this segment
            if first + count <= start:
                continue
            begin = max(0, start - first)
            end = min(count, begin + limit - len(samples) + 1)  # one more: is there more?
            try:
                with open(path, "rb") as handle:
                    handle.seek(offsets[begin])
                    data = handle.read(offsets[end] - offsets[begin])
            except FileNotFoundError:  # dropped meanwhile: the caller sees the gap next time
                continue
            for line in data.splitlines(keepends=True):
                sample = _decode(line)
                if sample is None:
                    self._skipped(path)
                    continue
                if len(samples) == limit:
                    return Page(samples, True, gap)
                samples.append(sample)
            start = first + count
        return Page(samples, False, gap)

    def _skipped(self, path: Path) -> None:
        """A whole line whose checksum fails (a damaged disk): skipped, counted and logged, never served."""
        with self._lock:
            self.corrupt += 1
            total = self.corrupt
        logger.warning("sample buffer: skipped a corrupt sample in %s (%d so far)", path, total)


def _line_offsets(path: Path) -> list[int]:
    """Where each whole line of ``path`` starts, and its end."""
    offsets = [0]
    for line in path.read_bytes().splitlines(keepends=True):
        if line.endswith(b"\n"):
            offsets.append(offsets[-1] + len(line))
    return offsets
