"""The reduction from samples to drawable lines: bounded points, gaps, fleet aggregation, sensors."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.models import SAMPLE_COLUMNS
from viz.series import (
    MAX_BINS,
    MAX_INDIVIDUAL,
    TOP_N,
    Window,
    bin_column,
    no_sensor,
    prepare,
    reduce_metric,
    threat_counts,
    threat_values,
    to_datenum,
)

END = 1_700_000_000.0


def frame(agents: list[str], *, hours: float = 24.0, step: float = 30.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ticks = np.arange(END - hours * 3600 + step, END + 1, step)
    rows = len(ticks) * len(agents)
    data = {column: np.full(rows, np.nan) for column in SAMPLE_COLUMNS}
    data["agent"] = np.repeat(agents, len(ticks))
    data["timestamp"] = np.tile(ticks, len(agents))
    data["cpu_usage"] = rng.uniform(0, 100, rows)
    data["threat_level"] = rng.choice(["none", "low", "medium", "high"], rows)
    data["temperature_reason"] = np.full(rows, None, dtype=object)
    result = pd.DataFrame(data, columns=list(SAMPLE_COLUMNS))
    return result.sort_values("timestamp", kind="stable").reset_index(drop=True)


def test_a_day_at_30_s_is_drawn_with_at_most_max_bins_points() -> None:
    window = Window(END - 86_400, END)
    series = reduce_metric(prepare(frame(["a", "b"]), window), "cpu_usage")
    assert [line.label for line in series.lines] == ["a", "b"]
    for line in series.lines:
        assert 0.9 * MAX_BINS <= len(line.x) <= MAX_BINS + 1
        assert np.all(np.diff(line.x) > 0)
        assert np.nanmin(line.y) >= 0 and np.nanmax(line.y) <= 100
    assert series.band is None


def test_bin_means_are_means() -> None:
    data = frame(["a"], hours=1, step=60)
    data["cpu_usage"] = np.arange(len(data), dtype=float)
    binned = bin_column(prepare(data, Window(END - 3600, END)), "cpu_usage")
    assert len(binned.y) == len(data), "short histories keep every sample (bins follow the interval)"
    assert np.array_equal(binned.y, np.arange(len(data), dtype=float))


def test_a_gap_breaks_the_line() -> None:
    data = frame(["a"], hours=6, step=60)
    data = data[(data["timestamp"] < END - 4 * 3600) | (data["timestamp"] > END - 2 * 3600)]
    (line,) = reduce_metric(prepare(data, Window(END - 6 * 3600, END)), "cpu_usage").lines
    gaps = np.flatnonzero(np.isnan(line.y))
    assert len(gaps) == 1
    assert to_datenum(END - 4 * 3600) < line.x[gaps[0]] < to_datenum(END - 2 * 3600)


def test_more_than_a_handful_is_a_band_plus_the_worst() -> None:
    agents = [f"h{i:02d}" for i in range(MAX_INDIVIDUAL + 4)]
    data = frame(agents, hours=2)
    data["cpu_usage"] *= 0.9
    data.loc[data["agent"] == "h07", "cpu_usage"] = 100.0
    data.loc[data["agent"] == "h03", "cpu_usage"] = 99.5
    series = reduce_metric(prepare(data, Window(END - 7200, END)), "cpu_usage")
    assert series.band is not None
    assert series.band.agents == len(agents)
    assert [line.label for line in series.lines][:2] == ["h07", "h03"]
    assert len(series.lines) == TOP_N
    finite = ~np.isnan(series.band.median)
    assert np.all(series.band.low[finite] <= series.band.median[finite])
    assert np.all(series.band.median[finite] <= series.band.high[finite])
    assert np.allclose(series.band.high[finite], 100.0)


def test_agents_without_values_are_left_out() -> None:
    data = frame(["a", "b"], hours=1)
    data.loc[data["agent"] == "b", "cpu_usage"] = np.nan
    series = reduce_metric(prepare(data, Window(END - 3600, END)), "cpu_usage")
    assert [line.label for line in series.lines] == ["a"]


def test_no_sensor_names_agents_and_their_last_reason() -> None:
    data = frame(["a", "b", "c"], hours=1)
    data.loc[data["agent"] == "a", "cpu_temperature"] = 50.0
    b_rows = data.index[data["agent"] == "b"]
    data.loc[b_rows[:5], "temperature_reason"] = "old reason"
    data.loc[b_rows[-3], "temperature_reason"] = "no thermal zone"
    assert no_sensor(prepare(data, Window(END - 3600, END))) == {"b": "no thermal zone", "c": ""}


def test_threat_counts_add_up_to_the_agents_present() -> None:
    agents = [f"h{i}" for i in range(9)]
    prepared = prepare(frame(agents, hours=2), Window(END - 7200, END))
    binned = bin_column(prepared, threat_values(prepared.frame), "max")
    x, counts = threat_counts(binned)
    assert counts.shape == (4, len(x))
    assert np.all(counts.sum(axis=0) == len(agents))


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.floats(0, 100, allow_nan=False) | st.none(), min_size=1, max_size=300),
    step=st.floats(1, 600),
    agents=st.integers(1, 12),
)
def test_lines_stay_within_the_data(values: list[float | None], step: float, agents: int) -> None:
    count = len(values)
    names = [f"n{i}" for i in range(agents)]
    data = pd.DataFrame({
        "agent": [names[i % agents] for i in range(count)],
        "timestamp": END - step * np.arange(count)[::-1],
        "cpu_usage": [np.nan if v is None else v for v in values],
    })
    window = Window(END - step * count - 1, END)
    series = reduce_metric(prepare(data, window), "cpu_usage")
    known = [v for v in values if v is not None]
    drawn = np.concatenate([line.y for line in series.lines] or [np.zeros(0)])
    drawn = drawn[~np.isnan(drawn)]
    if not known:
        assert len(drawn) == 0 and series.band is None
        return
    assert drawn.min() >= min(known) - 1e-9 and drawn.max() <= max(known) + 1e-9
    assert all(len(line.x) <= 2 * MAX_BINS + 2 for line in series.lines)
    assert all(line.x.min() >= to_datenum(window.start) for line in series.lines)


def test_untrusted_text_never_becomes_mathtext() -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from viz.plots import plain

    hostile = "$\\frac{1}{$ x \\$ y $$ \\"
    fig = Figure()
    FigureCanvasAgg(fig)
    text = fig.text(0.1, 0.5, plain(hostile, 100))
    fig.canvas.draw()
    assert text.get_text().replace("\\$", "$") == hostile
    assert plain("a\nb\x00c" + "d" * 50, 10) == "a b c" + "dddd…"
