"""Trend rollups: per agent and time bucket, the count, mean, min, max and count of values of every metric.

Two levels rolled up as samples are stored, as Zabbix keeps history and trends and RRDtool keeps
consolidated archives: 5 minutes and 1 hour; and a third, 6 hours, merged from the hourly one
(:data:`SIX_HOURS`). A bucket starts at a multiple of its width (Unix seconds, UTC); a level is the finer
one merged, which gives the same numbers as rolling the samples up by its width.

Per metric ``m`` a rollup holds ``m`` (the mean of the bucket's values; null when it has none),
``m_min``, ``m_max`` and ``m_n`` (how many of the bucket's samples had a value), and per bucket
``count`` (samples) and ``threat_max`` (the highest threat level, 0 none to 3 high). The security
series' total of issues is ``security_issues * security_issues_n``.

A rollup is a function of the raw samples of its bucket, recomputed whole whenever a sample of that
bucket is stored: a spool replay, a restarted collector or two shards storing the same agent never
count a sample twice. Stored rollups are *sparse*: a minimum or maximum equal to the mean and a value
count equal to ``count`` are left out (null), which is what keeps them under a tenth of the raw data
(most metrics of a host hardly move in five minutes); :func:`decode` puts them back.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from storage.catalog import METRICS, Metric

THREAT_LEVELS: tuple[str, ...] = ("none", "low", "medium", "high")


class Level(NamedTuple):
    name: str
    width: int
    """Seconds per bucket."""


FIVE_MINUTES = Level("5m", 300)
HOURLY = Level("1h", 3600)
LEVELS: tuple[Level, ...] = (FIVE_MINUTES, HOURLY)
"""The levels every backend rolls up as samples are stored. Finest first; each level's width divides the
next one's."""
SIX_HOURS = Level("6h", 21_600)
"""Hourly rollups merged by six, for windows of 100 days and more (a year is drawn in 24-hour bins): MySQL
keeps them in a table of their own (its ``GROUP BY`` over a year of hourly rows took 7 s); the file and
memory stores merge their hourly rollups when asked. Buckets start at 00, 06, 12 and 18 h UTC, so each
lies within one day and one month."""
ALL_LEVELS: tuple[Level, ...] = (*LEVELS, SIX_HOURS)
"""Every level a store answers ``query_trends`` for, finest first."""


def metrics() -> list[Metric]:
    """The metrics rolled up: every numeric sample field of the catalog."""
    return list(METRICS)


def _row_getter() -> Any:
    return operator.attrgetter("agent", "timestamp", "threat_level", *(metric.name for metric in metrics()))


class _Row:
    """``row_of``'s getter, built on first use (a process may declare metrics before)."""

    getter: Any = None
    size = -1

    def __call__(self, sample: object) -> tuple[Any, ...]:
        if self.size != len(METRICS):
            self.getter, self.size = _row_getter(), len(METRICS)
        return self.getter(sample)  # type: ignore[no-any-return]


_ROW = _Row()


def stat_columns(metric: Metric) -> tuple[str, str, str, str]:
    return metric.name, f"{metric.name}_min", f"{metric.name}_max", f"{metric.name}_n"


def columns() -> tuple[str, ...]:
    """The columns of a decoded rollup frame, in order."""
    out = ["agent", "bucket", "count", "threat_max"]
    for metric in metrics():
        out.extend(stat_columns(metric))
    return tuple(out)


def bucket_of(timestamp: float | np.ndarray, width: int) -> np.ndarray:
    return np.floor_divide(np.asarray(timestamp, dtype=np.float64), width) * width


def empty() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series([], dtype="float64") for column in columns()})
    frame["agent"] = frame["agent"].astype(object)
    for column in ("count", "threat_max"):
        frame[column] = frame[column].astype("int64")
    return frame


def threat_index(levels: pd.Series) -> np.ndarray:
    """``threat_level`` text as 0-3 (unknown text: 0)."""
    mapping = {level: index for index, level in enumerate(THREAT_LEVELS)}
    return np.asarray(levels.map(mapping).fillna(0).to_numpy(dtype=np.float64), dtype=np.int64)


