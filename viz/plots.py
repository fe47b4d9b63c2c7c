"""One drawing function per plot, onto a Matplotlib ``Figure`` (no pyplot, no global backend state).

Every text that came from storage (agent names, temperature reasons) goes through :func:`plain` so
that an agent cannot make Matplotlib parse mathtext or break the layout; notes are wrapped to stay
inside their axes. Counts (issues, SSH failures, agents) get whole-number ticks; an outage is a gap in
every line, the threat level's steps included.

The time axis is the prepared window's (:func:`viz.series.focus`: the window asked for, or a narrower
one when the data starts later); the subtitle names the window asked for and the time the data starts.
"""

from __future__ import annotations

import functools
import re
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
from matplotlib import dates as mdates
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, MaxNLocator, ScalarFormatter

from storage.catalog import METRICS, Metric, by_name
from viz.config import DEFAULT_TEMPERATURE_THRESHOLD, PlotThresholds
from viz.series import (
    MAX_INDIVIDUAL,
    THREAT_LEVELS,
    Prepared,
    Series,
    Window,
    bin_column,
    break_gaps,
    no_sensor,
    reduce_metric,
    threat_counts,
    threat_values,
    to_datenum,
    without_values,
)

DPI = 100
WIDE = (11.0, 5.0)
"""Inches of a one-panel plot: 1100 x 500 px at ``DPI``."""
TALL = (11.0, 9.0)
"""Inches of a three-panel plot: 1100 x 900 px at ``DPI``."""
MAX_LABEL = 32
MAX_LEGEND_LABEL = 22
"""Agent names longer than this are shortened in legends (with "…") so the legend fits its margin."""
MAX_NOTED = 4
"""Agents named one by one in the "no sensor" note; the rest are counted."""

THREAT_COLORS = ("#4caf50", "#fdd835", "#fb8c00", "#e53935")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


class PlotInput(NamedTuple):
    """Everything a drawing function reads: the prepared samples and the thresholds.

    ``asked``: the window the user asked for, when the samples were prepared over a narrower one
    (:func:`viz.series.focus`: the data starts later); the subtitle names both.
    """

    prepared: Prepared
    thresholds: PlotThresholds
    asked: Window | None = None
    resolution: str = "raw samples"
    """What the lines were drawn from (:func:`viz.resolution.Drawable.resolution`), named in the subtitle."""

    @property
    def window(self) -> Window:
        return self.prepared.window


AxesFor = Callable[[int], tuple[Figure, list[Axes]]]
"""Given a panel count, a figure of the plot's size and its (empty) axes, stacked top to bottom."""


class PlotSpec(NamedTuple):
    name: str
    title: str
    size: tuple[float, float]
    draw: Callable[[AxesFor, PlotInput], None]
    cost: float = 1.0
    """Rough drawing time relative to a one-panel plot, to share work between processes."""

    @property
    def pixels(self) -> tuple[int, int]:
        """(width, height) of the PNG."""
        return round(self.size[0] * DPI), round(self.size[1] * DPI)


def plain(text: str, limit: int = MAX_LABEL) -> str:
    """Untrusted text as literal Matplotlib text: one line, bounded, no mathtext."""
    flat = _UNSAFE.sub(" ", text)
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    # Matplotlib parses mathtext only when a string holds unescaped "$" pairs; escaping every "$"
    # (a backslash before a "$" included) leaves none, and Matplotlib shows each "\$" as "$".
    return flat.replace("$", r"\$")


def _subtitle(names: tuple[str, ...], window: Window, data_from: float | None, resolution: str = "raw samples") -> str:
    who = f"agent {plain(names[0])}" if len(names) == 1 else f"{len(names)} agents"
    until = datetime.fromtimestamp(window.end, UTC).strftime("%Y-%m-%d %H:%M UTC")
    hours = window.span / 3600.0
    text = f"{who}, last {hours:g} h until {until}"
    if data_from is not None:  # the axis starts with the data, not with the window
        text += f"; data from {datetime.fromtimestamp(data_from, UTC).strftime('%H:%M:%S UTC')}"
    return f"{text}; drawn from {resolution}"


def new_axes(fig: Figure, panels: int) -> list[Axes]:
    """``panels`` axes stacked on ``fig`` sharing their x axis."""
    return list(fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0])


def reset_axes(ax: Axes) -> None:
    """Empty ``ax`` for the next plot of the same shape: data artists, legend, limits, y ticks, colours.

    The axis objects (and their ticks) stay, so a reused figure skips creating them again.
    """
    for artist in (*ax.lines, *ax.collections, *ax.texts, *ax.patches, *ax.images):
        artist.remove()
    if ax.legend_ is not None:
        ax.legend_.remove()
    ax.relim()
    ax.set_autoscaley_on(True)
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_ylabel("")
    ax.set_xlabel("")
    ax.set_prop_cycle(None)


