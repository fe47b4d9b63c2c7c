"""What the plots draw, read back from the Matplotlib figures: the details operators noticed (issue 21).

Counts get whole-number ticks; an outage is a gap in every line, the threat level's included; notes
stay inside their axes; swap has a plot; and the time axis starts near the data when the data covers
only part of the window (the demo's first minutes, a new agent).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from storage.frames import SAMPLES, from_rows, sample_row
from storage.models import Sample
from viz.config import PlotThresholds
from viz.plots import DPI, PLOTS, PlotInput, new_axes
from viz.series import Window, focus, prepare, to_datenum

NOW = 1_800_000_000.0
STEP = 60.0


def _frame(samples: list[Sample]) -> pd.DataFrame:
    return from_rows([sample_row(sample) for sample in samples], SAMPLES)


def _draw(name: str, samples: list[Sample], hours: float = 3.0) -> tuple[Figure, list[Axes]]:
    window = Window(NOW - hours * 3600, NOW)
    spec = PLOTS[name]
    figure = Figure(figsize=spec.size, dpi=DPI)
    FigureCanvasAgg(figure)
    axes: list[Axes] = []

    def axes_for(panels: int) -> tuple[Figure, list[Axes]]:
        axes.extend(new_axes(figure, panels))
        return figure, axes

    frame = _frame(samples)
    shown = focus(window, frame["timestamp"].to_numpy(dtype=np.float64))  # as secure-viz does
    spec.draw(axes_for, PlotInput(prepare(frame, shown), PlotThresholds(), window if shown != window else None))
    figure.canvas.draw()
    return figure, axes


def _fleet(agents: int = 2, *, outage: range = range(0), unmonitored: tuple[str, ...] = ()) -> list[Sample]:
    samples = []
    for index in range(agents):
        agent = f"agent-{index}"
        for tick in range(180):
            if agent == "agent-0" and tick in outage:
                continue
            samples.append(Sample(
                agent=agent, timestamp=NOW - (180 - tick) * STEP, cpu_usage=50.0, swap_usage=10.0 + index,
                threat_level=("none", "low", "high")[tick % 3], security_issues=tick % 2,
                ssh_failures=None if agent in unmonitored else tick % 2,
            ))
    return samples


def test_count_axes_have_whole_number_ticks() -> None:
    _, (_threat, issues, ssh) = _draw("security", _fleet())
    for ax in (issues, ssh):
        ticks = [tick for tick in ax.get_yticks() if ax.get_ylim()[0] <= tick <= ax.get_ylim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks


def test_an_outage_is_a_gap_in_the_threat_line_too() -> None:
    _, (threat, _issues, _ssh) = _draw("security", _fleet(outage=range(60, 90)))
    line = next(line for line in threat.get_lines() if line.get_label() == "agent-0")
    x, y = (np.asarray(values, dtype=float) for values in line.get_data())
    gap_start, gap_end = to_datenum(NOW - 120 * STEP), to_datenum(NOW - 90 * STEP)
    assert np.isnan(y).any(), "the step line is broken where agent-0 did not answer"
    joined = np.isfinite(y[:-1]) & np.isfinite(y[1:])  # consecutive points a segment connects
    assert np.diff(x)[joined].max() < (gap_end - gap_start) / 2, "no segment bridges the outage"


def test_notes_stay_inside_the_axes_and_name_unmonitored_agents() -> None:
    unmonitored = tuple(f"agent-{index}" for index in range(4))
    figure, (_threat, _issues, ssh) = _draw("security", _fleet(6, unmonitored=unmonitored))
    notes = [text for text in ssh.texts if "not monitored" in text.get_text()]
    assert len(notes) == 1 and "on 4 agents" in notes[0].get_text()
    renderer = figure.canvas.get_renderer()  # type: ignore[attr-defined]
    box, frame = notes[0].get_window_extent(renderer), ssh.get_window_extent(renderer)
    assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_one_agent_means_one_agent() -> None:
    from viz.plots import no_sensor_note

    assert no_sensor_note({"a": "none"}).startswith("No sensor on 1 agent:")
    assert no_sensor_note({"a": "", "b": ""}).startswith("No sensor on 2 agents:")


def test_swap_has_its_own_plot() -> None:
    _, (ax,) = _draw("swap", _fleet())
    assert sorted(str(line.get_label()) for line in ax.get_lines()) == ["agent-0", "agent-1"]
    assert ax.get_ylabel() == "swap usage (%)"


def test_the_time_axis_starts_with_data_that_covers_part_of_the_window() -> None:
    ten_minutes = [s for s in _fleet(1) if s.timestamp > NOW - 600]
    figure, (ax,) = _draw("cpu", ten_minutes, hours=1.0)
    left, right = ax.get_xlim()
    assert math.isclose(right, float(to_datenum(NOW)))
    span_minutes = (right - left) * 24 * 60
    assert 9 <= span_minutes <= 10, span_minutes  # not 60: the nine minutes of data fill the axis
    assert "data from" in figure.texts[0].get_text()
    _, (full,) = _draw("cpu", _fleet(1), hours=1.0)  # data covering the window: the window, as before
    assert math.isclose(full.get_xlim()[0], float(to_datenum(NOW - 3600)))
