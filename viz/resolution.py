"""Which stored resolution a window is drawn from: raw samples, or the coarsest trend level that still
gives every line its full resolution (:data:`viz.series.MAX_BINS` points), as Grafana asks Prometheus for
a step and Zabbix draws long ranges from trends.

A window of ``span`` seconds is drawn in bins of ``span / MAX_BINS``; a trend level whose buckets are no
wider than that loses nothing a plot can show. A day (216 s bins) is drawn from raw samples, a week from
5-minute trends, a month or a year from hourly ones. The trend path reads the rollups up to the newest
one stored and the raw samples after it (the bucket still open), rolled up the same way, so the right
edge of a plot is as fresh as on the raw path. A window with no trend stored at all (data from before
trends existed, not yet built with ``python -m storage trends``) is drawn from raw samples.

The drawable frame of a trend path has one row per (agent, bucket): ``timestamp`` is the bucket's middle,
each metric column its mean, and ``<metric>_min``, ``<metric>_max``, ``<metric>_n`` its extremes and value
count, which :func:`viz.series.bin_column` uses to weigh means and draw min-max bands.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import pandas as pd

from storage.base import Store
from storage.catalog import METRICS
from storage.trends import LEVELS, THREAT_LEVELS, Level, rollup
from viz.series import MAX_BINS, Window

log = logging.getLogger(__name__)

RAW = "raw samples"


class Drawable(NamedTuple):
    """What the plots draw, and what the dashboard's table reads."""

    frame: pd.DataFrame
    """Raw samples, or one row per (agent, bucket) of ``level`` (see the module docstring)."""
    level: Level | None
    """None: raw samples."""
    latest: pd.DataFrame
    """Samples-shaped rows for the table: the raw samples of the open bucket, and each agent's last rollup."""

    @property
    def resolution(self) -> str:
        return RAW if self.level is None else describe(self.level)


def describe(level: Level) -> str:
    minutes = level.width // 60
    return f"{minutes // 60}-hour trends" if minutes % 60 == 0 else f"{minutes}-minute trends"


def choose(window: Window) -> Level | None:
    """The coarsest level whose buckets fit in one bin of ``window``; None: raw samples."""
    width = window.span / MAX_BINS
    chosen = None
    for level in LEVELS:
        if level.width <= width:
            chosen = level
    return chosen


def load(store: Store, window: Window, agent: str | None) -> Drawable:
    """Read the window at its resolution (raw when no trend level fits or none is stored)."""
    level = choose(window)
    if level is not None:
        rollups = store.query_trends(level, window.start, window.end, agent)
        if not rollups.empty:
            return _from_trends(store, window, agent, level, rollups)
        log.info("no %s stored for the window: drawing raw samples", describe(level))
    samples = store.query_samples(window.start, window.end, agent)
    return Drawable(samples, None, samples)


def _from_trends(store: Store, window: Window, agent: str | None, level: Level, rollups: pd.DataFrame) -> Drawable:
    """Rollups inside the window; the buckets cut by its edges, and those after the newest stored rollup
    (still open), rolled up from the raw samples inside the window."""
    width = level.width
    first_whole = float(np.ceil(window.start / width) * width)
    tail_start = min(float(rollups["bucket"].max()), float(np.floor(window.end / width) * width))
    tail = store.query_samples(tail_start, window.end, agent)
    parts = [tail]
    if first_whole > window.start:
        parts.append(store.query_samples(window.start, min(first_whole, tail_start) - 1e-6, agent))
    edges = [p for p in parts if not p.empty]
    buckets = rollups["bucket"].to_numpy(dtype=np.float64)
    rollups = rollups.loc[(buckets >= first_whole) & (buckets < tail_start)]
    if edges:
        rollups = pd.concat([rollups, rollup(pd.concat(edges, ignore_index=True), width)], ignore_index=True)
    rollups = rollups.sort_values(["bucket", "agent"], kind="stable").reset_index(drop=True)
    frame = drawable_frame(rollups, level)
    return Drawable(frame, level, _latest(frame, tail))


def drawable_frame(rollups: pd.DataFrame, level: Level) -> pd.DataFrame:
    """Rollups as a samples-shaped frame (see the module docstring)."""
    threat = np.clip(rollups["threat_max"].to_numpy(dtype=np.int64), 0, len(THREAT_LEVELS) - 1)
    out: dict[str, object] = {
        "agent": rollups["agent"].to_numpy(dtype=object),
        "timestamp": rollups["bucket"].to_numpy(dtype=np.float64) + level.width / 2.0,
        "threat_level": np.asarray(THREAT_LEVELS, dtype=object)[threat],
        "temperature_reason": np.full(len(rollups), None, dtype=object),
    }
    for metric in METRICS:
        name = metric.name
        for column in (name, f"{name}_min", f"{name}_max", f"{name}_n"):
            out[column] = rollups[column].to_numpy(dtype=np.float64)
    return pd.DataFrame(out)


def _latest(frame: pd.DataFrame, tail: pd.DataFrame) -> pd.DataFrame:
    """Each agent's newest raw sample where the open bucket has one, else its last rollup's means."""
    columns = [c for c in tail.columns]
    last = frame.sort_values("timestamp", kind="stable").drop_duplicates(["agent"], keep="last")
    last = last.loc[~last["agent"].isin(set(tail["agent"]))] if not tail.empty else last
    parts = [p for p in (last.reindex(columns=columns), tail) if not p.empty]
    if not parts:
        return tail
    return pd.concat(parts, ignore_index=True).sort_values("timestamp", kind="stable").reset_index(drop=True)