@functools.lru_cache(maxsize=16)
def time_ticks(start: float, end: float) -> tuple[list[float], list[str], str]:
    """The time axis's ticks, labels and offset text (date numbers ``start`` to ``end``).

    Placed by ``AutoDateLocator`` and labelled by ``ConciseDateFormatter`` once per window: every panel
    of every plot has the same time axis, and locating and formatting it again per panel costs time.
    """
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)  # type: ignore[no-untyped-call]  # untyped upstream
    formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]  # untyped upstream
    first, last = mdates.num2date(start), mdates.num2date(end)  # type: ignore[no-untyped-call]  # untyped upstream
    ticks = [float(tick) for tick in locator.tick_values(first, last)]  # type: ignore[no-untyped-call]  # untyped
    labels = [str(label) for label in formatter.format_ticks(ticks)]  # type: ignore[no-untyped-call]  # untyped upstream
    return ticks, labels, str(formatter.get_offset())  # type: ignore[no-untyped-call]  # untyped upstream


def _setup(axes_for: AxesFor, title: str, data: PlotInput, panels: int) -> list[Axes]:
    fig, axes = axes_for(panels)
    fig.subplots_adjust(left=0.07, right=0.78, top=0.9 if panels == 1 else 0.93, bottom=0.1, hspace=0.25)
    asked = data.asked or data.window
    data_from = float(np.min(data.prepared.timestamp)) if data.window.start > asked.start else None
    fig.suptitle(f"{title}\n{_subtitle(data.prepared.names, asked, data_from, data.resolution)}", fontsize="medium")
    start, end = float(to_datenum(data.window.start)), float(to_datenum(data.window.end))
    ticks, labels, offset = time_ticks(start, end)
    for ax in axes:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.set_xlim(start, end)
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        formatter = FixedFormatter(labels)
        formatter.set_offset_string(offset)
        ax.xaxis.set_major_formatter(formatter)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("time (UTC)")
    return axes


FEW_POINTS = 5
"""A line with at most this many points gets a marker on each: a few polls are a short dash otherwise."""


def _lonely_markers(y: npt.NDArray[np.float64]) -> dict[str, Any]:
    """Marker options for points with no finite neighbour: a line through them alone draws nothing,
    so a short history (a few polls) or an isolated sample would otherwise vanish from the plot."""
    finite = np.isfinite(y)
    before = np.concatenate(([False], finite[:-1]))
    after = np.concatenate((finite[1:], [False]))
    lonely = np.flatnonzero(finite if finite.sum() <= FEW_POINTS else finite & ~before & ~after)
    if len(lonely) == 0:
        return {}
    return {"marker": "o", "markersize": 4, "markevery": lonely.tolist()}


def agent_color(names: tuple[str, ...], name: str) -> str | None:
    """An agent's colour, the same in every panel and plot (its place among the agents drawn)."""
    return f"C{names.index(name) % 10}" if name in names else None


def _draw_series(ax: Axes, series: Series, what: str, names: tuple[str, ...] = ()) -> None:
    if series.band is not None:
        band = series.band
        ax.fill_between(band.x, band.low, band.high, color="0.6", alpha=0.35, lw=0,
                        label=f"min-max of {band.agents} agents")
        ax.plot(band.x, band.median, color="black", lw=1.8, label="median", zorder=3,
                **_lonely_markers(band.median))
    for line in series.lines:
        label = plain(line.label, MAX_LEGEND_LABEL)
        if series.band is not None:
            label = f"{label} (peak {np.nanmax(line.y):.3g})"
        elif line.low is not None and line.high is not None:  # each agent's min-max in a bin, under its mean
            ax.fill_between(line.x, line.low, line.high, color=agent_color(names, line.label), alpha=0.15, lw=0)
        ax.plot(line.x, line.y, lw=1.1 if series.band is None else 0.9, alpha=1.0 if series.band is None else 0.85,
                label=label, color=agent_color(names, line.label), **_lonely_markers(line.y))
    if series.band is None and not series.lines:
        ax.text(0.5, 0.5, f"no {what} values reported", transform=ax.transAxes,
                ha="center", va="center", fontsize="large", color="0.35")


def _legend(ax: Axes, title: str | None = None) -> None:
    handles, _labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", title=title,
                  title_fontsize="small", frameon=False)


