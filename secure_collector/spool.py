"""The spool: where samples, alerts, statuses and audit records wait, durably and in order, while storage is down.

Layout of ``spool_dir`` (mode 0700; files 0600)::

    000000000001.spool   segments of JSON lines, one line per batch, oldest first
    000000000002.spool   the segment being appended to
    cursor               "<segment name> <offset>": where replay resumes in the oldest segment

Every :meth:`Spool.append` writes one whole line with a single ``write`` and ``fsync``s it before it returns,
so a batch the collector has handed over survives a crash or power loss. :meth:`Spool.replay` hands the
batches back in order, advancing the cursor (written atomically) after each successful write and deleting
a segment once it is replayed; a crash in between replays at most one chunk twice, which the store's
(agent, timestamp) uniqueness makes harmless. The spool is bounded by ``max_bytes``: when full, the oldest
segments are dropped, loudly, so the newest data survives a long outage. A torn last line (a crash
mid-write) is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from pki.files import fsync_dir
from secure_collector.errors import SpoolError
from storage.base import Batch
from storage.models import AgentStatus, Alert, AuditEntry, Sample

logger = logging.getLogger(__name__)

SUFFIX = ".spool"
CURSOR = "cursor"
DEFAULT_SEGMENT_BYTES = 4 * 1024 * 1024
REPLAY_CHUNK_SAMPLES = 1000
"""Replay merges consecutive spooled batches into writes of about this many samples."""
_FORMAT = 1


def encode(batch: Batch) -> bytes:
    record = {
        "v": _FORMAT,
        "samples": [s.model_dump(mode="json") for s in batch.samples],
        "alerts": [a.model_dump(mode="json") for a in batch.alerts],
        "statuses": [s.model_dump(mode="json") for s in batch.statuses],
        "audit": [e.model_dump(mode="json") for e in batch.audit],
    }
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"


def decode(line: bytes) -> Batch:
    record = json.loads(line)
    if not isinstance(record, dict) or record.get("v") != _FORMAT:
        raise ValueError("unknown spool record format")
    return Batch(
        samples=tuple(Sample.model_validate(s) for s in record["samples"]),
        alerts=tuple(Alert.model_validate(a) for a in record["alerts"]),
        statuses=tuple(AgentStatus.model_validate(s) for s in record["statuses"]),
        audit=tuple(AuditEntry.model_validate(e) for e in record.get("audit", ())),
    )


class Spool:
    """A bounded, durable FIFO of batches in a directory. Thread-safe."""

    def __init__(self, directory: Path, max_bytes: int, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = max(1024, min(segment_bytes, max_bytes // 4))
        self.dropped_batches = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._current: Path | None = None
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
            for stale in directory.glob(".cursor.*"):
                stale.unlink()
        except OSError as exc:
            raise SpoolError(f"{directory}: cannot use as spool_dir: {exc.strerror or exc}") from exc
        if not os.access(directory, os.W_OK | os.X_OK):
            raise SpoolError(f"{directory}: spool_dir is not writable")

    # -- state -----------------------------------------------------------------------------------
    def _segments(self) -> list[Path]:
        return sorted(p for p in self.directory.iterdir() if p.suffix == SUFFIX and p.stem.isdigit())

    def _cursor(self) -> tuple[str, int]:
        try:
            name, _, offset = (self.directory / CURSOR).read_text("ascii").partition(" ")
            return name, int(offset)
        except (OSError, ValueError):
            return "", 0

    def pending_bytes(self) -> int:
        """Bytes waiting to be replayed."""
        with self._lock:
            return self._pending_bytes()

    def _pending_bytes(self) -> int:
        cursor_name, offset = self._cursor()
        total = 0
        for path in self._segments():
            size = path.stat().st_size
            total += size - offset if path.name == cursor_name else size
        return max(total, 0)

    def __bool__(self) -> bool:
        return self.pending_bytes() > 0

    # -- writing ---------------------------------------------------------------------------------
    def append(self, batch: Batch) -> None:
        """Add a batch at the end, durably (fsync'd) before returning."""
        line = encode(batch)
        with self._lock:
            try:
                self._make_room(len(line))
                if len(line) > self.max_bytes:
                    self.dropped_batches += 1
                    logger.error("spool: a batch of %d bytes exceeds spool_max_bytes; dropped", len(line))
                    return
                fd = self._writable(len(line))
                _append_whole(fd, line)
                os.fsync(fd)
            except OSError as exc:
                raise SpoolError(f"{self.directory}: cannot spool: {exc.strerror or exc}") from exc

    def _writable(self, size: int) -> int:
        if self._fd is not None and self._current is not None:
            if os.fstat(self._fd).st_size + size <= self.segment_bytes and self._current.exists():
                return self._fd
            self._close_segment()
        segments = self._segments()
        number = int(segments[-1].stem) + 1 if segments else 1
        path = self.directory / f"{number:012d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self._current = path
        fsync_dir(self.directory)
        return self._fd

    def _close_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._current = None

    def _make_room(self, incoming: int) -> None:
        """Drop the oldest whole segments until ``incoming`` more bytes fit under ``max_bytes``."""
        while self._pending_bytes() + incoming > self.max_bytes:
            segments = self._segments()
            if not segments:
                return
            oldest = segments[0]
            if oldest == self._current:
                self._close_segment()
            lost = _count_lines(oldest)
            self.dropped_batches += lost
            oldest.unlink()
            self._reset_cursor()
            logger.error(
                "spool full (spool_max_bytes=%d): dropped %d oldest batches in %s", self.max_bytes, lost, oldest.name
            )

    # -- replay ----------------------------------------------------------------------------------
    def replay(self, write: Callable[[Batch], None]) -> int:
        """Write every spooled batch, oldest first, through ``write``; return how many were written.

        Stops at the first exception from ``write`` and re-raises it; what was written stays written
        and the rest stays spooled.
        """
        written = 0
        with self._lock:
            self._close_segment()  # new appends go to a fresh segment while this one drains
            for path in self._segments():
                for chunk, end_offset, count in self._chunks(path):
                    write(chunk)
                    written += count
                    self._write_cursor(path.name, end_offset)
                try:
                    path.unlink()
                except OSError as exc:
                    raise SpoolError(f"{path}: cannot remove a replayed segment: {exc.strerror or exc}") from exc
                self._reset_cursor()
                fsync_dir(self.directory)
        return written

    def _chunks(self, path: Path) -> Iterator[tuple[Batch, int, int]]:
        """Merged batches of ``path`` from the cursor on, with the offset after each and the lines in it."""
        cursor_name, offset = self._cursor()
        start = offset if cursor_name == path.name else 0
        samples: list[Sample] = []
        alerts: list[Alert] = []
        statuses: list[AgentStatus] = []
        audit: list[AuditEntry] = []
        count = 0
        position = start
        with open(path, "rb") as handle:
            handle.seek(start)
            for line in handle:
                position += len(line)
                if not line.endswith(b"\n"):
                    self.dropped_batches += 1
                    logger.warning("spool: %s ends in a torn line (%d bytes); skipped", path.name, len(line))
                    continue
                try:
                    batch = decode(line)
                except (ValueError, KeyError, TypeError, ValidationError):
                    self.dropped_batches += 1
                    logger.warning(
                        "spool: unreadable line in %s at offset %d; skipped", path.name, position - len(line)
                    )
                    continue
                samples.extend(batch.samples)
                alerts.extend(batch.alerts)
                statuses.extend(batch.statuses)
                audit.extend(batch.audit)
                count += 1
                if len(samples) + len(statuses) + len(audit) >= REPLAY_CHUNK_SAMPLES:
                    yield Batch(tuple(samples), tuple(alerts), tuple(statuses), tuple(audit)), position, count
                    samples, alerts, statuses, audit, count = [], [], [], [], 0
        if count:
            yield Batch(tuple(samples), tuple(alerts), tuple(statuses), tuple(audit)), position, count

    def _write_cursor(self, name: str, offset: int) -> None:
        temp = self.directory / f".cursor.{os.getpid()}"
        with open(temp, "w", encoding="ascii") as handle:
            handle.write(f"{name} {offset}")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, self.directory / CURSOR)

    def _reset_cursor(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / CURSOR).unlink()

    def close(self) -> None:
        with self._lock:
            self._close_segment()


def _append_whole(fd: int, data: bytes) -> None:
    """Append all of ``data``, however many writes it takes; on failure cut the file back to where it was,
    so that a disk that fills mid-line leaves no fragment for the next batch to be glued onto."""
    before = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        try:
            os.ftruncate(fd, before)
        except OSError:
            logger.error("spool: could not cut a partial batch; replay skips its line")
        raise


def _count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)
