"""The enrollment service's own hash-chained audit log: every token issued or revoked, every certificate
signed, every request refused, with its reason.

Records are in the format of :mod:`pki.auditchain`, so ``secure-audit verify DIR/enroll/audit.log`` checks
them. The service and the operator's ``make-certs --issue-token``/``--revoke-token`` append to the same file
from different processes: each append takes an exclusive lock on the file, reads the last record's hash and
sequence number there and then, writes one line and fsyncs it (issuances are rare; each is durable before the
certificate leaves). A log whose last line does not verify is refused (fail closed): the service then signs
nothing until the operator has looked.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pki.auditchain import GENESIS, MAX_LINE, Scalar, canonical, check_line, read_record, record_hash
from pki.errors import PKIError
from pki.files import PRIVATE_MODE

SOURCE = "enroll-service"
MAX_TEXT = 200  # characters kept of any one string field (requests are untrusted)


class AuditUnavailable(PKIError):
    """The audit log cannot take a record: nothing that would need one may happen."""


def _tail(fd: int) -> tuple[str, int]:
    """(hash, seq) of the last record in the open file ``fd``, checked; (GENESIS, -1) for an empty file."""
    size = os.lseek(fd, 0, os.SEEK_END)
    if size == 0:
        return GENESIS, -1
    start = max(0, size - 2 * MAX_LINE)
    data = os.pread(fd, size - start, start)
    if not data.endswith(b"\n"):
        raise AuditUnavailable("the last record is cut short (a crash mid-write?); check the log, move it aside")
    lines = data[:-1].split(b"\n")
    last = lines[-1]
    if len(lines) == 1 and start > 0:
        raise AuditUnavailable("the last record is too long")
    record = read_record(last)
    if isinstance(record, str):
        raise AuditUnavailable(f"the last record does not verify: {record}")
    return record.hash, record.seq


class EnrollmentAudit:
    """Appends records to ``path`` (0600); thread-safe and safe between processes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()

    def record(self, event: str, outcome: str, **fields: Scalar) -> str:
        """Append one record; its hash. Raises :class:`AuditUnavailable` when it cannot be written."""
        body: dict[str, Scalar] = {"event": event, "outcome": outcome, "agent": SOURCE}
        for key, value in fields.items():
            if value is not None:
                body[key] = value[:MAX_TEXT] if isinstance(value, str) else value
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        body["time"] = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, PRIVATE_MODE)
            except OSError as exc:
                raise AuditUnavailable(f"{self.path}: cannot open: {exc.strerror or exc}") from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    prev, seq = _tail(fd)
                except AuditUnavailable as exc:
                    raise AuditUnavailable(f"{self.path}: {exc}") from None
                body["prev"], body["seq"] = prev, seq + 1
                body["hash"] = record_hash(body)
                line = canonical(body)
                if isinstance(check_line(line, prev, seq + 1), str):  # never write what a checker would refuse
                    raise AuditUnavailable(f"{self.path}: a record could not be sealed")
                data = memoryview(line.encode("ascii") + b"\n")
                while data:  # a regular file takes it whole; a short write is finished, never left cut
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError as exc:
                raise AuditUnavailable(f"{self.path}: cannot write: {exc.strerror or exc}") from exc
            finally:
                os.close(fd)
        return str(body["hash"])
