"""Turn a samples frame into what one panel draws: a few lines, or a fleet band plus the worst agents.

Every column is reduced per agent into time bins first (vectorised, no per-sample Python), so a line
never has more than ``MAX_BINS`` points however long the history: that keeps drawing cost flat.

Up to ``MAX_INDIVIDUAL`` agents get a line each. Beyond that one plot of a hundred lines (or a hundred
small panels) is neither readable nor fast, so a fleet is drawn as the median across agents with a
min-max band, plus the ``TOP_N`` agents with the highest peak as their own lines.

x values are Matplotlib date numbers (days since 1970-01-01 UTC); a gap in the data is a NaN in the
line, so an agent that was down shows as a break instead of a straight bridge.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from storage.trends import THREAT_LEVELS as THREAT_LEVELS  # viz names it here too

MAX_BINS = 400
"""Points per line at most: about 2.5 px apart on the 1100 px wide plots."""
MAX_INDIVIDUAL = 6
"""Up to this many agents share a plot line by line; more are drawn as a fleet aggregate."""
TOP_N = 5
"""Agents named as their own lines in a fleet aggregate."""
GAP_FACTOR = 3.0
"""A step in time larger than this many usual steps (or two bins) breaks the line."""
SECONDS_PER_DAY = 86_400.0


Reducer = Literal["mean", "max"]
FloatArray = npt.NDArray[np.float64]


class Window(NamedTuple):
    """The time range asked for, in Unix seconds (UTC)."""

    start: float
    end: float

    @property
    def span(self) -> float:
        return max(self.end - self.start, 1.0)


class Line(NamedTuple):
    label: str
    x: FloatArray
    y: FloatArray
    low: FloatArray | None = None
    """Per point, the lowest and highest value binned into it (None: one value per point)."""
    high: FloatArray | None = None


class Band(NamedTuple):
    """The fleet's median and its min-max range per time bin."""

    agents: int
    x: FloatArray
    low: FloatArray
    median: FloatArray
    high: FloatArray


class Series(NamedTuple):
    """What one panel draws: ``lines`` alone (few agents) or ``band`` plus the worst agents' lines."""

    lines: tuple[Line, ...]
    band: Band | None


class Binned(NamedTuple):
    """One value per (agent, bin) that has data; rows grouped by agent, bins ascending."""

    names: tuple[str, ...]
    agent: npt.NDArray[np.int64]
    bin: npt.NDArray[np.int64]
    x: FloatArray
    y: FloatArray
    width: float
    low: FloatArray | None = None
    """Per group, the lowest and highest value binned (rollups: their min and max)."""
    high: FloatArray | None = None
    spread: bool = False
    """True when a bin holds more than one value (an agent's band is worth drawing)."""


class Prepared(NamedTuple):
    """The per-frame work every panel shares: agent codes, time bins and the (agent, bin) groups.

    Built once by :func:`prepare` (factorising a few hundred thousand agent names is the dearest step),
    then each column is reduced with ``reduceat`` over the same groups.
    """

    frame: pd.DataFrame
    window: Window
    names: tuple[str, ...]
    codes: npt.NDArray[np.int64]
    order: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]
    group_agent: npt.NDArray[np.int64]
    group_bin: npt.NDArray[np.int64]
    timestamp: FloatArray
    width: float
    rolled: bool = False
    """True when ``frame`` holds rollups (``<metric>_min``, ``_max``, ``_n`` beside each mean)."""
    per_bin: float = 1.0
    """How many stored rows (samples or buckets) a bin holds at most, about."""


def to_datenum(seconds: FloatArray | float) -> FloatArray:
    """Unix seconds -> Matplotlib date numbers."""
    return np.asarray(seconds, dtype=np.float64) / SECONDS_PER_DAY


