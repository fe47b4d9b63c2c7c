"""The dashboard's table of agents: last seen, state, threat level and open alerts, from storage frames.

- last seen: the newest sample of the agent in the window (or, without one, its newest ``up`` status);
- state: the agent's newest status (``unknown`` when storage holds none in the window);
- threat level: the newest sample's ``threat_level``;
- open alerts: for each (agent, metric) the newest alert transition, kept when it is ``firing``.
  Alerts are read from the start of history, not only the window: an alert that fired last week and
  never cleared is still open.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from viz.series import THREAT_LEVELS, Prepared

UNKNOWN = "unknown"


class OpenAlert(NamedTuple):
    metric: str
    severity: str
    since: float
    value: float | None
    threshold: float | None
    message: str


class AgentRow(NamedTuple):
    agent: str
    last_seen: float | None
    state: str
    detail: str
    threat_level: str
    open_alerts: tuple[OpenAlert, ...]

    @property
    def threat_rank(self) -> int:
        return THREAT_LEVELS.index(self.threat_level) if self.threat_level in THREAT_LEVELS else -1

    @property
    def needs_attention(self) -> bool:
        return self.state not in ("up", UNKNOWN) or self.threat_rank >= 2 or bool(self.open_alerts)


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


def agent_rows(prepared: Prepared, statuses: pd.DataFrame, alerts: pd.DataFrame) -> list[AgentRow]:
    """One row per agent that has samples or statuses in the window; those needing attention first."""
    frame = prepared.frame
    last_sample = _last_per_agent(prepared)
    newest_status = {str(row.agent): row for row in _newest(statuses, ["agent"]).itertuples(index=False)}
    up = statuses[statuses["state"] == "up"] if not statuses.empty else statuses
    last_up = {str(row.agent): float(row.timestamp) for row in _newest(up, ["agent"]).itertuples(index=False)}  # type: ignore[arg-type]
    alerts_by_agent = open_alerts(alerts)
    threat_column = frame["threat_level"].to_numpy(dtype=object)
    time_column = frame["timestamp"].to_numpy(dtype=np.float64)
    rows = []
    for agent in sorted(set(last_sample) | set(newest_status)):
        index = last_sample.get(agent)
        status = newest_status.get(agent)
        seen = [float(time_column[index])] if index is not None else []
        if agent in last_up:
            seen.append(last_up[agent])
        rows.append(
            AgentRow(
                agent=agent,
                last_seen=max(seen) if seen else None,
                state=str(status.state) if status is not None else UNKNOWN,
                detail=str(status.detail or "") if status is not None else "",
                threat_level=str(threat_column[index]) if index is not None else UNKNOWN,
                open_alerts=alerts_by_agent.get(agent, ()),
            )
        )
    rows.sort(key=lambda row: (not row.needs_attention, -row.threat_rank, -len(row.open_alerts), row.agent))
    return rows
