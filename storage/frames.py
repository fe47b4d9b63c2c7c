"""The pandas frames every backend returns: one column spec per record kind, one way to finish a frame.

Every ``query_*`` of every backend ends in :func:`finish`, so ``viz`` sees the same columns and dtypes
whatever the backend: floats are ``float64`` (NaN for null), counts are ``int64`` (``ssh_failures`` is a
``float64``: NaN where it was not monitored), strings are ``object``
holding ``str`` (``None`` for null), rows are filtered to ``start <= timestamp <= end`` (and the agent),
deduplicated on the record's key (a replay stored twice shows once) and sorted by timestamp.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from storage.catalog import METRICS
from storage.models import ALERT_COLUMNS, SAMPLE_COLUMNS, STATUS_COLUMNS, AgentStatus, Alert, Sample

ColumnKind = Literal["str", "opt_str", "float", "int"]


@dataclass(frozen=True)
class FrameSpec:
    """How to build the frame of one record kind."""

    name: str
    columns: tuple[str, ...]
    kinds: Mapping[str, ColumnKind]
    key: tuple[str, ...]
    """Columns that identify a record: a second record with the same key is a replay."""
    sort: tuple[str, ...]
    closes_object: bool = False
    """True when the last column is the record's last field (nothing follows it on a stored line)."""

    def of(self, kind: ColumnKind) -> tuple[str, ...]:
        return tuple(c for c in self.columns if self.kinds[c] == kind)


def _kinds(columns: Sequence[str], **special: ColumnKind) -> dict[str, ColumnKind]:
    return {column: special.get(column, "float") for column in columns}


_COUNTS: dict[str, ColumnKind] = {m.name: "int" for m in METRICS if m.integer and not m.nullable}
SAMPLES = FrameSpec(
    name="samples",
    columns=SAMPLE_COLUMNS,
    kinds=_kinds(
        SAMPLE_COLUMNS,
        agent="str",
        threat_level="str",
        temperature_reason="opt_str",
        # an integer that may be missing is a float column in a frame (NaN), as pandas has it
        **_COUNTS,
    ),
    key=("agent", "timestamp"),
    sort=("timestamp", "agent"),
)
ALERTS = FrameSpec(
    name="alerts",
    columns=ALERT_COLUMNS,
    kinds=_kinds(
        ALERT_COLUMNS, agent="str", metric="str", severity="str", state="str", technique="opt_str", message="str"
    ),
    key=("agent", "timestamp", "metric", "state"),
    sort=("timestamp", "agent", "metric", "state"),
    closes_object=True,
)
STATUSES = FrameSpec(
    name="statuses",
    columns=STATUS_COLUMNS,
    kinds=_kinds(STATUS_COLUMNS, agent="str", state="str", detail="str"),
    key=("agent", "timestamp"),
    sort=("timestamp", "agent"),
    closes_object=True,
)

# The file backend's fast reader relies on the frame columns being the models' leading fields, in order.
for _spec, _model in ((SAMPLES, Sample), (ALERTS, Alert), (STATUSES, AgentStatus)):
    _fields = tuple(_model.model_fields)
    if _fields[: len(_spec.columns)] != _spec.columns or _spec.closes_object != (_fields == _spec.columns):
        raise ImportError(f"storage: {_spec.name} columns are not the leading fields of {_model.__name__}")


def sample_row(sample: Sample) -> dict[str, Any]:
    """The frame columns of one sample, as plain values."""
    return {column: getattr(sample, column) for column in SAMPLES.columns}


def alert_row(alert: Alert) -> dict[str, Any]:
    return {column: getattr(alert, column) for column in ALERTS.columns}


def status_row(status: AgentStatus) -> dict[str, Any]:
    return {column: getattr(status, column) for column in STATUSES.columns}


def empty(spec: FrameSpec) -> pd.DataFrame:
    """A frame with no rows but the right columns and dtypes."""
    return coerce(pd.DataFrame({column: [] for column in spec.columns}), spec)


def from_rows(rows: Iterable[Mapping[str, Any]] | Iterable[Sequence[Any]], spec: FrameSpec) -> pd.DataFrame:
    """Rows (dicts keyed by column, or sequences in column order) to a frame with ``spec``'s columns."""
    frame = pd.DataFrame(list(rows), columns=list(spec.columns))
    return coerce(frame, spec)


def coerce(frame: pd.DataFrame, spec: FrameSpec) -> pd.DataFrame:
    """Cast ``frame``'s columns to ``spec``'s dtypes (unparseable numbers become NaN)."""
    out: dict[str, Any] = {}
    for column in spec.columns:
        values = frame[column]
        kind = spec.kinds[column]
        if kind == "float":
            if values.dtype != "float64":
                values = pd.to_numeric(values, errors="coerce").astype("float64")
        elif kind == "int":
            if values.dtype != "int64":
                values = pd.to_numeric(values, errors="coerce").fillna(0).astype("int64")
        else:
            if values.dtype != object:
                values = values.astype(object)
            missing = values.isna()
            if bool(missing.any()):
                values = values.where(~missing, None)
        out[column] = values
    return pd.DataFrame(out, columns=list(spec.columns), index=frame.index)


def finish(
    frame: pd.DataFrame, spec: FrameSpec, start: float, end: float, agent: str | None = None
) -> pd.DataFrame:
    """Filter to ``[start, end]`` (and ``agent``), drop replays, sort by time, number rows from 0."""
    timestamps = frame["timestamp"]
    mask = (timestamps >= start) & (timestamps <= end)
    if agent is not None:
        mask &= frame["agent"] == agent
    if not bool(mask.all()):
        frame = frame.loc[mask]
    if len(frame) > 1:
        duplicated = frame.duplicated(subset=list(spec.key), keep="first")
        if bool(duplicated.any()):
            frame = frame.loc[~duplicated]
        frame = frame.sort_values(list(spec.sort), kind="stable")
    return frame.reset_index(drop=True)
