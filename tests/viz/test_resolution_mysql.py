"""Months of history in a real MariaDB: secure-viz draws them from hourly trends, with the numbers of the
raw path, and one agent's month as well."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from storage import Batch
from storage.config import StorageConfig
from storage.mysql import MySQLStore
from storage.trends import HOURLY
from tests.plugins.mariadb import MariaDBServer
from tests.storage.test_trends_mysql import make_samples
from tests.viz.test_resolution import RawOnly
from viz import resolution
from viz.cli import main
from viz.series import Window, bin_column, prepare

pytestmark = pytest.mark.mysql

DAYS = 60
DAY = 86_400.0


@pytest.fixture(scope="module")
def months(mariadb: MariaDBServer) -> Iterator[tuple[MySQLStore, float]]:
    mariadb.start()
    mariadb.reset_database()
    end = float(np.floor(__import__("time").time() / 3600) * 3600)
    start = end - DAYS * DAY
    store = MySQLStore(StorageConfig.model_validate(mariadb.storage_section()))
    samples = sorted(make_samples(4, DAYS * 24, 600.0, seed=17, start=start), key=lambda s: s.timestamp)
    per_day = 4 * 144
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
    assert len(raw.frame) == 4 * 59 * 144
    a = prepare(drawn.frame, window, align=3600, rolled=True)
    b = prepare(raw.frame, window, align=3600)
    for column in ("cpu_usage", "memory_usage", "load_1", "cpu_temperature", "ssh_failures", "security_issues"):
        got, want = bin_column(a, column), bin_column(b, column)
        np.testing.assert_allclose(got.y, want.y, rtol=1e-5, err_msg=column)  # FLOAT columns: 6 digits
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