def typical_interval(codes: npt.NDArray[np.int64], timestamp: FloatArray) -> float:
    """The median time between one agent's consecutive samples (0.0 when unknown); rows in agent order."""
    if len(timestamp) < 2:
        return 0.0
    same = codes[1:] == codes[:-1]
    steps = np.diff(timestamp)[same]
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else 0.0


MIN_FOCUS = 60.0
"""Seconds: a focused time axis never spans less than this, however short the data."""
LEAD = 0.05
"""Fraction of the data's span left empty before the first sample on a focused axis."""


def focus(window: Window, timestamps: FloatArray) -> Window:
    """The window to draw: ``window``, or, when the data starts later (a fresh install, a new agent, the
    demo's first minutes), one that starts just before the first sample, so that minutes of data fill
    the axis (and its time bins) instead of a few dots at the right edge of a day-wide axis."""
    if len(timestamps) == 0:
        return window
    span = max(window.end - float(np.min(timestamps)), MIN_FOCUS) * (1.0 + LEAD)
    return window if window.end - span <= window.start else Window(window.end - span, window.end)


def bin_width(least: float, align: float) -> float:
    """The smallest whole multiple of ``align`` (and at least one) that is at least ``least``."""
    return float(max(np.ceil(least / align - 1e-9), 1.0) * align)


