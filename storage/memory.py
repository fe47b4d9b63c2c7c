"""An in-memory :class:`storage.base.Store`, for tests and for the collector's ``--once`` dry runs.

It keeps the same promises as the real backends (idempotent per key, same frames) and can be told to be
unavailable, so that the collector's spool can be exercised without breaking a real server.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from storage import frames, trends
from storage.auditcopy import placement
from storage.base import Batch
from storage.errors import StorageUnavailable
from storage.models import AgentStatus, Alert, AuditEntry, AuditTail, Sample

if TYPE_CHECKING:
    import pandas as pd

    from storage.trends import Level


class MemoryStore:
    """Keeps every record in dicts keyed like the MySQL unique keys; first write of a key wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, float], Sample] = {}
        self._alerts: dict[tuple[str, float, str, str], Alert] = {}
        self._statuses: dict[tuple[str, float], AgentStatus] = {}
        self._audit: dict[str, list[list[AuditEntry]]] = {}  # agent -> its copies, the current one last
        self._available = True
        self._closed = False
        self.writes = 0
        """Number of successful :meth:`write` calls."""

    def set_available(self, available: bool) -> None:
        """When False, :meth:`write` and the queries raise :class:`StorageUnavailable` (an outage)."""
        with self._lock:
            self._available = available

    @property
    def samples(self) -> tuple[Sample, ...]:
        """Every stored sample, in order of first write."""
        with self._lock:
            return tuple(self._samples.values())

    @property
    def alerts(self) -> tuple[Alert, ...]:
        with self._lock:
            return tuple(self._alerts.values())

    @property
    def statuses(self) -> tuple[AgentStatus, ...]:
        with self._lock:
            return tuple(self._statuses.values())

    def _check(self) -> None:
        if self._closed:
            raise StorageUnavailable("memory store is closed")
        if not self._available:
            raise StorageUnavailable("memory store is unavailable")

    def write(self, batch: Batch) -> None:
        with self._lock:
            self._check()
            for sample in batch.samples:
                self._samples.setdefault((sample.agent, sample.timestamp), sample)
            for alert in batch.alerts:
                self._alerts.setdefault((alert.agent, alert.timestamp, alert.metric, alert.state), alert)
            for status in batch.statuses:
                self._statuses.setdefault((status.agent, status.timestamp), status)
            for entry in batch.audit:
                copies = self._audit.setdefault(entry.agent, [])
                where = placement(copies[-1][-1].hash if copies else None, entry)
                if where == "new_copy":
                    copies.append([entry])
                elif where == "append":
                    copies[-1].append(entry)
            self.writes += 1

    def audit_copies(self, agent: str) -> list[list[str]]:
        """Every central copy of ``agent``'s audit log (lines), the current one last."""
        with self._lock:
            return [[entry.line for entry in copy] for copy in self._audit.get(agent, [])]

    def audit_tails(self, agents: Sequence[str]) -> dict[str, AuditTail]:
        with self._lock:
            self._check()
            tails = {agent: self._audit[agent][-1][-1] for agent in agents if self._audit.get(agent)}
        return {agent: AuditTail(entry.hash, entry.seq, entry.time) for agent, entry in tails.items()}

    def read_audit(self, agent: str) -> Iterator[str]:
        copies = self.audit_copies(agent)
        return iter(copies[-1] if copies else [])

    def query_samples(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        with self._lock:
            self._check()
            rows = [frames.sample_row(s) for s in self._samples.values() if agent is None or s.agent == agent]
        return frames.finish(frames.from_rows(rows, frames.SAMPLES), frames.SAMPLES, start, end, agent)

    def query_alerts(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        with self._lock:
            self._check()
            rows = [frames.alert_row(a) for a in self._alerts.values() if agent is None or a.agent == agent]
        return frames.finish(frames.from_rows(rows, frames.ALERTS), frames.ALERTS, start, end, agent)

    def query_statuses(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        with self._lock:
            self._check()
            rows = [frames.status_row(s) for s in self._statuses.values() if agent is None or s.agent == agent]
        return frames.finish(frames.from_rows(rows, frames.STATUSES), frames.STATUSES, start, end, agent)

    def query_trends(
        self, level: Level, start: float, end: float, agent: str | None = None, step: float | None = None
    ) -> pd.DataFrame:
        """The reference: rollups computed from every stored sample (storage.trends)."""
        samples = self.query_samples(-math.inf, math.inf, agent)
        rollups = trends.rollup(samples, level.width)
        if step is not None:
            return trends.in_steps(rollups, start, end, step)
        return trends.finish(rollups, level.width, start, end, agent)

    def close(self) -> None:
        with self._lock:
            self._closed = True
