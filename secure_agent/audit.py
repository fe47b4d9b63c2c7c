"""The hash-chained audit log: one JSON line per security event, each sealing the one before.

Record format
    A record is a JSON object whose values are strings, integers, floats, booleans or null. Every
    record has ``time`` (UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``), ``event``, ``outcome``, ``agent``,
    ``seq`` (0, 1, 2 ... within one file), ``prev`` and ``hash``; the other fields are those of
    :data:`FIELDS` that apply (peer address, certificate subject/fingerprint/serial, method, request
    id, key id, reason, HTTP status ...). A ``call`` record (a request whose token passed
    verification) also carries the token's ``ts`` (integer Unix seconds) and ``nonce`` (32 hex
    digits): the agent reads them back at start to refuse replays across a restart
    (:mod:`secure_agent.audit_replay`). The token's signature and the keys are never recorded.
    Record times never decrease from one record to the next (the clock is read under the lock that
    orders the writes) unless the system clock is stepped back.

Canonical form
    ``canonical(r) = json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``.
    Pure ASCII, with every control character escaped, so a record is always exactly one line.

Chain
    ``hash = sha256(canonical(record without "hash")).hexdigest()`` where the record includes
    ``prev``, the ``hash`` of the record before (:data:`GENESIS`, 64 zeros, for the first record of a
    log). The line written is ``canonical(record with "hash") + "\\n"``. A verifier recomputes every
    hash, checks every ``prev`` against the hash before it, and checks that the line is exactly
    canonical, so editing any byte, deleting, inserting or reordering a line is detected at that
    line. Truncating the *tail* is not detectable from the file alone: compare the last hash with
    the one in the agent's log at stop, or a copy kept elsewhere.

Rotation
    A new segment's first record carries ``prev`` = the last hash of the segment before, so
    ``verify_lines(segment, prev=last_hash_of_previous_segment)`` checks a chain across files.
    :meth:`AuditLog.reopen` opens a (new) file at the configured path and keeps ``prev`` going.
    Given a :class:`~secure_agent.audit_rotation.RotationPolicy`, the log rotates itself by size
    between two records (:mod:`secure_agent.audit_rotation`). Every segment that continues another
    starts with a ``rotate`` record, and a first open that finds an empty live file next to
    ``audit.log.1`` continues that segment's chain instead of starting a new one.

Client-supplied strings (method names, paths, subjects) are cut to :data:`MAX_TEXT` characters
before they are recorded, so a record stays bounded whatever the client sends.

Durability (fsync policy)
    Each record is one ``write(2)`` on an ``O_APPEND`` descriptor: it is in the kernel when the
    call returns (a crash of the agent loses nothing, and threads never interleave lines).
    ``fdatasync`` runs for start, stop and reload records, after any record when the last sync is
    older than ``sync_interval`` (1 s by default), and from :meth:`sync_if_due`, which the server's
    accept loop calls when :meth:`sync_due` says so: :data:`PENDING_SYNC_DELAY` (0.1 s) after the first
    record still pending (the loop is woken through :meth:`set_waker` when it is written). A power loss
    costs at most about 0.1 s of records, and with ``sync_interval`` 0 none that was answered. An idle
    log is never synced (nor woken for). The agent reads the
    nonces of accepted tokens back from these records at start (:mod:`secure_agent.audit_replay`):
    a token whose record a power loss took, and dated after the next start, can be replayed once.
    A failed write marks the log broken; the agent then refuses calls until :meth:`reopen` works.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from secure_agent.audit_rotation import ROTATE_EVENT, RotationPolicy, predecessor, shift_segments
from secure_agent.errors import AuditError

logger = logging.getLogger(__name__)

GENESIS = "0" * 64
MAX_TEXT = 128  # characters kept of any one string field
MAX_LINE = 16_384  # bytes: no record we write comes close (fields x MAX_TEXT x 6 for \\uXXXX escapes)
DEFAULT_SYNC_INTERVAL = 1.0
PENDING_SYNC_DELAY = 0.1  # seconds a written record waits at most for its fdatasync (sync_due)
_TAIL_BYTES = MAX_LINE + 1

FIELDS = frozenset(
    {
        "time", "event", "outcome", "reason", "agent", "peer", "subject", "common_name", "fingerprint",
        "serial", "method", "http_method", "path", "status", "request_id", "key_id", "address",
        "version", "detail", "connections", "suppressed", "ts", "nonce",
    }
)
_SYNCED_EVENTS = frozenset({"start", "stop", "reload", ROTATE_EVENT})

Scalar = str | int | float | bool | None


# one encoder for every record: json.dumps with options builds a new one per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical(record: Mapping[str, Scalar]) -> str:
    return _CANONICAL.encode(record)


def record_hash(record: Mapping[str, Scalar]) -> str:
    """SHA-256 (hex) of the canonical form of ``record`` without its ``hash`` field."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical(body).encode("ascii")).hexdigest()


