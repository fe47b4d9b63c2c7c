"""The one Protocol every backend implements (file, MySQL, memory)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from storage.models import AgentStatus, Alert, Sample

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Batch:
    """What one polling sweep hands to storage at once."""

    samples: Sequence[Sample] = field(default_factory=tuple)
    alerts: Sequence[Alert] = field(default_factory=tuple)
    statuses: Sequence[AgentStatus] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return bool(self.samples or self.alerts or self.statuses)


class Store(Protocol):
    """A place samples, alerts and agent states go, and the queries ``viz`` makes of it.

    ``write`` is idempotent per (agent, timestamp) for samples, so a spool replay never duplicates;
    it raises :class:`storage.errors.StorageUnavailable` when the backend is down.
    The ``query_*`` methods return pandas frames whose columns are ``SAMPLE_COLUMNS``,
    ``ALERT_COLUMNS`` and ``STATUS_COLUMNS``, sorted by timestamp, for ``start <= timestamp <= end``.
    """

    def write(self, batch: Batch) -> None: ...

    def query_samples(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame: ...

    def query_alerts(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame: ...

    def query_statuses(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame: ...

    def close(self) -> None: ...
