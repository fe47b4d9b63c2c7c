"""Which stored resolution a window is drawn from: raw samples, or the coarsest trend level that still
gives every line its full resolution (:data:`viz.series.MAX_BINS` points), as Grafana asks Prometheus for
a step and Zabbix draws long ranges from trends; where that level holds nothing of the window, the next
finer one, and raw samples last.

A window of ``span`` seconds is drawn in bins of ``span / MAX_BINS``; a trend level whose buckets are no
wider than that loses nothing a plot can show. A day (216 s bins) is drawn from raw samples, a week from
5-minute trends, a month from hourly ones, a year (in 24-hour bins) from 6-hour ones. The trend path reads
the rollups up to the newest one stored and the raw samples after it (the bucket still open), rolled up
the same way, so the right edge of a plot is as fresh as on the raw path. A window with no trend stored at
all (data from before trends existed, not yet built with ``python -m storage trends``) is drawn from raw
samples.

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
from storage.trends import ALL_LEVELS, HOURLY, THREAT_LEVELS, Level, empty, merge, rollup
from viz.series import MAX_BINS, Window, bin_width

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
    fitting = candidates(window)
    return fitting[0] if fitting else None


def candidates(window: Window) -> list[Level]:
    """The levels whose buckets fit in one bin of ``window``, coarsest first."""
    width = window.span / MAX_BINS
    return [level for level in reversed(ALL_LEVELS) if level.width <= width]


def step_for(window: Window, level: Level) -> float:
    """The bin width a window is drawn in from ``level``: a whole number of its buckets, at least one, and
    at least ``span / MAX_BINS`` (bins start at multiples of it: :func:`viz.series.prepare` with ``align``)."""
    return bin_width(window.span / MAX_BINS, level.width)


def load(store: Store, window: Window, agent: str | None) -> Drawable:
    """Read the window at its resolution (raw when no trend level fits or none is stored)."""
    for level in candidates(window):  # a finer level where a coarser one holds nothing of the window
        drawable = _from_trends(store, window, agent, level)
        if drawable is not None:
            return drawable
        log.info("no %s stored for the window", describe(level))
    samples = store.query_samples(window.start, window.end, agent)
    return Drawable(samples, None, samples)


def _from_trends(store: Store, window: Window, agent: str | None, level: Level) -> Drawable | None:
    """The window in bins of :func:`step_for`: whole bins merged by storage (a month of a hundred agents is
    a few ten thousand rows, a year as many), the bins cut by the window's edges from the level's buckets
    (the first one whole), and the bucket the window ends in and any after the newest stored rolled up from
    raw samples. None when the level holds nothing of the window."""
    width, start, end = level.width, window.start, window.end
    step = step_for(window, level)
    # the bucket the window starts in is drawn whole: cutting it from raw samples would read the whole raw
    # history of a file backend (samples are found by time only through whole files), for one bucket of 400
    first_bucket = float(np.floor(start / width) * width)
    body_start = max(float(np.ceil(start / step) * step), first_bucket)
    tail_start = max(float(np.floor(end / step) * step), first_bucket)
    body = store.query_trends(level, body_start, tail_start, agent, step) if body_start < tail_start else empty()
    head_end = min(body_start, tail_start)
    head = _buckets(store.query_trends(level, first_bucket, head_end, agent), first_bucket, head_end)
    # the window's last bin: rollups of at most an hour up to the newest stored, raw samples after it (six
    # hours of raw samples, the open 6-hour bucket, were most of a year's read)
    edge = min(level, HOURLY, key=lambda candidate: candidate.width)
    cut = max(float(np.floor(end / edge.width) * edge.width), tail_start)  # the bucket the window ends in
    last = _buckets(store.query_trends(edge, tail_start, end, agent), tail_start, cut)
    if body.empty and head.empty and (last.empty or edge != level):
        return None  # the level holds nothing of the window (a finer one may)
    # from raw samples: the newest stored bucket (it may have been written while still open), any after it,
    # and the bucket the window ends in
    newest = min(float(last["bucket"].max()), cut) if not last.empty else tail_start
    last = _buckets(last, tail_start, newest)
    tail = store.query_samples(newest, end, agent)
    parts = [head, last]
    if not tail.empty:
        parts.append(rollup(tail, edge.width))
    edges = pd.concat([p for p in parts if not p.empty] or [empty()], ignore_index=True)
    edges = edges.loc[~edges.duplicated(subset=["agent", "bucket"], keep="last")]
    rollups = pd.concat([p for p in (body, merge(edges, int(step))) if not p.empty] or [empty()], ignore_index=True)
    rollups = rollups.sort_values(["bucket", "agent"], kind="stable").reset_index(drop=True)
    frame = drawable_frame(rollups, step)
    return Drawable(frame, level, _latest(frame, tail))


def _buckets(rollups: pd.DataFrame, low: float, high: float) -> pd.DataFrame:
    """The rollups whose bucket starts in ``[low, high)``."""
    if rollups.empty or low >= high:
        return empty()
    buckets = rollups["bucket"].to_numpy(dtype=np.float64)
    return rollups.loc[(buckets >= low) & (buckets < high)]


def drawable_frame(rollups: pd.DataFrame, step: float) -> pd.DataFrame:
    """Rollups of ``step`` seconds as a samples-shaped frame (see the module docstring)."""
    threat = np.clip(rollups["threat_max"].to_numpy(dtype=np.int64), 0, len(THREAT_LEVELS) - 1)
    out: dict[str, object] = {
        "agent": rollups["agent"].to_numpy(dtype=object),
        "timestamp": rollups["bucket"].to_numpy(dtype=np.float64) + step / 2.0,
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
