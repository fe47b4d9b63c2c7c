"""A metric declared at run time flows through every part, as any metric does (run by test_add_a_metric.py).

The process that runs this file imported :mod:`tests.addmetric.declare` first: one declaration and one
probe, nothing else. A real agent answers the metric, the real collector validates, stores (files and
MariaDB), alerts and exports it, and viz draws it and shows it in the dashboard's table.
"""

from __future__ import annotations

import contextlib
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from secure_agent.lifecycle import Agent
from secure_agent.metrics import MetricsService
from secure_collector import cli
from secure_collector.alertstate import METRIC_PATTERN
from storage.factory import open_store
from storage.trends import FIVE_MINUTES, HOURLY
from tests.addmetric.declare import FILE, NAME
from tests.collector.helpers import WIDE, collector_data, load, write_config
from tests.plugins.agent import agent_with_service
from tests.plugins.mariadb import MariaDBServer
from tests.plugins.pki import TestPKI
from viz import cli as viz_cli

VALUE = 75.0  # over the declared threshold of 50: a warning (critical from 75 + (100 - 50) / 2 = 75)


@contextlib.contextmanager
def agent_reading(test_pki: TestPKI, folder: Path) -> Iterator[tuple[Agent, MetricsService]]:
    proc = folder / "proc"
    (proc / FILE).parent.mkdir(parents=True)
    (proc / FILE).write_text(f"{VALUE}\n")
    with agent_with_service(test_pki, folder / "agent", proc_root=proc) as running:
        yield running


def _once(folder: Path, data: dict[str, object]) -> None:
    folder.mkdir(exist_ok=True)
    code = cli.main(["--config", str(write_config(folder, data)), "--once"])
    assert code == 0, "every agent answered"


def test_the_declared_metric_is_answered_validated_stored_alerted_drawn_and_exported(
    test_pki: TestPKI, mariadb: MariaDBServer, tmp_path: Path
) -> None:
    with agent_reading(test_pki, tmp_path) as (agent, service):
        polled = [("localhost", agent.address[0], agent.address[1])]
        assert service.snapshot()[NAME] == VALUE  # the agent answers it (background reading)

        # files
        files = collector_data(test_pki, tmp_path / "files", polled)
        _once(tmp_path / "files", files)
        store = open_store(load(files).storage, readonly=True)
        samples = store.query_samples(*WIDE)
        assert list(samples[NAME]) == [VALUE]
        alerts = store.query_alerts(*WIDE)
        fired = alerts[alerts["metric"] == NAME]
        assert list(zip(fired["severity"], fired["threshold"], strict=True)) == [("critical", 50.0)]
        assert re.fullmatch(METRIC_PATTERN, NAME)  # the alert state file keeps it
        trend = store.query_trends(FIVE_MINUTES, *WIDE)  # its rollups, with every other metric's
        assert list(trend[NAME]) == [VALUE] and list(trend[f"{NAME}_n"]) == [1]

        # MariaDB, on a table made before the metric existed: the store adds its column
        mariadb.reset_database()
        mysql = collector_data(test_pki, tmp_path / "mysql", polled, storage=mariadb.storage_section())
        _once(tmp_path / "mysql", mysql)
        with contextlib.closing(mariadb.root_connection()) as conn, conn.cursor() as cursor:
            cursor.execute(f"ALTER TABLE `{mariadb.database}`.`metrics` DROP COLUMN `{NAME}`")
            for level in ("5m", "1h"):  # and the trend tables made before it
                drops = ", ".join(f"DROP COLUMN `{NAME}{suffix}`" for suffix in ("", "_min", "_max", "_n"))
                cursor.execute(f"ALTER TABLE `{mariadb.database}`.`trends_{level}` {drops}")
        _once(tmp_path / "mysql", mysql)
        reader = open_store(load(mysql).storage, readonly=True)
        rows = reader.query_samples(*WIDE)
        assert len(rows) == 2 and rows[NAME].isna().sum() == 1 and list(rows[NAME].dropna()) == [VALUE]
        trend = reader.query_trends(HOURLY, *WIDE)
        # (the two runs may straddle an hour: then the first run's bucket keeps no value of it)
        assert list(trend[NAME].dropna()) == [VALUE] and trend[f"{NAME}_n"].sum() == 1 and trend["count"].sum() == 2

        # viz: its own plot, and a column of the dashboard's table
        out = tmp_path / "viz"
        config = write_config(tmp_path / "files", files)
        for plot in ("handles", "all"):
            argv = ["--config", str(config), "--plot", plot, "--hours", "1", "--output-dir", str(out)]
            assert viz_cli.main(argv) == 0
        assert (out / "handles.png").stat().st_size > 1000
        page = (out / "index.html").read_text()
        assert "<th>Handles</th>" in page and "75 %" in page

        # the exporter of a running collector
        served = collector_data(test_pki, tmp_path / "served", polled, exporter={"listen": "127.0.0.1:0"})
        (tmp_path / "served").mkdir()
        collector = cli.build(cli._arguments(["--config", str(write_config(tmp_path / "served", served))]), [])
        try:
            collector.poller.run(max_sweeps=1)
            assert collector.exporter is not None
            host, port = collector.exporter.address
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as answer:
                text = answer.read().decode()
        finally:
            collector.close()
        assert f'secure_monitor_{NAME}{{agent="localhost"}} 75.0' in text

