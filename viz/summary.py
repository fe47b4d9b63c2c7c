"""The dashboard's table of agents: state, threat, latest readings and open alerts, from storage frames.

- last seen: the newest sample of the agent in the window (or, without one, its newest ``up`` status);
- state: the agent's newest status (``unknown`` when storage holds none in the window);
- threat level and latest readings (CPU, memory, swap, disk, 1-minute load, temperature, SSH failures):
  the newest sample's, with its time; a reading the sample lacks is ``None`` (for SSH failures: not
  monitored, no log source readable on the host);
- breaches: the latest readings over their thresholds (the plots' thresholds);
- open alerts: for each (agent, metric) the newest alert transition, kept when it is ``firing``.
  Alerts are read from the start of history, not only the window: an alert that fired last week and
  never cleared is still open.

Rows come sorted by trouble: agents not answering first, then by threat level, then by breaches and
open alerts, then by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import pandas as pd

from storage.catalog import columns
from viz.series import THREAT_LEVELS, Prepared

UNKNOWN = "unknown"


class OpenAlert(NamedTuple):
    metric: str
    severity: str
    since: float
    value: float | None
    threshold: float | None
    message: str


READINGS = tuple(metric.name for metric in columns())
"""The latest readings the table shows, in its column order."""


class AgentRow(NamedTuple):
    agent: str
    last_seen: float | None
    state: str
    detail: str
    threat_level: str
    open_alerts: tuple[OpenAlert, ...]
    readings: dict[str, float | None] = {}  # noqa: RUF012 -- never mutated; READINGS -> latest value
    sampled_at: float | None = None  # the newest sample's time
    breaches: tuple[str, ...] = ()  # readings over their threshold

    @property
    def answering(self) -> bool:
        return self.state in ("up", UNKNOWN)

    @property
    def threat_rank(self) -> int:
        return THREAT_LEVELS.index(self.threat_level) if self.threat_level in THREAT_LEVELS else -1

    @property
    def needs_attention(self) -> bool:
        return not self.answering or self.threat_rank >= 2 or bool(self.open_alerts) or bool(self.breaches)

    @property
    def trouble(self) -> tuple[bool, int, int, str]:
        """Sort key, most trouble first: not answering, threat level, breaches and open alerts, name."""
        return (self.answering, -self.threat_rank, -(len(self.breaches) + len(self.open_alerts)), self.agent)


def breaches(readings: Mapping[str, float | None], limits: Mapping[str, float]) -> tuple[str, ...]:
    """The readings at or over their limit."""
    return tuple(name for name, limit in limits.items() if (value := readings.get(name)) is not None and value >= limit)


def _last_per_agent(prepared: Prepared) -> dict[str, int]:
    """Frame row index of each agent's newest sample."""
    ordered_codes = prepared.codes[prepared.order]
    if len(ordered_codes) == 0:
        return {}
    last_positions = np.flatnonzero(np.r_[ordered_codes[1:] != ordered_codes[:-1], True])
    rows = prepared.order[last_positions]
    return {prepared.names[int(code)]: int(row) for code, row in zip(ordered_codes[last_positions], rows, strict=True)}


def _newest(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """The newest row of each group of ``by`` (frames arrive sorted by time; sort again to be sure)."""
    if frame.empty:
        return frame
    return frame.sort_values("timestamp", kind="stable").drop_duplicates(by, keep="last")


def _optional(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return None if math.isnan(number) else number


def open_alerts(alerts: pd.DataFrame) -> dict[str, tuple[OpenAlert, ...]]:
    """Per agent, the alerts whose newest transition is ``firing``, newest first."""
    newest = _newest(alerts, ["agent", "metric"])
    if newest.empty:
        return {}
    firing = newest[newest["state"] == "firing"].sort_values("timestamp", ascending=False, kind="stable")
    result: dict[str, list[OpenAlert]] = {}
    for row in firing.itertuples(index=False):
        result.setdefault(str(row.agent), []).append(
            OpenAlert(
                metric=str(row.metric),
                severity=str(row.severity),
                since=float(row.timestamp),  # type: ignore[arg-type]
                value=_optional(row.value),
                threshold=_optional(row.threshold),
                message=str(row.message or ""),
            )
        )
    return {agent: tuple(items) for agent, items in result.items()}


def agent_rows(
    prepared: Prepared, statuses: pd.DataFrame, alerts: pd.DataFrame, limits: Mapping[str, float] | None = None
) -> list[AgentRow]:
    """One row per agent that has samples or statuses in the window, most trouble first (:attr:`AgentRow.trouble`).

    ``limits``: reading -> threshold, for :attr:`AgentRow.breaches`.
    """
    frame = prepared.frame
    last_sample = _last_per_agent(prepared)
    newest_status = {str(row.agent): row for row in _newest(statuses, ["agent"]).itertuples(index=False)}
    up = statuses[statuses["state"] == "up"] if not statuses.empty else statuses
    last_up = {str(row.agent): float(row.timestamp) for row in _newest(up, ["agent"]).itertuples(index=False)}  # type: ignore[arg-type]
    alerts_by_agent = open_alerts(alerts)
    threat_column = frame["threat_level"].to_numpy(dtype=object)
    time_column = frame["timestamp"].to_numpy(dtype=np.float64)
    columns = {
        name: pd.to_numeric(frame[name], errors="coerce").to_numpy(np.float64, na_value=np.nan) for name in READINGS
    }
    rows = []
    for agent in sorted(set(last_sample) | set(newest_status)):
        index = last_sample.get(agent)
        status = newest_status.get(agent)
        seen = [float(time_column[index])] if index is not None else []
        if agent in last_up:
            seen.append(last_up[agent])
        readings = {name: _optional(column[index]) if index is not None else None for name, column in columns.items()}
        rows.append(
            AgentRow(
                agent=agent,
                last_seen=max(seen) if seen else None,
                state=str(status.state) if status is not None else UNKNOWN,
                detail=str(status.detail or "") if status is not None else "",
                threat_level=str(threat_column[index]) if index is not None else UNKNOWN,
                open_alerts=alerts_by_agent.get(agent, ()),
                readings=readings,
                sampled_at=float(time_column[index]) if index is not None else None,
                breaches=breaches(readings, limits or {}),
            )
        )
    rows.sort(key=lambda row: row.trouble)
    return rows