def _threshold(ax: Axes, value: float, label: str) -> None:
    ax.axhline(value, color="#d32f2f", ls="--", lw=1.2, label=label)


def _what(metric: Metric) -> str:
    """``disk usage`` for "Disk usage (fullest mounted disk)"; acronyms keep their case ("CPU usage")."""
    words = metric.title.split(" (")[0]
    return words if words[:2].isupper() else words[:1].lower() + words[1:]


def metric_plot(metric: Metric) -> Callable[[AxesFor, PlotInput], None]:
    """One panel of ``metric`` over time, with its threshold when it has one (storage.catalog)."""
    what = _what(metric)

    def draw(axes_for: AxesFor, data: PlotInput) -> None:
        (ax,) = _setup(axes_for, metric.title, data, 1)
        series = reduce_metric(data.prepared, metric.name, "max" if metric.sums else "mean")
        _draw_series(ax, series, what, data.prepared.names)
        limit = data.thresholds.limit(metric)
        if limit is not None:
            _threshold(ax, limit, f"threshold {limit:g}{' %' if metric.unit == '%' else metric.unit}")
        if metric.unit == "%":
            ax.set_ylim(0, 105)
        elif metric.ge is not None and metric.ge >= 0:
            ax.set_ylim(bottom=0)
        ax.set_ylabel(f"{what} ({metric.unit})" if metric.unit else what)
        if metric.integer:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
        _legend(ax, _legend_title(series))

    return draw


def _legend_title(series: Series) -> str | None:
    return f"top {len(series.lines)} by peak" if series.band is not None else None


def temperature_threshold(samples: pd.DataFrame, thresholds: PlotThresholds) -> tuple[float, str]:
    """The line to draw: configured, else the agents' own "high" limit (median), else the default."""
    configured = thresholds.limit(by_name()["cpu_temperature"])
    if configured is not None:
        return configured, "configured"
    highs = pd.to_numeric(samples["temperature_high"], errors="coerce").dropna()
    if len(highs):
        return float(highs.median()), "sensor high limit"
    return DEFAULT_TEMPERATURE_THRESHOLD, "default"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


NOTE_WIDTH = 100
"""Characters per line of a note: a one-panel plot's axes hold about this many at the note's font size."""


def _note(ax: Axes, text: str) -> None:
    """A note in the lower left corner of ``ax``, wrapped to stay inside the axes."""
    ax.text(0.01, 0.03, textwrap.fill(text, NOTE_WIDTH), transform=ax.transAxes, fontsize="small", va="bottom",
            clip_on=True, bbox={"boxstyle": "round", "fc": "#fff3e0", "ec": "#fb8c00"})


def no_sensor_note(missing: dict[str, str]) -> str:
    """ "No sensor: a (reason); b; ... (+N more)" for the agents without a temperature."""
    named = [
        plain(agent) + (f" ({plain(reason, 48)})" if reason else "")
        for agent, reason in list(missing.items())[:MAX_NOTED]
    ]
    more = len(missing) - len(named)
    tail = f"; +{more} more" if more > 0 else ""
    return f"No sensor on {_count(len(missing), 'agent')}: " + "; ".join(named) + tail


def draw_temperature(axes_for: AxesFor, data: PlotInput) -> None:
    (ax,) = _setup(axes_for, "CPU temperature", data, 1)
    series = reduce_metric(data.prepared, "cpu_temperature")
    has_values = bool(series.lines) or series.band is not None
    if has_values:
        _draw_series(ax, series, "temperature", data.prepared.names)
    value, source = temperature_threshold(data.prepared.frame, data.thresholds)
    _threshold(ax, value, f"threshold {value:g} °C\n({source})")
    missing = no_sensor(data.prepared)
    if missing:
        note = no_sensor_note(missing)
        if has_values:
            _note(ax, note)
        else:
            ax.set_ylim(0, max(value * 1.3, 1.0))
            ax.text(0.5, 0.55, "No temperature sensor", transform=ax.transAxes, ha="center",
                    fontsize="x-large", color="#e65100")
            ax.text(0.5, 0.42, textwrap.fill(note, NOTE_WIDTH), transform=ax.transAxes, ha="center",
                    va="top", fontsize="small", clip_on=True)
    ax.set_ylabel("temperature (°C)")
    _legend(ax, _legend_title(series))


