"""The hash-chained audit log: one JSON line per security event, each sealing the one before.

:class:`AuditLog` writes records (format and chain: :mod:`pki.auditchain`), rotates by size without
dropping what no collector has fetched yet, and syncs on a bounded delay. Two decisions are not obvious:

- a write that fails (a full disk) is undone to the last whole record and the log refuses until a timer's
  retry works, so the agent answers 503 rather than serve a call it cannot account for, and recovers with
  no signal or restart;
- records are the durable replay cache: a ``call`` record carries its token's ``ts`` and ``nonce``, read
  back at start (:mod:`secure_agent.audit_replay`).

docs/audit-log.md describes the record fields, rotation, the fsync policy and failure handling in full.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from pki.auditchain import (
    GENESIS,
    MAX_LINE,
    ROTATE_EVENT,
    Verdict,
    canonical,
    parse_timestamp,
    record_hash,
    verify_lines,
)
from secure_agent.audit_file import (
    Segment,
    Tail,
    check_audit_path,
    check_directory,
    open_regular,
    read_tail,
    verify_file,
)
from secure_agent.audit_record import FIELDS, MAX_TEXT, Sealed, Unwritten, clip, seal, utc_timestamp
from secure_agent.audit_rotation import (
    RotationPolicy,
    numbered_segments,
    predecessor,
    segment_number,
    shift_segments,
)
from secure_agent.errors import AuditError

__all__ = [
    "FIELDS",
    "GENESIS",
    "MAX_LINE",
    "MAX_TEXT",
    "AuditLog",
    "Sealed",
    "Segment",
    "Verdict",
    "canonical",
    "check_audit_path",
    "clip",
    "parse_timestamp",
    "record_hash",
    "seal",
    "utc_timestamp",
    "verify_file",
    "verify_lines",
]

logger = logging.getLogger(__name__)

RETRY_FIRST = 1.0  # seconds until a broken log is first tried again...
RETRY_MAX = 10.0  # ...doubling up to this
RESUMED_EVENT = "audit_resumed"
CHANGED_EVENT = "log_changed"
REPAIR_EVENT = "repair"
DEFAULT_SYNC_INTERVAL = 1.0
PENDING_SYNC_DELAY = 0.1  # seconds a written record waits at most for its fdatasync (sync_due)

_OWN_EVENTS = frozenset({ROTATE_EVENT, RESUMED_EVENT, REPAIR_EVENT, CHANGED_EVENT})  # the log's records about itself
_SYNCED_EVENTS = frozenset({"start", "stop", "reload"}) | _OWN_EVENTS


class AuditLog:
    """Appends sealed records to ``path`` (mode 0600), continuing the chain of an existing file.

    Thread-safe. :meth:`record` raises :class:`AuditError` when the record cannot be written;
    from then on every call raises until the log works again (fail closed): a timer retries by
    itself, and :meth:`reopen` tries at once.
    """

    def __init__(
        self,
        path: Path,
        agent: str,
        *,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        clock: Callable[[], float] = time.time,
        rotation: RotationPolicy | None = None,
        retry_first: float = RETRY_FIRST,
    ) -> None:
        self.path = path
        self.agent = agent
        self._sync_interval = sync_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._prev = GENESIS
        self._seq = 0
        self._dirty = False
        self._last_sync = 0.0
        self._pending_since = 0.0  # when the oldest record not yet synced was written
        self._broken: str | None = "not open"
        self._opened = False
        self._closed = False
        self.last_time: float | None = None  # time of the last record found in the file when opened
        self._rotation = rotation
        self._size = 0  # bytes in the live segment
        self._rotate_at: int | None = None  # after a failed rotation: the size at which to try again
        self._waker: Callable[[], None] | None = None
        self._live_inode: int | None = None
        self._mtime = 0  # of the live segment after our last write: another writer changes it
        # The number of the segment holding the newest record a collector fetched (0: the live one), or None.
        # A number, moved along at each rotation, not an inode: a deleted segment's inode is soon another file's
        # (ext4 gives it to the next new live segment), which would pass for "fetched up to the live one".
        self._collected: int | None = None
        self._unwritten = Unwritten()
        self._failure: str | None = None  # why writing failed, until a record says so
        self._retry_first = retry_first
        self._retry_wake = threading.Event()
        self._retrying: threading.Thread | None = None
        self._repaired = 0  # torn bytes cut at the last open, until a record says so
        self._rotate_pending = False  # the live segment is new and still lacks its first (``rotate``) record

    @property
    def last_hash(self) -> str:
        return self._prev

    @property
    def broken(self) -> str | None:
        """Why records cannot be written now, or None when they can."""
        return self._broken

    def open(self) -> None:
        with self._lock:
            self._open_locked()

    def reopen(self) -> None:
        """Close and open the file at ``path`` again (after an error), keeping ``prev``; tries at once."""
        with self._lock:
            self._close_locked()
            self._open_locked()
            self._resume_locked()

    def _open_locked(self) -> None:
        path = self.path
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            check_directory(path.parent)
            fd = os.open(path, flags, 0o600)
        except AuditError as exc:
            self._broken = str(exc)
            raise
        except OSError as exc:
            self._broken = f"cannot open: {exc.strerror or exc}"
            raise AuditError(f"{path}: cannot open the audit log: {exc.strerror or exc}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AuditError(f"{path}: the audit log must be a regular file")
            os.fchmod(fd, 0o600)  # records name clients and methods: the owner only
            tail = read_tail(fd, info.st_size)
            if tail.torn:
                os.ftruncate(fd, tail.size)  # a torn record (power loss mid-write): cut, and said below
                logger.warning("%s: cut %d bytes of a torn record at the end", path, tail.torn)
                self._repaired += tail.torn
        except ValueError as exc:
            os.close(fd)
            self._broken = str(exc)
            raise AuditError(f"{path}: {exc}; check it with secure-audit verify and move it aside") from exc
        except (OSError, AuditError) as exc:
            os.close(fd)
            self._broken = str(exc)
            if isinstance(exc, AuditError):
                raise
            raise AuditError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from exc
        new_segment = False
        if tail.size > 0:
            self._prev, self._seq = tail.prev, tail.seq
            self.last_time = tail.time
        elif not self._opened:
            try:
                earlier = self._predecessor_tail()  # a crash right after a rotation left the live file empty
            except AuditError:
                os.close(fd)
                raise
            if earlier is None:
                self._prev, self._seq = GENESIS, 0
            else:
                self._prev, self._seq, self.last_time = earlier.prev, 0, earlier.time
                new_segment = True
        else:
            self._seq = 0  # a new segment after a rotation: the chain goes on from the last one
            new_segment = self._prev != GENESIS
        self._opened = True
        self._fd = fd
        self._live_inode = info.st_ino
        self._size = tail.size
        self._mtime = os.fstat(fd).st_mtime_ns
        self._broken = None
        self._rotate_pending = new_segment
        if new_segment:
            self._write_rotate_locked()
        if self._repaired:
            detail = f"cut {self._repaired} bytes of a torn record at the end (a crash or a full disk mid-write)"
            self._write_locked(self._clock(), REPAIR_EVENT, "ok", {"detail": detail, "count": self._repaired})
            self._repaired = 0

    _rotate_detail: str | None = None

    def _write_rotate_locked(self) -> None:
        """The first record of a new segment, linking it to the last one; raises AuditError.

        Until it is written (a full disk right after the rename) nothing else is: the retry writes it
        first, so every segment starts a chain that ``secure-audit verify`` can follow, and what
        ``_rotate_detail`` says (segments deleted unfetched) is kept until it is on record.
        """
        detail = self._rotate_detail or "continues the previous segment"
        self._write_locked(self._clock(), ROTATE_EVENT, "ok", {"detail": detail})
        self._rotate_detail = None
        self._rotate_pending = False

    def _predecessor_tail(self) -> Tail | None:
        """Where ``audit.log.1`` ends, for a first open of an empty live file. Raises AuditError."""
        earlier = predecessor(self.path)
        if earlier is None:
            return None
        try:
            fd = open_regular(earlier)
        except OSError as exc:
            self._broken = f"cannot read {earlier}"
            raise AuditError(f"{earlier}: cannot read the audit log: {exc.strerror or exc}") from exc
        try:
            tail = read_tail(fd, os.fstat(fd).st_size)
            if tail.torn:
                raise ValueError("does not end with a complete record (torn write?)")
            return tail
        except ValueError as exc:
            self._broken = str(exc)
            raise AuditError(f"{earlier}: {exc}; check it with secure-audit verify and move it aside") from exc
        except OSError as exc:
            self._broken = f"cannot read {earlier}"
            raise AuditError(f"{earlier}: cannot read the audit log: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def record(self, event: str, outcome: str, **fields: object) -> str:
        """Write one record; return its hash. Raises :class:`AuditError` if it cannot be written."""
        with self._lock:
            if self._fd is not None and self._broken is None:
                self._check_unchanged_locked()
            digest = self._write_locked(self._clock(), event, outcome, fields)
            self._rotate_if_due_locked()
            return digest

    def _write_locked(self, now: float, event: str, outcome: str, fields: Mapping[str, object]) -> str:
        if self._broken is not None or self._fd is None:
            if self._opened and not self._closed and event not in _OWN_EVENTS:
                self._unwritten.add(event, now)
            raise AuditError(f"{self.path}: audit log unusable: {self._broken}")
        sealed = seal(
            {"time": utc_timestamp(now), "event": event, "outcome": outcome, "agent": self.agent, **fields},
            self._prev,
            self._seq,
        )
        data = (sealed.line + "\n").encode("ascii")
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            if event in _SYNCED_EVENTS or now - self._last_sync >= self._sync_interval:
                os.fdatasync(self._fd)
                self._last_sync, self._dirty = now, False
            elif not self._dirty:
                self._dirty, self._pending_since = True, now
                if self._waker is not None:
                    self._waker()  # a sync is pending now: whoever runs sync_if_due should know when
        except OSError as exc:
            reason = f"write failed: {exc.strerror or exc}"
            self._fail_locked(reason, now, event)
            raise AuditError(f"{self.path}: cannot write the audit log: {exc.strerror or exc}") from exc
        self._prev, self._seq = sealed.hash, self._seq + 1
        self._size += len(data)
        self._note_mtime_locked()
        return sealed.hash

    def _note_mtime_locked(self) -> None:
        if self._fd is not None:
            try:
                self._mtime = os.fstat(self._fd).st_mtime_ns
            except OSError:
                self._mtime = 0  # the next record finds the file "changed" and reopens it: harmless

    def _check_unchanged_locked(self) -> None:
        """If the live file is not what our last write left (cut, rewritten, replaced, deleted), go on from
        what is on disk now and say so in a ``log_changed`` record: a host copy that keeps one chain."""
        try:
            info = os.stat(self.path, follow_symlinks=False)
            unchanged = (info.st_ino, info.st_size, info.st_mtime_ns) == (self._live_inode, self._size, self._mtime)
        except OSError:
            unchanged = False
        if unchanged:
            return
        expected, size = self._prev, self._size
        logger.warning("%s: the audit log changed under the agent; going on from what is on disk", self.path)
        self._close_locked()
        try:
            self._open_locked()
        except AuditError as exc:
            self._fail_locked(str(exc), self._clock())
            raise
        detail = (
            f"the log changed under the agent: it had written {size} bytes ending with hash {expected[:16]}; "
            f"it now holds {self._size} bytes ending with {self._prev[:16]}"
        )
        self._write_locked(self._clock(), CHANGED_EVENT, "ok", {"detail": detail})

    def _fail_locked(self, reason: str, now: float, event: str | None = None) -> None:
        """Undo what a failed write left (cut back to the last whole record), mark broken, start retrying."""
        if self._fd is not None:
            try:
                if os.fstat(self._fd).st_size > self._size:
                    os.ftruncate(self._fd, self._size)
                    self._note_mtime_locked()
            except OSError as exc:  # the retry cuts it before it writes anything
                logger.error("%s: cannot cut a failed write back (%s); retrying", self.path, exc.strerror or exc)
        self._broken = reason
        if self._failure is None:
            self._failure = reason
        if event is not None and event not in _OWN_EVENTS:
            self._unwritten.add(event, now)
        logger.error("%s: %s; calls are refused until it can be written again", self.path, reason)
        self._start_retry_locked()

    # -- recovering ---------------------------------------------------------------------------------

    def _start_retry_locked(self) -> None:
        if self._closed or (self._retrying is not None and self._retrying.is_alive()):
            return
        self._retry_wake.clear()
        self._retrying = threading.Thread(target=self._retry_loop, name="audit-retry", daemon=True)
        self._retrying.start()

    def _retry_loop(self) -> None:
        delay = self._retry_first
        while not self._retry_wake.wait(delay):
            with self._lock:
                if self._closed or self._broken is None:
                    return
                if self._try_resume_locked():
                    logger.info("%s: writable again; serving", self.path)
                    return
            delay = min(delay * 2, RETRY_MAX)

    def _try_resume_locked(self) -> bool:
        """One attempt to make the log writable again; True when it is."""
        try:
            if self._fd is None:
                self._open_locked()
            else:
                if os.fstat(self._fd).st_size > self._size:
                    os.ftruncate(self._fd, self._size)
                    self._note_mtime_locked()
                self._broken = None
                if self._rotate_pending:  # a new segment whose first record could not be written
                    self._write_rotate_locked()
            self._resume_locked()
        except (OSError, AuditError) as exc:
            if self._broken is None:
                self._broken = f"still failing: {exc}"
            return False
        return self._broken is None

    def _resume_locked(self) -> None:
        """After a failure: the record that says what could not be written (raises AuditError if it still cannot)."""
        if self._failure is None and not self._unwritten.events:
            return
        fields = self._unwritten.fields(self._failure or "unknown")
        self._write_locked(self._clock(), RESUMED_EVENT, "ok", fields)
        self._unwritten = Unwritten()
        self._failure = None

    # -- rotation and retention --------------------------------------------------------------------

    def _rotate_if_due_locked(self) -> None:
        """Rotate once the live segment is full; a record already written is never affected.

        If renaming fails, writing goes on in the same file and rotation is tried again a little
        later; if the new segment cannot be opened, the log is broken (calls refused) until the
        retry timer or a reopen succeeds.
        """
        policy = self._rotation
        if policy is None or self._size < max(policy.max_bytes, self._rotate_at or 0):
            return
        collected = self._collected_number_locked()
        keep = policy.keep(collected)
        self._close_locked()
        try:
            deleted = shift_segments(self.path, keep)
        except OSError as exc:
            logger.error("%s: cannot rotate the audit log (%s); writing on to the same file", self.path, exc)
            self._rotate_at = self._size + policy.max_bytes // 16 + 1
            self._collected = None  # some segments may have moved: not known until the next fetch
        else:
            self._rotate_at = None
            # the live segment is .1 now, .N is .N+1, and those from ``keep`` on are gone
            self._collected = None if collected is None or collected >= keep else collected + 1
            uncollected = [number for number in deleted if collected is None or number <= collected]
            if uncollected:
                self._rotate_detail = (
                    f"continues the previous segment; deleted {len(uncollected)} segment(s) holding records no "
                    f"collector had fetched (audit_rotation.max_backup_count {policy.ceiling})"
                )
                logger.warning("%s: %s", self.path, self._rotate_detail)
        try:
            self._open_locked()
        except AuditError as exc:
            logger.error("%s", exc)
            self._fail_locked(str(exc), self._clock())

    def _collected_number_locked(self) -> int | None:
        """The number of the segment holding the newest record a collector fetched (0: live), or None."""
        return self._collected

    def mark_collected(self, inode: int) -> None:
        """A collector holds every record up to one in the segment ``inode`` (it asked ``get_audit`` for
        what follows it): retention may delete the segments before that one. Never moves back.

        The caller holds the segment open (a :meth:`open_segments` snapshot), so its inode is no other file's.
        """
        with self._lock:
            number = 0 if inode == self._live_inode else segment_number(self.path, inode)
            if number is not None and (self._collected is None or number < self._collected):
                self._collected = number

    def open_segments(self) -> list[Segment]:
        """The plain segments, oldest first, each open for reading, as one consistent snapshot.

        Taken under the writer's lock, so no rotation happens meanwhile and the live segment's size
        is at a record boundary. Segments older than a compressed one are left out. The caller closes
        every ``fd``. Raises OSError.
        """
        with self._lock:
            opened: list[Segment] = []
            try:
                rotated = sorted(numbered_segments(self.path).items(), key=lambda item: item[1])
                for path, number in rotated:  # newest first, until a compressed one
                    if path.name.endswith(".gz"):
                        break
                    fd = open_regular(path)
                    info = os.fstat(fd)
                    opened.append(Segment(number, fd, info.st_ino, info.st_size))
                if self._fd is not None:
                    fd = open_regular(self.path)
                    info = os.fstat(fd)
                    live = Segment(0, fd, info.st_ino, min(self._size, info.st_size))
                    opened.insert(0, live)
            except OSError:
                for done in opened:
                    os.close(done.fd)
                raise
        opened.reverse()
        return opened

    # -- syncing and closing -----------------------------------------------------------------------

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """``waker()`` is called (under the log's lock; it must not block) when a sync becomes pending."""
        with self._lock:
            self._waker = waker

    def sync_due(self) -> float | None:
        """Seconds until pending records are due for their sync (0 if overdue); None if none is pending.

        Due :data:`PENDING_SYNC_DELAY` after the first pending record, or ``sync_interval`` after the
        last sync if that comes first.
        """
        if not self._dirty:
            return None
        delay = min(PENDING_SYNC_DELAY, self._sync_interval)
        due = min(self._pending_since + delay, self._last_sync + self._sync_interval)
        left = due - self._clock()
        return left if 0.0 < left <= delay else 0.0  # overdue, or a clock set back: due now

    def sync_if_due(self) -> None:
        """:meth:`sync` if pending records are due for it (see :meth:`sync_due`)."""
        if self.sync_due() == 0.0:
            self.sync()

    def sync(self) -> None:
        """fdatasync if records are pending; errors mark the log broken (and are not raised)."""
        with self._lock:
            if not self._dirty or self._fd is None or self._broken is not None:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as exc:
                self._dirty = False  # what is written stays; the retry proves the disk works again
                self._fail_locked(f"sync failed: {exc.strerror or exc}", self._clock())
                return
            self._last_sync, self._dirty = self._clock(), False

    def close(self) -> None:
        with self._lock:
            if self._opened and not self._closed and (self._unwritten.events or self._failure is not None):
                fields = self._unwritten.fields(self._failure or str(self._broken))
                logger.error(  # no audit_resumed record will say it: the operational log is what is left
                    "%s: closed while it could not be written (%s): %s record(s) not written (%s), first %s, last %s",
                    self.path, fields["detail"], fields["count"], fields["events"], fields["first"], fields["last"],
                )
            self._close_locked()
            self._broken = "closed"
            self._closed = True
            self._retry_wake.set()

    def _close_locked(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._dirty:
                os.fdatasync(fd)
                self._dirty = False
        except OSError:
            pass  # nothing more to do: the records are in the kernel; the close below still runs
        finally:
            os.close(fd)
