"""What ``secure-viz`` does, as a function: query storage, draw the plots, write the dashboard."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from storage.base import Store
from storage.catalog import with_thresholds
from viz import resolution
from viz.config import DEFAULT_TEMPERATURE_THRESHOLD, PlotThresholds
from viz.dashboard import render_index
from viz.errors import NoDataError
from viz.plots import PLOTS, PlotInput
from viz.render import draw_here, helpers_drawing, plan, prepare_output_dir, write_atomic
from viz.series import Prepared, Window, focus, prepare
from viz.summary import agent_rows

log = logging.getLogger(__name__)

ALL = "all"
PLOT_CHOICES: tuple[str, ...] = (ALL, *PLOTS)
INDEX_NAME = "index.html"
STATES_PER_PLOT_UNIT = 80_000
"""Agent states the file backend reads in about the time one one-panel plot takes to draw (bench)."""


class Request(NamedTuple):
    """One run: which plot(s), over which window, for which agent (None: every agent), into which directory."""

    plot: str
    window: Window
    agent: str | None
    output_dir: Path
    refresh: int = 0  # seconds after which index.html reloads itself (0: never)


def window_for(hours: float, now: float | None = None) -> Window:
    """The last ``hours`` up to ``now`` (default: the current time)."""
    end = time.time() if now is None else now
    return Window(end - hours * 3600.0, end)


def describe(window: Window, agent: str | None) -> str:
    hours = (window.end - window.start) / 3600.0
    who = f"agent {agent}" if agent is not None else "any agent"
    return f"no samples for {who} in the last {hours:g} h"


def generate(store: Store, request: Request, thresholds: PlotThresholds, workers: int | None = None) -> list[Path]:
    """Write the requested PNG(s) (and ``index.html`` for ``all``); return the paths written.

    Raises :class:`NoDataError` when storage holds no sample for the window (and agent), before any
    file is written; :class:`storage.StorageError` from the queries; :class:`viz.OutputError`.
    While a forked helper draws its share of the plots, this process queries the states and alerts
    for the dashboard, then draws the rest; ``index.html`` is written last, once every PNG exists.
    """
    window = request.window
    started = time.perf_counter()
    drawable = resolution.load(store, window, request.agent)
    samples = drawable.frame
    if samples.empty:
        raise NoDataError(describe(window, request.agent))
    log.debug("queried %d rows (%s) in %.3f s", len(samples), drawable.resolution, time.perf_counter() - started)
    names = plot_names(request.plot)
    with_index = request.plot == ALL
    prepare_output_dir(request.output_dir)
    shown = focus(window, samples["timestamp"].to_numpy(dtype=np.float64))
    level = drawable.level
    prepared = prepare(samples, shown, align=level.width if level else None, rolled=level is not None)
    data = PlotInput(prepared, thresholds, window if shown != window else None, drawable.resolution)
    mine, *theirs = plan(names, workers, dashboard_cost(len(samples)) if with_index else 0.0)
    page = b""
    with helpers_drawing(theirs, data, request.output_dir):
        if with_index:
            latest = prepared if level is None else prepare(drawable.latest, shown)
            page = dashboard(store, request, latest, thresholds, recent_states=level is not None)
        draw_here(mine, data, request.output_dir)
    written = [request.output_dir / f"{name}.png" for name in names]
    if with_index:
        index = request.output_dir / INDEX_NAME
        write_atomic(index, page)
        written.append(index)
    log.debug("wrote %d files in %.3f s", len(written), time.perf_counter() - started)
    return written


def dashboard_cost(samples: int) -> float:
    """Rough cost of :func:`dashboard` in plot units: reading about as many states as samples."""
    return 1.0 + samples / STATES_PER_PLOT_UNIT


def table_limits(thresholds: PlotThresholds) -> dict[str, float]:
    """The thresholds the agents table marks breaches against (those the plots draw)."""
    limits: dict[str, float] = {}
    for metric in with_thresholds():
        limit = thresholds.limit(metric)
        if metric.name == "cpu_temperature" and limit is None:
            limit = DEFAULT_TEMPERATURE_THRESHOLD  # the agents' own limits differ: the table marks the default
        if limit is not None and metric.column is not None:
            limits[metric.name] = limit
    return limits


STATES_WINDOW = 86_400.0
"""Seconds of agent states the table reads on a window drawn from trends, from a store that cannot give
each agent's newest states alone (a month holds millions)."""


def dashboard(
    store: Store, request: Request, prepared: Prepared, thresholds: PlotThresholds, recent_states: bool = False
) -> bytes:
    """``index.html`` for ``request``, as bytes. ``recent_states`` (a long window drawn from trends): only
    each agent's newest state and newest ``up`` (``latest_statuses``, what the table shows), or, from a store
    without that query, the states of the last :data:`STATES_WINDOW`."""
    window = request.window
    latest = getattr(store, "latest_statuses", None) if recent_states else None
    if latest is not None:
        statuses = latest(window.start, window.end, request.agent)
    else:
        first = max(window.start, window.end - STATES_WINDOW) if recent_states else window.start
        statuses = store.query_statuses(first, window.end, request.agent)
    # From the start of history: an alert that fired before the window and never cleared is open.
    alerts = store.query_alerts(0.0, window.end, request.agent)
    rows = agent_rows(prepared, statuses, alerts, table_limits(thresholds))
    page = render_index(rows, [PLOTS[name] for name in plot_names(request.plot)], window, request.agent,
                        window.end, refresh=request.refresh, limits=table_limits(thresholds))
    return page.encode("utf-8")


def plot_names(plot: str) -> Sequence[str]:
    """The plots a ``--plot`` choice draws."""
    return list(PLOTS) if plot == ALL else [plot]
