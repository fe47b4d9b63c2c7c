"""The one Protocol every backend implements (file, MySQL, memory)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from storage.models import AgentStatus, Alert, AuditEntry, AuditTail, Sample

if TYPE_CHECKING:
    import pandas as pd

    from storage.trends import Level


@dataclass(frozen=True)
class Batch:
    """What one polling sweep hands to storage at once."""

    samples: Sequence[Sample] = field(default_factory=tuple)
    alerts: Sequence[Alert] = field(default_factory=tuple)
    statuses: Sequence[AgentStatus] = field(default_factory=tuple)
    audit: Sequence[AuditEntry] = field(default_factory=tuple)  # agents' audit records, in order

    def __bool__(self) -> bool:
        return bool(self.samples or self.alerts or self.statuses or self.audit)


class Store(Protocol):
    """A place samples, alerts and agent states go, and the queries ``viz`` makes of it.

    ``write`` is idempotent per (agent, timestamp) for samples, and per place in the chain for audit
    records, so a spool replay never duplicates; it raises :class:`storage.errors.StorageUnavailable`
    when the backend is down. ``audit_tails`` gives the last record of each agent's central audit copy
    (the collector goes on from there), ``read_audit`` the lines of one agent's current copy, oldest first.
    The ``query_*`` methods return pandas frames whose columns are ``SAMPLE_COLUMNS``,
    ``ALERT_COLUMNS`` and ``STATUS_COLUMNS``, sorted by timestamp, for ``start <= timestamp <= end``;
    ``query_trends`` the rollups of one level (:mod:`storage.trends`) whose bucket overlaps the range, or
    with ``step`` those starting in ``[start, end)`` merged into bins of ``step`` (:func:`storage.trends.in_steps`).
    """

    def write(self, batch: Batch) -> None: ...

    def query_samples(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame: ...

    def query_alerts(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame: ...

    def query_statuses(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame: ...

    def query_trends(
        self, level: Level, start: float, end: float, agent: str | None = None, step: float | None = None
    ) -> pd.DataFrame: ...

    def audit_tails(self, agents: Sequence[str]) -> dict[str, AuditTail]: ...

    def read_audit(self, agent: str) -> Iterator[str]: ...

    def close(self) -> None: ...