def rollup(samples: pd.DataFrame, width: int) -> pd.DataFrame:
    """Roll a samples frame (:data:`storage.frames.SAMPLES` columns) up into buckets of ``width`` seconds.

    Rows come sorted by agent and bucket. The frame must hold each sample once (the ``query_*`` frames do).
    """
    if samples.empty:
        return empty()
    work = pd.DataFrame({
        "agent": samples["agent"].to_numpy(dtype=object),
        "bucket": bucket_of(samples["timestamp"].to_numpy(dtype=np.float64), width),
        "threat_max": threat_index(samples["threat_level"]),
    })
    for metric in metrics():
        work[metric.name] = pd.to_numeric(samples[metric.name], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    grouped = work.groupby(["agent", "bucket"], sort=True)
    out: dict[str, object] = {}
    keys = grouped.size()
    out["agent"] = keys.index.get_level_values(0).to_numpy(dtype=object)
    out["bucket"] = keys.index.get_level_values(1).to_numpy(dtype=np.float64)
    out["count"] = keys.to_numpy(dtype=np.int64)
    out["threat_max"] = grouped["threat_max"].max().to_numpy(dtype=np.int64)
    names = [metric.name for metric in metrics()]
    means = grouped[names].mean()
    lows = grouped[names].min()
    highs = grouped[names].max()
    counts = grouped[names].count()
    for name in names:
        out[name] = means[name].to_numpy(dtype=np.float64)
        out[f"{name}_min"] = lows[name].to_numpy(dtype=np.float64)
        out[f"{name}_max"] = highs[name].to_numpy(dtype=np.float64)
        out[f"{name}_n"] = counts[name].to_numpy(dtype=np.int64)
    return pd.DataFrame(out, columns=list(columns()))


def row_of(sample: object) -> tuple[Any, ...]:
    """What :func:`rollup_rows` reads of a sample: agent, timestamp, threat level, then each metric's value."""
    return _ROW(sample)


def rollup_rows(rows: Sequence[Sequence[Any]], width: int) -> pd.DataFrame:
    """:func:`rollup` of samples given as :func:`row_of` tuples, in numpy alone: the file backend rolls up
    every five minutes' samples with it, where pandas' fixed cost per call was most of the work.
    ``tests/storage/test_trends_file.py`` holds it equal to :func:`rollup` (the reference) for any samples."""
    if not rows:
        return empty()
    names = [metric.name for metric in metrics()]
    agents = np.asarray([row[0] for row in rows], dtype=object)
    timestamps = np.asarray([row[1] for row in rows], dtype=np.float64)
    mapping = {level: index for index, level in enumerate(THREAT_LEVELS)}
    threat = np.asarray([mapping.get(row[2], 0) for row in rows], dtype=np.int64)
    values = np.asarray([row[3:] for row in rows], dtype=np.float64).reshape(len(rows), len(names))
    unique, codes = np.unique(agents, return_inverse=True)
    bucket = bucket_of(timestamps, width)
    order = np.lexsort((bucket, codes))
    codes, bucket, threat, values = codes[order], bucket[order], threat[order], values[order]
    change = np.r_[True, (codes[1:] != codes[:-1]) | (bucket[1:] != bucket[:-1])]
    starts = np.flatnonzero(change)
    valid = ~np.isnan(values)
    n = np.add.reduceat(valid.astype(np.int64), starts, axis=0)
    sums = np.add.reduceat(np.where(valid, values, 0.0), starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n > 0, sums / np.maximum(n, 1), np.nan)
        lows = np.fmin.reduceat(values, starts, axis=0)
        highs = np.fmax.reduceat(values, starts, axis=0)
    out: dict[str, object] = {
        "agent": unique[codes[starts]],
        "bucket": bucket[starts],
        "count": np.diff(np.r_[starts, len(codes)]).astype(np.int64),
        "threat_max": np.maximum.reduceat(threat, starts),
    }
    for index, name in enumerate(names):
        out[name] = means[:, index]
        out[f"{name}_min"] = lows[:, index]
        out[f"{name}_max"] = highs[:, index]
        out[f"{name}_n"] = n[:, index]
    return pd.DataFrame(out, columns=list(columns()))


def merge(rollups: pd.DataFrame, width: int) -> pd.DataFrame:
    """Merge decoded rollups into coarser buckets of ``width`` seconds (a multiple of theirs)."""
    if rollups.empty:
        return empty()
    work = rollups.copy()
    work["bucket"] = bucket_of(work["bucket"].to_numpy(dtype=np.float64), width)
    for metric in metrics():
        mean, _low, _high, n = stat_columns(metric)
        values = work[mean].to_numpy(dtype=np.float64)
        counts = work[n].to_numpy(dtype=np.float64)
        work[f"{mean}__sum"] = np.where(counts > 0, values * counts, 0.0)
    grouped = work.groupby(["agent", "bucket"], sort=True)
    sums = grouped.sum(numeric_only=True)
    mins = grouped.min(numeric_only=True)
    maxs = grouped.max(numeric_only=True)
    out: dict[str, object] = {
        "agent": sums.index.get_level_values(0).to_numpy(dtype=object),
        "bucket": sums.index.get_level_values(1).to_numpy(dtype=np.float64),
        "count": sums["count"].to_numpy(dtype=np.int64),
        "threat_max": maxs["threat_max"].to_numpy(dtype=np.int64),
    }
    for metric in metrics():
        mean, low, high, n = stat_columns(metric)
        counts = sums[n].to_numpy(dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[mean] = np.where(counts > 0, sums[f"{mean}__sum"].to_numpy(dtype=np.float64) / counts, np.nan)
        out[low] = mins[low].to_numpy(dtype=np.float64)
        out[high] = maxs[high].to_numpy(dtype=np.float64)
        out[n] = counts
    return pd.DataFrame(out, columns=list(columns()))


def encode(rollups: pd.DataFrame) -> pd.DataFrame:
    """The sparse form that is stored: min/max equal to the mean and n equal to count become NaN."""
    out = rollups.copy()
    count = out["count"].to_numpy(dtype=np.float64)
    for metric in metrics():
        mean, low, high, n = stat_columns(metric)
        values = out[mean].to_numpy(dtype=np.float64)
        for column in (low, high):
            extreme = out[column].to_numpy(dtype=np.float64)
            out[column] = np.where(extreme == values, np.nan, extreme)
        counts = out[n].to_numpy(dtype=np.float64)
        out[n] = np.where(counts == count, np.nan, counts)
    return out


def decode(stored: pd.DataFrame) -> pd.DataFrame:
    """Stored (sparse) rollups back to full ones, with :func:`columns` and their dtypes."""
    if stored.empty:
        return empty()
    out: dict[str, object] = {
        "agent": stored["agent"].to_numpy(dtype=object),
        "bucket": pd.to_numeric(stored["bucket"]).to_numpy(dtype=np.float64),
        "count": pd.to_numeric(stored["count"]).to_numpy(dtype=np.int64),
        "threat_max": pd.to_numeric(stored["threat_max"]).fillna(0).to_numpy(dtype=np.int64),
    }
    count = np.asarray(out["count"], dtype=np.float64)
    for metric in metrics():
        mean, low, high, n = stat_columns(metric)
        values = _floats(stored, mean)
        out[mean] = values
        out[low] = np.where(np.isnan(lows := _floats(stored, low)), values, lows)
        out[high] = np.where(np.isnan(highs := _floats(stored, high)), values, highs)
        counts = _floats(stored, n)
        out[n] = np.where(np.isnan(values), 0, np.where(np.isnan(counts), count, counts)).astype(np.int64)
    return pd.DataFrame(out, columns=list(columns()))


def _floats(frame: pd.DataFrame, column: str) -> np.ndarray:
    if column not in frame.columns:
        return np.full(len(frame), np.nan)
    return np.asarray(pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64, na_value=np.nan))


def finish(rollups: pd.DataFrame, width: int, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
    """Buckets of ``width`` that overlap ``[start, end]`` (and of ``agent``), the last copy of each, sorted."""
    if rollups.empty:
        return empty()
    bucket = rollups["bucket"].to_numpy(dtype=np.float64)
    mask = (bucket <= end) & (bucket + width > start)
    if agent is not None:
        mask &= rollups["agent"].to_numpy(dtype=object) == agent
    frame = rollups.loc[mask]
    frame = frame.loc[~frame.duplicated(subset=["agent", "bucket"], keep="last")]
    return frame.sort_values(["bucket", "agent"], kind="stable").reset_index(drop=True)


def in_steps(rollups: pd.DataFrame, start: float, end: float, step: float) -> pd.DataFrame:
    """The rollups whose bucket starts in ``[start, end)``, merged into bins of ``step`` seconds (a multiple
    of their width) starting at multiples of it: what ``query_trends(..., step=...)`` answers."""
    if rollups.empty:
        return empty()
    bucket = rollups["bucket"].to_numpy(dtype=np.float64)
    return merge(rollups.loc[(bucket >= start) & (bucket < end)], int(step))


def touched(agents: Sequence[str], timestamps: Sequence[float], width: int) -> dict[str, tuple[float, float]]:
    """Per agent, the first bucket start and the last bucket end that ``timestamps`` fall in."""
    spans: dict[str, tuple[float, float]] = {}
    for agent, timestamp in zip(agents, timestamps, strict=True):
        start = float(np.floor(timestamp / width) * width)
        low, high = spans.get(agent, (start, start + width))
        spans[agent] = (min(low, start), max(high, start + width))
    return spans
