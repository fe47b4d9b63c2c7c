"""viz draws long windows from trends: the coarsest level that keeps every line's resolution, the same
numbers as the raw path within rounding, min-max bands, and the resolution named in the subtitle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from storage import Batch
from storage.catalog import METRICS
from storage.file import FileStore
from storage.memory import MemoryStore
from storage.trends import FIVE_MINUTES, HOURLY, SIX_HOURS, Level, empty, in_steps, rollup
from tests.storage.test_trends_mysql import T0, assert_rollups_equal, make_samples
from viz import resolution
from viz.cli import main
from viz.plots import _subtitle
from viz.series import Window, bin_column, prepare, reduce_metric

END = T0 + 3 * 86_400.0


class RawOnly:
    """A store whose trends are missing: viz falls back to the raw path (today's behaviour)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def query_trends(self, *_args: Any, **_kwargs: Any) -> pd.DataFrame:
        return empty()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> FileStore:
    path = tmp_path_factory.mktemp("res") / "metrics_data.json"
    store = FileStore(path, fsync=False)
    samples = sorted(make_samples(8, 72, 60.0, seed=13), key=lambda s: s.timestamp)
    for first in range(0, len(samples), 8 * 30):  # half-hour batches
        store.write(Batch(samples=samples[first : first + 8 * 30]))
    store.close()
    return FileStore(path, readonly=True)


@pytest.mark.parametrize(("hours", "want"), [(1, None), (24, None), (33.4, FIVE_MINUTES), (168, FIVE_MINUTES),
                                             (400, HOURLY), (720, HOURLY), (2399, HOURLY), (2400, SIX_HOURS),
                                             (8760, SIX_HOURS)])
def test_the_coarsest_level_that_keeps_full_resolution(hours: float, want: object) -> None:
    window = Window(END - hours * 3600, END)
    assert resolution.choose(window) == want
    if want is not None:
        assert window.span / FIVE_MINUTES.width >= 400  # never fewer than MAX_BINS points per line


@pytest.mark.parametrize(("hours", "agent"), [(48, None), (48, "srv-03"), (70, None)])
def test_trends_draw_the_numbers_the_raw_path_draws(stored: FileStore, hours: float, agent: str | None) -> None:
    window = Window(END - hours * 3600, END - 1800)  # ends inside an hour: the open bucket comes from raw
    assert_drawn_as_raw(stored, window, agent, FIVE_MINUTES)


@pytest.fixture(scope="module")
def months(tmp_path_factory: pytest.TempPathFactory) -> FileStore:
    """Three agents over 101 days at 30 minutes, stored a day per write as a collector would."""
    path = tmp_path_factory.mktemp("months") / "metrics_data.json"
    store = FileStore(path, fsync=False)
    samples = sorted(make_samples(3, 24 * 101, 1800.0, seed=5), key=lambda s: s.timestamp)
    for first in range(0, len(samples), 3 * 48):
        store.write(Batch(samples=samples[first : first + 3 * 48]))
    store.close()
    return FileStore(path, readonly=True)


@pytest.mark.parametrize("agent", [None, "srv-01"])
def test_a_window_of_months_is_drawn_from_six_hour_trends_as_the_raw_path_draws(
    months: FileStore, agent: str | None
) -> None:
    """Over 100 days: 6-hour rollups (the file backend merges its hourly segments), the window's last bin from
    hourly rollups and raw samples after them; bins of whole days, equal to the raw path's."""
    end = T0 + 101 * 86_400.0 - 5400  # inside an hour of the last day: its bin comes from hourly and raw
    window = Window(end - 2424 * 3600, end)
    assert_drawn_as_raw(months, window, agent, SIX_HOURS)


def assert_drawn_as_raw(store: Any, window: Window, agent: str | None, level: Level) -> None:
    drawn = resolution.load(store, window, agent)
    raw = resolution.load(RawOnly(store), window, agent)
    assert drawn.level == level and raw.level is None
    assert len(drawn.frame) < len(raw.frame) / 4
    step = resolution.step_for(window, level)
    rolled = prepare(drawn.frame, window, align=int(step), rolled=True)
    plain = prepare(raw.frame, window, align=int(step))
    assert rolled.width == plain.width == step
    for metric in METRICS:
        for how in ("mean", "max"):
            a = bin_column(rolled, metric.name, how)
            b = bin_column(plain, metric.name, how)
            assert a.agent.tolist() == b.agent.tolist() and a.bin.tolist() == b.bin.tolist(), metric.name
            np.testing.assert_allclose(a.y, b.y, rtol=1e-9, err_msg=f"{metric.name} {how}")
            np.testing.assert_allclose(a.low, b.low, rtol=1e-12, err_msg=metric.name)  # type: ignore[arg-type]
            np.testing.assert_allclose(a.high, b.high, rtol=1e-12, err_msg=metric.name)  # type: ignore[arg-type]
            assert np.all(np.abs(a.x - b.x) <= rolled.width / 2)
    threat = bin_column(rolled, np.asarray(drawn.frame["threat_level"].map(
        {"none": 0.0, "low": 1.0, "medium": 2.0, "high": 3.0})), "max")
    threat_raw = bin_column(plain, np.asarray(raw.frame["threat_level"].map(
        {"none": 0.0, "low": 1.0, "medium": 2.0, "high": 3.0})), "max")
    np.testing.assert_array_equal(threat.y, threat_raw.y)


def test_lines_from_trends_carry_min_max_bands(stored: FileStore) -> None:
    window = Window(END - 48 * 3600, END)
    drawn = resolution.load(stored, window, None)
    series = reduce_metric(prepare(drawn.frame, window, align=300, rolled=True), "cpu_usage")
    assert series.band is not None  # 8 agents: the fleet band is the lowest and highest any agent had
    assert np.nanmin(series.band.low) < np.nanmin(series.band.median) < np.nanmax(series.band.high)
    one = reduce_metric(prepare(resolution.load(stored, window, "srv-01").frame, window, align=300, rolled=True),
                        "cpu_usage")
    (line,) = one.lines
    assert line.low is not None and line.high is not None
    finite = np.isfinite(line.y)
    assert np.all(line.low[finite] <= line.y[finite]) and np.all(line.y[finite] <= line.high[finite])
    assert np.any(line.low[finite] < line.high[finite])


def test_the_subtitle_names_the_resolution() -> None:
    text = _subtitle(("a", "b"), Window(END - 720 * 3600, END), None, resolution.describe(HOURLY))
    assert text.endswith("drawn from 1-hour trends")
    assert resolution.describe(FIVE_MINUTES) == "5-minute trends"
    assert _subtitle(("a",), Window(END - 3600, END), None).endswith("drawn from raw samples")


def test_a_window_without_trends_is_drawn_from_raw_samples() -> None:
    memory = MemoryStore()
    memory.write(Batch(samples=make_samples(1, 3, 60.0)))
    window = Window(T0, T0 + 72 * 3600)
    assert resolution.load(RawOnly(memory), window, None).resolution == "raw samples"
    assert resolution.load(memory, window, None).resolution == "5-minute trends"


def test_secure_viz_draws_a_long_window_from_trends(stored: FileStore, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "collector.json"
    config.write_text(json.dumps({"storage": {"type": "file", "json_file": str(stored.json_file)}}))
    hours = (pd.Timestamp.now(tz="UTC").timestamp() - T0) / 3600 + 1
    code = main(["--config", str(config), "--plot", "all", "--hours", f"{hours:.0f}",
                 "--output-dir", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    index = (tmp_path / "out" / "index.html").read_text()
    assert "srv-07" in index
    assert (tmp_path / "out" / "cpu.png").stat().st_size > 10_000


def test_the_file_backend_merges_its_hourly_segments_as_six_hour_rollups(months: FileStore) -> None:
    """Its 6-hour level is the hourly one merged (by bucket, and straight into a window's bins): the numbers
    of the samples rolled up by six hours."""
    raw = months.query_samples(0, T0 + 102 * 86_400.0)
    want = rollup(raw, SIX_HOURS.width)
    start, end = T0 + 3 * 3600 + 100, T0 + 40 * 86_400.0 + 7 * 3600  # neither on a 6-hour boundary
    bucket = want["bucket"].to_numpy(dtype=np.float64)
    assert_rollups_equal(months.query_trends(SIX_HOURS, start, end),
                         want.loc[(bucket <= end) & (bucket + SIX_HOURS.width > start)])
    for agent in (None, "srv-02"):
        mine = want if agent is None else want.loc[want["agent"] == agent]
        assert_rollups_equal(months.query_trends(SIX_HOURS, start, end, agent, 86_400.0),
                             in_steps(mine, start, end, 86_400.0))