def draw_load(axes_for: AxesFor, data: PlotInput) -> None:
    limit = data.thresholds.limit(by_name()["load_1"]) or 0.0
    if len(data.prepared.names) == 1:
        _draw_one_agent_load(axes_for, data, limit)
        return
    axes = _setup(axes_for, "System load", data, 3)
    for ax, column, minutes in zip(axes, ("load_1", "load_5", "load_15"), (1, 5, 15), strict=True):
        series = reduce_metric(data.prepared, column)
        _draw_series(ax, series, f"{minutes}-minute load", data.prepared.names)
        _threshold(ax, limit, f"threshold {limit:g}")
        ax.set_ylim(bottom=0)
        ax.set_ylabel(f"load {minutes} min")
        _legend(ax, _legend_title(series))


def _draw_one_agent_load(axes_for: AxesFor, data: PlotInput, limit: float) -> None:
    """One agent: its 1, 5 and 15-minute loads share one panel (a third of the drawing of three)."""
    (ax,) = _setup(axes_for, "System load", data, 1)
    drawn = False
    for column, minutes, width in (("load_1", 1, 0.9), ("load_5", 5, 1.3), ("load_15", 15, 1.8)):
        for line in reduce_metric(data.prepared, column).lines:
            ax.plot(line.x, line.y, lw=width, label=f"{minutes} min", **_lonely_markers(line.y))
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no load values reported", transform=ax.transAxes,
                ha="center", va="center", fontsize="large", color="0.35")
    _threshold(ax, limit, f"threshold {limit:g}")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("load average")
    _legend(ax)


def _draw_threat(ax: Axes, data: PlotInput) -> None:
    binned = bin_column(data.prepared, threat_values(data.prepared.frame), "max")
    ax.set_ylabel("threat level")
    if len(binned.names) <= MAX_INDIVIDUAL:
        spread = 0.06
        for code, name in enumerate(binned.names):
            rows = binned.agent == code
            offset = (code - (len(binned.names) - 1) / 2.0) * spread
            x, levels = break_gaps(binned.x[rows], binned.y[rows] + offset, width=binned.width)  # outage: gap
            ax.step(x, levels, where="post", lw=1.3, label=plain(name, MAX_LEGEND_LABEL),
                    color=agent_color(data.prepared.names, name), **_lonely_markers(levels))
        ax.set_yticks(range(len(THREAT_LEVELS)), THREAT_LEVELS)
        ax.set_ylim(-0.4, len(THREAT_LEVELS) - 0.6)
        _legend(ax)
        return
    x, counts = threat_counts(binned)
    ax.stackplot(x, counts, colors=THREAT_COLORS, labels=THREAT_LEVELS, step="post", alpha=0.85)
    ax.set_ylabel("agents per threat level")
    ax.set_ylim(0, len(binned.names))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    _legend(ax)


def draw_security(axes_for: AxesFor, data: PlotInput) -> None:
    threat_ax, issues_ax, ssh_ax = _setup(axes_for, "Security", data, 3)
    _draw_threat(threat_ax, data)
    for ax, column, label in ((issues_ax, "security_issues", "security issues"),
                              (ssh_ax, "ssh_failures", "SSH failures")):
        series = reduce_metric(data.prepared, column, "max")
        _draw_series(ax, series, label, data.prepared.names)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # counts: no 0.015 failures
        ax.set_ylabel(label)
        _legend(ax, _legend_title(series))
    unmonitored = without_values(data.prepared, "ssh_failures")
    if unmonitored:
        named = ", ".join(plain(agent) for agent in unmonitored[:MAX_NOTED])
        more = f" and {len(unmonitored) - MAX_NOTED} more" if len(unmonitored) > MAX_NOTED else ""
        _note(ssh_ax, f"SSH failures not monitored on {_count(len(unmonitored), 'agent')} "
                      f"(no auth log or journal readable): {named}{more}")


def _plots() -> list[PlotSpec]:
    """The catalog's order; temperature, load and security are drawn by their own functions above."""
    plots: list[PlotSpec] = []
    for metric in METRICS:
        if metric.name == "cpu_temperature":
            plots.append(PlotSpec("temperature", "CPU temperature", WIDE, draw_temperature))
        elif metric.name == "load_1":
            plots.append(PlotSpec("load", "System load (1, 5, 15 min)", TALL, draw_load, 2.0))
        elif metric.plot is not None:
            plots.append(PlotSpec(metric.plot.name, metric.plot.title, WIDE, metric_plot(metric)))
    plots.append(PlotSpec("security", "Security: threat level, issues, SSH failures", TALL, draw_security, 2.2))
    return plots


PLOTS: dict[str, PlotSpec] = {spec.name: spec for spec in _plots()}
"""Every plot, in the order of the dashboard; the key is the ``--plot`` choice and the PNG's stem."""
