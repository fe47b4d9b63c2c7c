"""secure-viz against a real MariaDB: the same plots and dashboard as from files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from storage import open_store
from storage.config import StorageConfig
from tests.viz.conftest import RunViz, assert_real_png, write_config
from tests.viz.fleet import HOSTILE_MESSAGE, fleet, hostile
from tests.viz.page import table_agents
from viz.plots import PLOTS

pytestmark = pytest.mark.mysql


@pytest.fixture
def mysql_config(mariadb: Any, tmp_path: Path, now: float) -> Path:
    mariadb.reset_database()
    section = mariadb.storage_section()
    store = open_store(StorageConfig.model_validate(section))
    try:
        store.write(fleet(now))
        store.write(hostile(now))
    finally:
        store.close()
    return write_config(tmp_path / "collector.json", section)


def test_every_plot_and_the_dashboard_from_mysql(run_viz: RunViz, mysql_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_viz("--config", mysql_config, "--plot", "all", "--output-dir", out)
    assert result.code == 0, result.err
    for name in PLOTS:
        assert_real_png(out / f"{name}.png", name)
    assert sorted(table_agents(out / "index.html")) == ["db-1", "edge-1", "web-1", "x--script-onerror"]
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert HOSTILE_MESSAGE not in page


@pytest.mark.parametrize("name", ["temperature", "security"])
def test_single_agent_plot_from_mysql(run_viz: RunViz, mysql_config: Path, tmp_path: Path, name: str) -> None:
    result = run_viz("--config", mysql_config, "--plot", name, "--agent", "db-1", "--output-dir", tmp_path)
    assert result.code == 0, result.err
    assert_real_png(tmp_path / f"{name}.png", name)


def test_no_data_from_mysql(run_viz: RunViz, mysql_config: Path, tmp_path: Path) -> None:
    result = run_viz("--config", mysql_config, "--plot", "cpu", "--agent", "ghost", "--output-dir", tmp_path / "o")
    assert result.code == 1
    assert result.err.startswith("secure-viz: no data: no samples for agent ghost in the last 24 h in mysql ")
    assert result.err.rstrip().endswith("(table metrics)")
    assert not (tmp_path / "o").exists()


def test_wrong_password_is_one_line_without_the_password(run_viz: RunViz, mariadb: Any, tmp_path: Path) -> None:
    wrong = "not-the-password-" + "x" * 8
    config = write_config(tmp_path / "c.json", mariadb.storage_section(mysql_password=wrong))
    result = run_viz("--config", config, "--plot", "cpu", "--output-dir", tmp_path / "o")
    assert result.code == 2, "refused credentials are a configuration problem"
    assert result.err.startswith(f"secure-viz: {config}: storage: ")
    assert "storage.mysql_user" in result.err
    assert result.err.count("\n") == 1
    assert wrong not in result.err and mariadb.password not in result.err
