"""The file backend (the default): JSON lines for machines, the predecessor's metrics log for people.

Layout, for ``json_file = DIR/metrics_data.json`` (each data file rotated by size as ``NAME.1`` ... ``NAME.N``,
newest backup first, N = ``rotation.backup_count``; see :mod:`storage.rotating`)::

    DIR/metrics_data.json          samples: one JSON object per line, exactly the fields of
                                   storage.models.Sample (the contract's fields, then the details)
    DIR/metrics_data.alerts.json   alerts: one storage.models.Alert per line
    DIR/metrics_data.status.json   agent states: one storage.models.AgentStatus per line (every poll)
    DIR/metrics_data.json.lock     locked (flock) by the one process writing this family of files
    metrics_file (optional)        human-readable log: one line per new sample and per alert
    audit_dir/AGENT.log            the central copy of each agent's audit log (:mod:`storage.auditcopy`)

Every data line is a flat JSON object beginning with ``"agent"``; samples end with ``findings`` and
``extra``. Beside each data file the writer keeps a line index (``NAME.idx``, :mod:`storage.lineindex`)
so a query for one agent reads only its lines. Readers (:meth:`FileStore.query_samples` and friends)
read the live file and its backups,
ignore anything after the last newline (a write in progress or a crash), and return frames built by
:mod:`storage.frames`.

Idempotency (spool replays must not duplicate): a sample whose (agent, timestamp) -- an alert whose
(agent, timestamp, metric, state), a status whose (agent, timestamp) -- was written by this process
within the last ``dedup_window`` keys of its kind, or is among the lines of the last
:data:`INDEX_TAIL_BYTES` of the live file when the writer opened, is not written again. Beyond that
window a replay can reach the file twice; readers drop such duplicates (first one wins), so queries
never show a record twice.

Durability: one fsync per written file per :meth:`FileStore.write` (one per polling sweep) when
``fsync`` is on (the default), plus directory fsyncs around rotation.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import pandas as pd

from storage import frames, jsonlines
from storage.auditcopy import AuditCopies
from storage.base import Batch
from storage.config import StorageConfig
from storage.errors import StorageConfigError, StorageError, StorageUnavailable
from storage.escape import escape
from storage.fileexpiry import expire_file, line_time
from storage.filetrends import FileTrends
from storage.frames import FrameSpec
from storage.lineindex import agent_key, agent_lines
from storage.models import AGENT_NAME_PATTERN, AgentStatus, Alert, AuditTail, Sample
from storage.retention import Cutoffs
from storage.rotating import FILE_MODE, RotatingFile, family, make_dirs, whole_lines
from storage.trends import HOURLY, LEVELS, Level, in_steps

log = logging.getLogger(__name__)

DEFAULT_DEDUP_WINDOW = 200_000
"""Keys per record kind remembered for idempotency (about 20 MB; 100 agents x 16 h at 30 s)."""
INDEX_TAIL_BYTES = 16 * 1024 * 1024
"""How much of each live file is read back, when the writer opens, to remember recent keys."""
_READ_ATTEMPTS = 3
_R = TypeVar("_R", Sample, Alert, AgentStatus)
_AGENT = re.compile(AGENT_NAME_PATTERN)


def sibling(json_file: Path, kind: str) -> Path:
    """``metrics_data.json`` -> ``metrics_data.<kind>.json`` (no suffix: ``NAME.<kind>``)."""
    return json_file.with_name(f"{json_file.stem}.{kind}{json_file.suffix}")


class _RecentKeys:
    """A set that remembers only the last ``capacity`` keys added."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._order: collections.deque[Hashable] = collections.deque()
        self._keys: set[Hashable] = set()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._keys

    def add(self, key: Hashable) -> None:
        if key in self._keys:
            return
        self._keys.add(key)
        self._order.append(key)
        if len(self._order) > self._capacity:
            self._keys.discard(self._order.popleft())