def clip(value: object) -> Scalar:
    """A value fit for a record: scalars as they are, strings cut to MAX_TEXT, anything else as text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_TEXT:
        return f"{text[:MAX_TEXT]}...(+{len(text) - MAX_TEXT} chars)"
    return text


_second_text: tuple[float, str] = (math.nan, "")  # the last whole second formatted, shared by threads


def utc_timestamp(seconds: float) -> str:
    """``2026-03-10T03:22:00.123456Z``: what ``datetime.fromtimestamp(seconds, UTC).strftime(...%fZ)``
    writes (microseconds rounded half to even, as datetime does), the date part formatted once a second."""
    global _second_text
    fraction, whole = math.modf(seconds)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1.0, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1.0, micro + 1_000_000
    cached_second, text = _second_text
    if cached_second != whole:
        text = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_text = (whole, text)
    return f"{text}.{micro:06d}Z"


class Sealed(NamedTuple):
    line: str  # without the newline
    hash: str


def seal(fields: Mapping[str, object], prev: str, seq: int) -> Sealed:
    """The line for a record with ``fields`` following the record whose hash is ``prev``.

    The line is the canonical form of the record with its ``hash``; the hash is over the canonical form
    without it. Keys sort, so ``hash`` sits between the keys before it and those after it (``prev`` and
    ``seq`` are always after): each half is encoded once and both texts are joined from them.
    """
    unknown = set(fields) - FIELDS
    if unknown:
        raise ValueError(f"unknown audit fields: {sorted(unknown)}")
    low: dict[str, Scalar] = {}
    high: dict[str, Scalar] = {"prev": prev, "seq": seq}
    for key, value in fields.items():
        if value is not None:
            (low if key < "hash" else high)[key] = clip(value)
    after = canonical(high)[1:]  # '"key":value,...}'
    before = canonical(low)[:-1] + "," if low else "{"  # '{"key":value,' or '{'
    digest = hashlib.sha256(f"{before}{after}".encode("ascii")).hexdigest()  # record_hash: no "hash" yet
    return Sealed(f'{before}"hash":"{digest}",{after}', digest)


class Verdict(NamedTuple):
    ok: bool
    records: int
    last_hash: str  # hash of the last good record (``prev`` as given when there is none)
    bad_line: int | None = None  # 1-based line number of the first bad record
    problem: str | None = None


def _check_line(raw: str | bytes, prev: str, seq: int | None) -> tuple[str, int] | str:
    """(hash, seq) of a good line, or the problem with it."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return "not ASCII (edited)"
    line = raw[:-1] if raw.endswith("\n") else raw
    if len(line) > MAX_LINE:
        return "line too long"
    try:
        record = json.loads(line)
    except ValueError:
        return "not a JSON record"
    if not isinstance(record, dict):
        return "not a JSON object"
    digest, previous, number = record.get("hash"), record.get("prev"), record.get("seq")
    if not isinstance(digest, str) or not isinstance(previous, str) or type(number) is not int:
        return "lacks hash, prev or seq"
    if previous != prev:
        return "does not follow the record before it (a record was deleted, inserted or reordered)"
    if seq is not None and number != seq:
        return f"sequence number {number}, expected {seq}"
    if record_hash(record) != digest:
        return "hash does not match its content (edited)"
    if canonical(record) != line:
        return "not in canonical form (edited)"
    return digest, number


def verify_lines(lines: Iterable[str | bytes], prev: str = GENESIS, *, first_line: int = 1) -> Verdict:
    """Check a chain of records; ``prev`` is the hash the first record must follow.

    Stops at the first bad record and names its line number (counted from ``first_line``).
    """
    count = 0
    seq: int | None = None
    number = first_line
    for number, raw in enumerate(lines, start=first_line):
        result = _check_line(raw, prev, seq)
        if isinstance(result, str):
            return Verdict(False, count, prev, number, result)
        prev, last_seq = result
        seq = last_seq + 1
        count += 1
    return Verdict(True, count, prev)


def verify_file(path: Path, prev: str = GENESIS) -> Verdict:
    """Verify an audit file, reading it line by line (bounded line length). Raises OSError."""
    with open(path, "rb") as handle:
        return verify_lines(iter(lambda: handle.readline(MAX_LINE + 2), b""), prev)


def parse_timestamp(text: object) -> float | None:
    """Unix seconds of a record's ``time``, or None if it is not one of ours."""
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


class _Tail(NamedTuple):
    prev: str
    seq: int
    time: float | None