def prepare(frame: pd.DataFrame, window: Window, align: float | None = None, rolled: bool = False) -> Prepared:
    """Group ``frame``'s rows by agent and time bin (bins of ``window/MAX_BINS``, or the poll interval).

    ``align`` (a trend level's width): bins are whole multiples of it (:func:`bin_width`), starting at
    multiples of the bin width, so that each bin holds whole buckets and raw samples and rollups bin alike.
    ``rolled``: ``frame`` holds rollups (:mod:`viz.resolution`).
    """
    raw_codes, names = pd.factorize(frame["agent"].to_numpy(), sort=True)
    codes = raw_codes.astype(np.int64)
    timestamp = frame["timestamp"].to_numpy(dtype=np.float64)
    order = np.lexsort((timestamp, codes)).astype(np.int64)
    ordered_codes = codes[order]
    ordered_ts = timestamp[order]
    step = typical_interval(ordered_codes, ordered_ts)
    width = max(window.span / MAX_BINS, step)
    origin = window.start
    if align:
        width = bin_width(width, align)
        origin = float(np.floor(window.start / width) * width)
    bins = int(np.ceil((window.end - origin) / width)) + 1
    bin_index = np.clip(((ordered_ts - origin) // width).astype(np.int64), 0, bins - 1)
    key = ordered_codes * bins + bin_index
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, np.int64)
    return Prepared(
        frame=frame,
        window=window,
        names=tuple(str(name) for name in names),
        codes=codes,
        order=order,
        starts=starts.astype(np.int64),
        group_agent=ordered_codes[starts],
        group_bin=bin_index[starts],
        timestamp=ordered_ts,
        width=width,
        rolled=rolled,
        per_bin=width / step if step > 0 else 1.0,
    )


def _floats(prepared: Prepared, column: str) -> FloatArray:
    values = pd.to_numeric(prepared.frame[column], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    return np.asarray(values[prepared.order], dtype=np.float64)


def bin_column(prepared: Prepared, column: str | FloatArray, how: Reducer = "mean") -> Binned:
    """Reduce one column (a name of the frame, or values in frame row order) per agent and bin.

    NaN values are left out; a group with none left is dropped. On rollups a mean is weighed by its
    bucket's value count (the mean of the samples, as the raw path gives) and the extremes are the
    buckets' min and max.
    """
    rolled = isinstance(column, str) and prepared.rolled and f"{column}_n" in prepared.frame.columns
    if len(prepared.starts) == 0:
        empty = np.zeros(0, np.int64)
        return Binned(prepared.names, empty, empty, empty.astype(np.float64), empty.astype(np.float64), 1.0)
    if isinstance(column, str):
        values = _floats(prepared, column)
    else:
        values = np.asarray(column, dtype=np.float64)[prepared.order]
    valid = ~np.isnan(values)
    weights = _floats(prepared, f"{column}_n") if rolled and isinstance(column, str) else valid.astype(np.float64)
    weights = np.where(valid, weights, 0.0)
    lows = _floats(prepared, f"{column}_min") if rolled and isinstance(column, str) else values
    highs = _floats(prepared, f"{column}_max") if rolled and isinstance(column, str) else values
    count = np.add.reduceat(weights, prepared.starts)
    keep = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.add.reduceat(np.where(valid, prepared.timestamp * weights, 0.0), prepared.starts) / count
        if how == "mean":
            y = np.add.reduceat(np.where(valid, values * weights, 0.0), prepared.starts) / count
        else:
            y = np.fmax.reduceat(highs, prepared.starts)
        low = np.fmin.reduceat(lows, prepared.starts)
        high = np.fmax.reduceat(highs, prepared.starts)
    return Binned(
        names=prepared.names,
        agent=prepared.group_agent[keep],
        bin=prepared.group_bin[keep],
        x=x[keep],
        y=y[keep],
        width=prepared.width,
        low=low[keep],
        high=high[keep],
        spread=bool(prepared.rolled or prepared.per_bin > 1.5),
    )


def break_gaps(x: FloatArray, *ys: FloatArray, width: float) -> tuple[FloatArray, ...]:
    """Insert a NaN point wherever ``x`` (Unix seconds, ascending) jumps more than a usual step."""
    if len(x) < 2:
        return (to_datenum(x), *ys)
    steps = np.diff(x)
    limit = max(GAP_FACTOR * float(np.median(steps)), 2.0 * width)
    gaps = np.flatnonzero(steps > limit) + 1
    if len(gaps) == 0:
        return (to_datenum(x), *ys)
    out_x = np.insert(x, gaps, (x[gaps - 1] + x[gaps]) / 2.0)
    out_ys = tuple(np.insert(y, gaps, np.nan) for y in ys)
    return (to_datenum(out_x), *out_ys)


def agent_lines(binned: Binned, chosen: npt.NDArray[np.int64]) -> tuple[Line, ...]:
    """One line per agent code in ``chosen``, in that order (agents without values are skipped)."""
    starts = np.searchsorted(binned.agent, chosen, side="left")
    ends = np.searchsorted(binned.agent, chosen, side="right")
    lines = []
    for code, lo, hi in zip(chosen, starts, ends, strict=True):
        if hi > lo:
            if binned.spread and binned.low is not None and binned.high is not None:
                x, y, low, high = break_gaps(binned.x[lo:hi], binned.y[lo:hi], binned.low[lo:hi], binned.high[lo:hi],
                                             width=binned.width)
                lines.append(Line(binned.names[int(code)], x, y, low, high))
            else:
                x, y = break_gaps(binned.x[lo:hi], binned.y[lo:hi], width=binned.width)
                lines.append(Line(binned.names[int(code)], x, y))
    return tuple(lines)


def fleet_band(binned: Binned) -> Band:
    """Median across agents and the lowest and highest value any agent had, per bin."""
    low = binned.low if binned.low is not None else binned.y
    high = binned.high if binned.high is not None else binned.y
    frame = pd.DataFrame({"bin": binned.bin, "x": binned.x, "y": binned.y, "lo": low, "hi": high})
    stats = frame.groupby("bin", sort=True).agg(x=("x", "mean"), low=("lo", "min"), median=("y", "median"),
                                                  high=("hi", "max"))
    x, low, median, high = break_gaps(
        stats["x"].to_numpy(dtype=np.float64),
        stats["low"].to_numpy(dtype=np.float64),
        stats["median"].to_numpy(dtype=np.float64),
        stats["high"].to_numpy(dtype=np.float64),
        width=binned.width,
    )
    return Band(len(np.unique(binned.agent)), x, low, median, high)


def worst_agents(binned: Binned, count: int) -> npt.NDArray[np.int64]:
    """Codes of up to ``count`` agents with the highest peak, worst first (ties: by name)."""
    peaks = np.full(len(binned.names), -np.inf)
    np.maximum.at(peaks, binned.agent, binned.y)
    order = np.lexsort((np.arange(len(peaks)), -peaks))
    order = order[np.isfinite(peaks[order])]
    chosen: npt.NDArray[np.int64] = order[:count].astype(np.int64)
    return chosen


def reduce_metric(prepared: Prepared, column: str, how: Reducer = "mean") -> Series:
    """The drawable form of one metric column: a line per agent, or the fleet band and worst agents.

    The choice depends on how many agents the frame holds, so every panel of a run draws alike.
    """
    binned = bin_column(prepared, column, how)
    agents = len(binned.names)
    if agents <= MAX_INDIVIDUAL:
        return Series(agent_lines(binned, np.arange(agents, dtype=np.int64)), None)
    if len(binned.agent) == 0:
        return Series((), None)
    return Series(agent_lines(binned, worst_agents(binned, TOP_N)), fleet_band(binned))


def threat_values(frame: pd.DataFrame) -> FloatArray:
    """``threat_level`` as 0-3 in frame row order (unknown text -> NaN)."""
    mapping = {level: float(index) for index, level in enumerate(THREAT_LEVELS)}
    return np.asarray(frame["threat_level"].map(mapping).to_numpy(na_value=np.nan), dtype=np.float64)


def threat_counts(binned: Binned) -> tuple[FloatArray, FloatArray]:
    """Mean time (date number) of each bin with data and, per level, how many agents were at it then.

    The counts have one row per level of :data:`THREAT_LEVELS`, for ``stackplot``; a NaN column marks
    a gap in the data (no agent reported), which ``stackplot`` leaves empty.
    """
    levels = len(THREAT_LEVELS)
    bins = int(binned.bin.max()) + 1 if len(binned.bin) else 0
    counts = np.bincount(binned.bin * levels + binned.y.astype(np.int64), minlength=bins * levels)
    counts = counts.reshape(bins, levels)
    present = counts.sum(axis=1) > 0
    x_sum = np.bincount(binned.bin, weights=binned.x, minlength=bins)
    x = x_sum[present] / counts.sum(axis=1)[present]
    broken = break_gaps(x, *counts[present].T.astype(np.float64), width=binned.width)  # an outage is a gap
    return broken[0], np.vstack(broken[1:]) if len(broken) > 1 else np.zeros((levels, 0))


def without_values(prepared: Prepared, column: str) -> list[str]:
    """Agents with no value at all of ``column`` in the frame (e.g. SSH failures: not monitored)."""
    values = pd.to_numeric(prepared.frame[column], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    has_value = np.zeros(len(prepared.names), dtype=bool)
    has_value[prepared.codes[~np.isnan(values)]] = True
    return [prepared.names[code] for code in np.flatnonzero(~has_value).tolist()]


def no_sensor(prepared: Prepared) -> dict[str, str]:
    """Agents with no temperature at all in the frame, each with the last reason it gave (or "")."""
    frame = prepared.frame
    temperature = pd.to_numeric(frame["cpu_temperature"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
    has_value = np.zeros(len(prepared.names), dtype=bool)
    has_value[prepared.codes[~np.isnan(temperature)]] = True
    if has_value.all():
        return {}
    reasons = frame["temperature_reason"].to_numpy(dtype=object)
    with_reason = np.flatnonzero(~has_value[prepared.codes] & pd.notna(reasons))[::-1]
    last_codes, first = np.unique(prepared.codes[with_reason], return_index=True)
    last = dict(zip(last_codes.tolist(), reasons[with_reason[first]].tolist(), strict=True))
    return {prepared.names[code]: _text(last.get(code)) for code in np.flatnonzero(~has_value).tolist()}


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