def _number(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def human_sample_line(sample: Sample) -> str:
    """One line of the human-readable metrics log for ``sample``."""
    load = "/".join(_number(v, digits=2) for v in (sample.load_1, sample.load_5, sample.load_15))
    return (
        f"{_utc(sample.timestamp)} {sample.agent} cpu={_number(sample.cpu_usage, '%')}"
        f" temp={_number(sample.cpu_temperature, 'C')} load={load} mem={_number(sample.memory_usage, '%')}"
        f" disk={_number(sample.disk_usage, '%')} issues={sample.security_issues} threat={sample.threat_level}\n"
    )


def human_alert_line(alert: Alert) -> str:
    """One line of the human-readable metrics log for ``alert``."""
    technique = f" technique={escape(alert.technique)}" if alert.technique else ""
    message = f" {escape(alert.message)}" if alert.message else ""
    return (
        f"{_utc(alert.timestamp)} {alert.agent} ALERT {alert.state} {alert.severity} {escape(alert.metric)}"
        f"={_number(alert.value, digits=2)} threshold={_number(alert.threshold, digits=2)}{technique}{message}\n"
    )


class FileStore:
    """JSON-lines files with size rotation; see the module docstring for layout and guarantees."""

    def __init__(
        self,
        json_file: Path,
        *,
        metrics_file: Path | None = None,
        max_bytes: int = 10 * 1024 * 1024,
        backup_count: int = 5,
        fsync: bool = True,
        readonly: bool = False,
        dedup_window: int = DEFAULT_DEDUP_WINDOW,
        audit_dir: Path | None = None,
    ) -> None:
        self.json_file = Path(json_file)
        self.audit = AuditCopies(audit_dir if audit_dir is not None else self.json_file.parent / "audit", fsync=fsync)
        self.alerts_file = sibling(self.json_file, "alerts")
        self.status_file = sibling(self.json_file, "status")
        self.metrics_file = metrics_file
        self.backup_count = backup_count
        self.readonly = readonly
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._writers_open = False
        self._samples = RotatingFile(self.json_file, max_bytes, backup_count, fsync=fsync, indexed=True)
        self._alerts = RotatingFile(self.alerts_file, max_bytes, backup_count, fsync=fsync, indexed=True)
        self._statuses = RotatingFile(self.status_file, max_bytes, backup_count, fsync=fsync, indexed=True)
        self._human = (
            RotatingFile(metrics_file, max_bytes, backup_count, fsync=fsync) if metrics_file is not None else None
        )
        self.trends = FileTrends(self.json_file, read_raw=self.query_samples, fsync=fsync)
        self._sample_keys = _RecentKeys(dedup_window)
        self._alert_keys = _RecentKeys(dedup_window)
        self._status_keys = _RecentKeys(dedup_window)
        if not readonly:
            self._take_lock()
            try:
                self._open_writers()
            except OSError as exc:  # the file system may change: an outage, not a configuration error
                self.close()
                raise StorageUnavailable(f"storage.json_file: cannot write {exc.filename or self.json_file}: "
                                         f"{exc.strerror or exc}") from exc

    @classmethod
    def from_config(cls, config: StorageConfig, *, readonly: bool = False) -> FileStore:
        return cls(
            config.json_file,
            metrics_file=config.metrics_file,
            max_bytes=config.rotation.max_bytes,
            backup_count=config.rotation.backup_count,
            readonly=readonly,
            audit_dir=config.audit_directory,
        )

    # -- writing -------------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        lock_path = self.json_file.with_name(self.json_file.name + ".lock")
        try:
            make_dirs(lock_path.parent)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
        except OSError as exc:  # a file where a directory should be, no permission: fixable while we spool
            raise StorageUnavailable(f"storage.json_file: cannot create {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StorageConfigError(f"storage.json_file: {self.json_file} is in use by another process") from exc
        self._lock_fd = fd

    def _writers(self) -> list[RotatingFile]:
        writers = [self._samples, self._alerts, self._statuses]
        if self._human is not None:
            writers.append(self._human)
        return writers

    def _open_writers(self) -> None:
        for writer in self._writers():
            writer.open()
        newest = self._remember(self._samples, frames.SAMPLES, self._sample_keys)
        self._remember(self._alerts, frames.ALERTS, self._alert_keys)
        self._remember(self._statuses, frames.STATUSES, self._status_keys)
        self.trends.seed(newest)
        self._writers_open = True

    @staticmethod
    def _remember(writer: RotatingFile, spec: FrameSpec, keys: _RecentKeys) -> float | None:
        """Remember the keys of the live file's tail; the newest timestamp among them (None: empty)."""
        frame = jsonlines.parse(writer.tail(INDEX_TAIL_BYTES), spec)
        for key in zip(*(frame[column].tolist() for column in spec.key), strict=True):
            keys.add(key)
        return float(frame["timestamp"].max()) if len(frame) else None

    def _close_writers(self) -> None:
        for writer in self._writers():
            writer.close()
        self._writers_open = False

    def write(self, batch: Batch) -> None:
        """Append the batch's new records.

        Raises StorageUnavailable when the disk refuses (spool and retry), StorageError when a record
        cannot be serialised (nothing of the batch is written).
        """
        if self.readonly:
            raise StorageConfigError(f"storage.json_file: {self.json_file} was opened read-only")
        with self._lock:
            if self._lock_fd is None:
                raise StorageUnavailable(f"{self.json_file}: store is closed")
            try:
                if not self._writers_open:
                    self._open_writers()
                self._write_locked(batch)
                self.audit.write(batch.audit)
            except OSError as exc:
                self._close_writers()
                raise StorageUnavailable(
                    f"cannot write {exc.filename or self.json_file}: {exc.strerror or exc}"
                ) from exc

    def _write_locked(self, batch: Batch) -> None:
        samples = _new(batch.samples, self._sample_keys, lambda s: (s.agent, s.timestamp))
        alerts = _new(batch.alerts, self._alert_keys, lambda a: (a.agent, a.timestamp, a.metric, a.state))
        statuses = _new(batch.statuses, self._status_keys, lambda s: (s.agent, s.timestamp))
        try:
            sample_lines = [_json_line(s) for s in samples]
            alert_lines = [_json_line(a) for a in alerts]
            status_lines = [_json_line(s) for s in statuses]
        except ValueError as exc:  # a detail pydantic cannot put into JSON: storing it again cannot help
            raise StorageError(f"cannot serialise a record for {self.json_file}: {exc}") from exc
        if sample_lines:
            self._samples.append(sample_lines, [agent_key(s.agent) for s in samples])
        if alert_lines:
            self._alerts.append(alert_lines, [agent_key(a.agent) for a in alerts])
        if status_lines:
            self._statuses.append(status_lines, [agent_key(s.agent) for s in statuses])
        if self._human is not None and (samples or alerts):
            human = [human_sample_line(s).encode() for s in samples]
            human.extend(human_alert_line(a).encode() for a in alerts)
            self._human.append(human)
        for sample in samples:
            self._sample_keys.add((sample.agent, sample.timestamp))
        self.trends.add(samples)
        for alert in alerts:
            self._alert_keys.add((alert.agent, alert.timestamp, alert.metric, alert.state))
        for status in statuses:
            self._status_keys.add((status.agent, status.timestamp))

    # -- reading -------------------------------------------------------------------------------------

    def audit_tails(self, agents: Sequence[str]) -> dict[str, AuditTail]:
        """The last record of each agent's central audit copy (agents without one are left out)."""
        with self._lock:
            try:
                tails = {agent: self.audit.tail(agent) for agent in agents if _AGENT.fullmatch(agent)}
            except OSError as exc:
                raise StorageUnavailable(f"cannot read {exc.filename or self.audit.directory}: "
                                         f"{exc.strerror or exc}") from exc
        return {agent: tail for agent, tail in tails.items() if tail is not None}

    def read_audit(self, agent: str) -> Iterator[str]:
        """The lines of ``agent``'s current central audit copy, oldest first."""
        if _AGENT.fullmatch(agent) is None:
            return iter(())
        return self.audit.read(agent)

    def query_samples(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        return self._query(self.json_file, frames.SAMPLES, start, end, agent)

    def query_alerts(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        return self._query(self.alerts_file, frames.ALERTS, start, end, agent)

    def query_statuses(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        return self._query(self.status_file, frames.STATUSES, start, end, agent)

    def _query(self, path: Path, spec: FrameSpec, start: float, end: float, agent: str | None) -> pd.DataFrame:
        if agent is not None and _AGENT.fullmatch(agent) is None:
            return frames.empty(spec)
        try:
            data = self._read_family(path, agent, start)
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {exc.filename or path}: {exc.strerror or exc}") from exc
        return frames.finish(jsonlines.parse(data, spec, path), spec, start, end, agent)

    def _read_family(self, path: Path, agent: str | None = None, since: float = -math.inf) -> bytes:
        """Whole lines of the backups (oldest first) then the live file, consistent across a rotation.

        With ``agent``, only that agent's lines, found through each file's line index when it checks out.
        A backup last written before ``since`` (less :data:`WRITE_SLACK`) is skipped: a record is stamped when
        it is polled, before it is written, so such a file holds nothing from ``since`` on (the last hour of a
        long history reads the newest files, not all of them).
        """
        data = b""
        for _attempt in range(_READ_ATTEMPTS):
            before = _identity(path, self.backup_count)
            members = [m for m in family(path, self.backup_count) if m == path or _written_since(m, since)]
            if agent is None:
                data = b"".join(whole_lines(p) for p in members)
            else:
                data = b"".join(agent_lines(p, agent) for p in members)
            if _identity(path, self.backup_count) == before:
                return data
        log.warning("%s kept rotating while being read; returning the last read", path)
        return data

    def query_trends(
        self, level: Level, start: float, end: float, agent: str | None = None, step: float | None = None
    ) -> pd.DataFrame:
        """Decoded rollups of ``level`` whose bucket overlaps ``[start, end]`` (:mod:`storage.filetrends`), or
        with ``step`` merged into bins of it (:func:`storage.trends.in_steps`)."""
        if agent is not None and _AGENT.fullmatch(agent) is None:
            return self.trends.query(level, 1.0, 0.0)
        try:
            if step is not None and level not in LEVELS:
                # a merged level's bins come straight from the hourly segments (one merge instead of two):
                # the hours of the buckets that start in [start, end)
                low, high = (edge if not math.isfinite(edge) else math.ceil(edge / level.width) * float(level.width)
                             for edge in (start, end))
                return in_steps(self.trends.query(HOURLY, low, high, agent), low, high, step)
            rollups = self.trends.query(level, start, end, agent)
            return rollups if step is None else in_steps(rollups, start, end, step)
        except OSError as exc:
            raise StorageUnavailable(f"cannot read {exc.filename or self.trends.directory}: "
                                     f"{exc.strerror or exc}") from exc

    def expire(self, cutoffs: Cutoffs, *, batch: int, go_on: Callable[[], bool]) -> dict[str, int]:
        """Retention (:mod:`storage.retention`): lines older than the history cutoff leave the data files
        one file at a time (:mod:`storage.fileexpiry`), trend segments by period."""
        del batch  # a file is the step here
        history_before = cutoffs.history
        if self.readonly:
            raise StorageConfigError(f"storage.json_file: {self.json_file} was opened read-only")
        removed: dict[str, int] = {"samples": 0, "agent states": 0, "alerts": 0}
        kinds = (("samples", self.json_file), ("agent states", self.status_file), ("alerts", self.alerts_file))
        try:
            for kind, path in kinds:
                for member in family(path, self.backup_count):
                    if not go_on():
                        return removed
                    with self._lock:
                        if member == path and self._writers_open:
                            first = _first_line(member)
                            stamp = line_time(first) if first else None
                            if stamp is None or stamp >= history_before:
                                continue
                            self._close_writers()  # the live file is replaced: the next write opens it again
                        removed[kind] += expire_file(member, history_before, fsync=self._samples.fsync)
            with self._lock:
                for kind, level, before in (("5-minute trends", LEVELS[0], cutoffs.five_minutes),
                                            ("hourly trends", LEVELS[1], cutoffs.hourly)):
                    removed[kind] = self.trends.purge(level, before)[1]
        except OSError as exc:
            raise StorageUnavailable(f"retention: cannot rewrite {exc.filename or self.json_file}: "
                                     f"{exc.strerror or exc}") from exc
        return removed

    def close(self) -> None:
        with self._lock:
            if self._writers_open:
                try:
                    self.trends.close()
                except OSError as exc:
                    log.warning("could not write the open trend buckets of %s: %s", self.json_file, exc)
            self._close_writers()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None


WRITE_SLACK = 300.0
"""Seconds a file's modification time may trail the stamps of what it holds (a clock step, a copy)."""


def _written_since(member: Path, since: float) -> bool:
    if since == -math.inf:
        return True
    try:
        return member.stat().st_mtime >= since - WRITE_SLACK
    except FileNotFoundError:
        return False


def _first_line(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.readline(1 << 20)
    except FileNotFoundError:
        return b""


def _identity(path: Path, backup_count: int) -> list[tuple[str, int]]:
    """Which inode each file of the family is, to notice a rotation during a read."""
    identity = []
    for member in family(path, backup_count):
        try:
            identity.append((member.name, member.stat().st_ino))
        except FileNotFoundError:
            identity.append((member.name, -1))
    return identity


def _json_line(record: Sample | Alert | AgentStatus) -> bytes:
    return record.__pydantic_serializer__.to_json(record) + b"\n"


def _new(records: Sequence[_R], seen: _RecentKeys, key: Callable[[_R], Hashable]) -> list[_R]:
    """Records whose key is neither remembered nor earlier in this batch."""
    fresh: list[_R] = []
    batch_keys: set[Hashable] = set()
    for record in records:
        k = key(record)
        if k in seen or k in batch_keys:
            continue
        batch_keys.add(k)
        fresh.append(record)
    return fresh