def _read_tail(fd: int, size: int) -> _Tail:
    """Where to go on appending to a file of ``size`` bytes open for reading at ``fd``."""
    if size == 0:
        return _Tail(GENESIS, 0, None)
    start = max(0, size - _TAIL_BYTES)
    data = os.pread(fd, size - start, start)
    if not data.endswith(b"\n"):
        raise ValueError("does not end with a complete record (torn write?)")
    lines = data[:-1].split(b"\n")
    if start > 0 and len(lines) < 2:
        raise ValueError("last record is too long")
    last = lines[-1]
    try:
        record = json.loads(last)
    except ValueError:
        raise ValueError("last record is not JSON") from None
    if not isinstance(record, dict) or type(record.get("seq")) is not int or record_hash(record) != record.get("hash"):
        raise ValueError("last record is not a sealed audit record")
    return _Tail(str(record["hash"]), int(record["seq"]) + 1, parse_timestamp(record.get("time")))


def check_audit_path(path: Path) -> None:
    """Could an audit log be kept at ``path``? Checks without creating or changing anything.

    Raises :class:`AuditError` naming the file.
    """
    try:
        info = path.lstat()
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK | os.X_OK):
            raise AuditError(f"{path}: cannot create the audit log: {parent} is not writable") from None
        return
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise AuditError(f"{path}: the audit log must be a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from exc
    try:
        _read_tail(fd, info.st_size)
    except ValueError as exc:
        raise AuditError(f"{path}: {exc}; check it with secure-audit verify and move it aside") from exc
    except OSError as exc:
        raise AuditError(f"{path}: cannot read the audit log: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    if not os.access(path, os.W_OK):
        raise AuditError(f"{path}: the audit log is not writable")


class AuditLog:
    """Appends sealed records to ``path`` (mode 0600), continuing the chain of an existing file.

    Thread-safe. :meth:`record` raises :class:`AuditError` when the record cannot be written;
    from then on every call raises until :meth:`reopen` succeeds (fail closed).
    """

    def __init__(
        self,
        path: Path,
        agent: str,
        *,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        clock: Callable[[], float] = time.time,
        rotation: RotationPolicy | None = None,
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
        self.last_time: float | None = None  # time of the last record found in the file when opened
        self._rotation = rotation
        self._size = 0  # bytes in the live segment
        self._rotate_at: int | None = None  # after a failed rotation: the size at which to try again
        self._waker: Callable[[], None] | None = None

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
        """Close and open the file at ``path`` again (after an error, or for a rotation), keeping ``prev``."""
        with self._lock:
            self._close_locked()
            self._open_locked()

    def _open_locked(self) -> None:
        path = self.path
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            self._broken = f"cannot open: {exc.strerror or exc}"
            raise AuditError(f"{path}: cannot open the audit log: {exc.strerror or exc}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise AuditError(f"{path}: the audit log must be a regular file")
            os.fchmod(fd, 0o600)  # records name clients and methods: the owner only
            tail = _read_tail(fd, info.st_size)
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
        if info.st_size > 0:
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
        self._size = info.st_size
        self._broken = None
        if new_segment:
            self._write_locked(self._clock(), ROTATE_EVENT, "ok", {"detail": "continues the previous segment"})

    def _predecessor_tail(self) -> _Tail | None:
        """Where ``audit.log.1`` ends, for a first open of an empty live file. Raises AuditError."""
        earlier = predecessor(self.path)
        if earlier is None:
            return None
        try:
            fd = os.open(earlier, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            self._broken = f"cannot read {earlier}"
            raise AuditError(f"{earlier}: cannot read the audit log: {exc.strerror or exc}") from exc
        try:
            return _read_tail(fd, os.fstat(fd).st_size)
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
            digest = self._write_locked(self._clock(), event, outcome, fields)
            self._rotate_if_due_locked()
            return digest

    def _write_locked(self, now: float, event: str, outcome: str, fields: Mapping[str, object]) -> str:
        if self._broken is not None or self._fd is None:
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
            self._broken = f"write failed: {exc.strerror or exc}"
            raise AuditError(f"{self.path}: cannot write the audit log: {exc.strerror or exc}") from exc
        self._prev, self._seq = sealed.hash, self._seq + 1
        self._size += len(data)
        return sealed.hash

    def _rotate_if_due_locked(self) -> None:
        """Rotate once the live segment is full; a record already written is never affected.

        If renaming fails, writing goes on in the same file and rotation is tried again a little
        later; if the new segment cannot be opened, the log is broken (calls refused) until a reopen.
        """
        policy = self._rotation
        if policy is None or self._size < max(policy.max_bytes, self._rotate_at or 0):
            return
        self._close_locked()
        try:
            shift_segments(self.path, policy.backup_count)
        except OSError as exc:
            logger.error("%s: cannot rotate the audit log (%s); writing on to the same file", self.path, exc)
            self._rotate_at = self._size + policy.max_bytes // 16 + 1
        else:
            self._rotate_at = None
        try:
            self._open_locked()
        except AuditError as exc:
            logger.error("%s", exc)

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
                self._broken = f"sync failed: {exc.strerror or exc}"
                return
            self._last_sync, self._dirty = self._clock(), False

    def close(self) -> None:
        with self._lock:
            self._close_locked()
            self._broken = "closed"

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
