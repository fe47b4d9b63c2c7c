"""Months of history in a real MariaDB: secure-viz draws two months from hourly trends and a hundred days
from 6-hour ones, with the numbers of the raw path, and one agent's months as well."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from storage import Batch
from storage.config import StorageConfig
from storage.mysql import MySQLStore
from storage.trends import HOURLY, SIX_HOURS
from tests.plugins.mariadb import MariaDBServer
from tests.storage.test_trends_mysql import make_samples
from tests.viz.test_resolution import RawOnly
from viz import resolution
from viz.cli import main
from viz.series import Window, bin_column, prepare

pytestmark = pytest.mark.mysql

DAYS = 101
DAY = 86_400.0
INTERVAL = 1200.0
PER_DAY = int(DAY / INTERVAL)


@pytest.fixture(scope="module")
def months(mariadb: MariaDBServer) -> Iterator[tuple[MySQLStore, float]]:
    mariadb.start()
    mariadb.reset_database()
    end = float(np.floor(__import__("time").time() / 3600) * 3600)
    start = end - DAYS * DAY
    store = MySQLStore(StorageConfig.model_validate(mariadb.storage_section()))
    samples = sorted(make_samples(4, DAYS * 24, INTERVAL, seed=17, start=start), key=lambda s: s.timestamp)
    per_day = 4 * PER_DAY
    for first in range(0, len(samples), per_day):  # a day per write: the collector after an outage
        store.write(Batch(samples=samples[first : first + per_day]))
    try:
        yield store, end
    finally:
        store.close()


def test_two_months_from_hourly_trends_equal_the_raw_path(months: tuple[MySQLStore, float]) -> None:
    store, end = months
    window = Window(end - 59 * DAY, end)
    drawn = resolution.load(store, window, None)
    raw = resolution.load(RawOnly(store), window, None)
    assert drawn.level == HOURLY and len(drawn.frame) <= 4 * (59 * 24 // 4 + 2)  # 4-hour bins, merged by MariaDB
    assert len(raw.frame) == 4 * 59 * PER_DAY
    a = prepare(drawn.frame, window, align=3600, rolled=True)
    b = prepare(raw.frame, window, align=3600)
    for column in ("cpu_usage", "memory_usage", "load_1", "cpu_temperature", "ssh_failures", "security_issues"):
        got, want = bin_column(a, column), bin_column(b, column)
        np.testing.assert_allclose(got.y, want.y, rtol=1e-5, err_msg=column)  # FLOAT columns: 6 digits
        np.testing.assert_allclose(got.high, want.high, rtol=1e-5, err_msg=column)  # type: ignore[arg-type]


@pytest.mark.parametrize("agent", [None, "srv-01"])
def test_a_hundred_days_from_six_hour_trends_equal_the_raw_path(months: tuple[MySQLStore, float],
                                                                agent: str | None) -> None:
    """Drawn from trends_6h; the last bin comes from hourly trends and raw samples."""
    store, end = months
    # starts on a 6-hour boundary (the bucket a window starts in is drawn whole: viz.resolution), ends inside
    # an hour
    first = float(np.floor((end - 1800 - 100 * DAY) / SIX_HOURS.width) * SIX_HOURS.width)
    window = Window(first, end - 1800)
    drawn = resolution.load(store, window, agent)
    raw = resolution.load(RawOnly(store), window, agent)
    assert drawn.level == SIX_HOURS and drawn.resolution == "6-hour trends"
    step = resolution.step_for(window, SIX_HOURS)
    assert step % SIX_HOURS.width == 0  # whole 6-hour buckets per bin
    a = prepare(drawn.frame, window, align=int(step), rolled=True)
    b = prepare(raw.frame, window, align=int(step))
    for column in ("cpu_usage", "memory_usage", "load_1", "cpu_temperature", "ssh_failures", "security_issues"):
        got, want = bin_column(a, column), bin_column(b, column)
        assert got.bin.tolist() == want.bin.tolist() and len(got.bin) >= 190, column
        np.testing.assert_allclose(got.y, want.y, rtol=1e-5, err_msg=column)  # FLOAT columns: 6 digits
        np.testing.assert_allclose(got.low, want.low, rtol=1e-5, err_msg=column)  # type: ignore[arg-type]
        np.testing.assert_allclose(got.high, want.high, rtol=1e-5, err_msg=column)  # type: ignore[arg-type]


def test_secure_viz_draws_the_fleet_s_and_one_agent_s_months(months: tuple[MySQLStore, float], tmp_path: Path,
                                                            mariadb: MariaDBServer,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "collector.json"
    config.write_text(json.dumps({"storage": mariadb.storage_section()}))
    for agent in (None, "srv-02"):
        out = tmp_path / f"out-{agent}"
        args = ["--config", str(config), "--plot", "all", "--hours", str(DAYS * 24), "--output-dir", str(out)]
        code = main([*args, "--agent", agent] if agent else args)
        assert code == 0, capsys.readouterr().err
        assert (out / "index.html").exists() and (out / "security.png").stat().st_size > 10_000
        assert ("srv-03" in (out / "index.html").read_text()) is (agent is None)
