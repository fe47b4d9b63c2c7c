"""secure-viz end to end against the file backend: every plot, filters, windows and failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib import image as mpimg

from storage.base import Batch
from storage.models import Alert, Sample
from tests.viz.conftest import RunViz, assert_real_png, listed, write_config, write_file_store
from tests.viz.fleet import HOSTILE_AGENT, fleet
from tests.viz.page import PageParser, table_agents, table_rows
from viz.plots import PLOTS


@pytest.mark.parametrize("name", list(PLOTS))
def test_each_plot_is_a_real_image(run_viz: RunViz, file_config: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    result = run_viz("--config", file_config, "--plot", name, "--output-dir", out)
    assert result.code == 0, result.err
    assert listed(result.out.split()) == [f"{name}.png"]
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.png"], "one PNG, no index, no temp files"
    assert_real_png(out / f"{name}.png", name)


def test_all_writes_every_plot_and_the_index(run_viz: RunViz, file_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    result = run_viz("--config", file_config, "--plot", "all", "--output-dir", out)
    assert result.code == 0, result.err
    assert result.err == ""
    expected = sorted([f"{name}.png" for name in PLOTS] + ["index.html"])
    assert listed(result.out.split()) == expected
    assert sorted(p.name for p in out.iterdir()) == expected
    for name in PLOTS:
        assert_real_png(out / f"{name}.png", name)
    assert sorted(table_agents(out / "index.html")) == ["db-1", "edge-1", "web-1", "x--script-onerror"]


def test_agent_filter(run_viz: RunViz, file_config: Path, tmp_path: Path) -> None:
    everyone, one = tmp_path / "everyone", tmp_path / "one"
    assert run_viz("--config", file_config, "--plot", "all", "--output-dir", everyone).code == 0
    result = run_viz("--config", file_config, "--plot", "all", "--agent", "db-1", "--output-dir", one)
    assert result.code == 0, result.err
    assert table_agents(one / "index.html") == ["db-1"]
    for name in PLOTS:
        assert_real_png(one / f"{name}.png", name)
        assert (one / f"{name}.png").read_bytes() != (everyone / f"{name}.png").read_bytes()


def test_agent_without_sensor_still_gets_a_temperature_plot(run_viz: RunViz, file_config: Path, tmp_path: Path) -> None:
    result = run_viz("--config", file_config, "--plot", "temperature", "--agent", "db-1", "--output-dir", tmp_path)
    assert result.code == 0, result.err
    assert_real_png(tmp_path / "temperature.png", "temperature")


def test_hours_window(run_viz: RunViz, tmp_path: Path, now: float) -> None:
    old = fleet(now - 5 * 3600, agents=("old-1",), hours=1)
    recent = fleet(now, agents=("new-1",), hours=1)
    config = write_config(tmp_path / "collector.json", write_file_store(tmp_path, old, recent))
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    assert run_viz("--config", config, "--plot", "all", "--hours", "2", "--output-dir", narrow).code == 0
    assert table_agents(narrow / "index.html") == ["new-1"]
    assert run_viz("--config", config, "--plot", "all", "--hours", "7.5", "--output-dir", wide).code == 0
    assert sorted(table_agents(wide / "index.html")) == ["new-1", "old-1"]
    result = run_viz("--config", config, "--plot", "cpu", "--hours", "2", "--agent", "old-1", "--output-dir", narrow)
    assert result.code == 1
    where = f"{tmp_path / 'data' / 'metrics_data.json'} (and its rotated backups .1 ... .2)"
    assert result.err == f"secure-viz: no data: no samples for agent old-1 in the last 2 h in {where}\n"


@pytest.mark.parametrize("agent", [None, "ghost"])
def test_no_data_exits_1_without_writing(run_viz: RunViz, tmp_path: Path, agent: str | None) -> None:
    config = write_config(tmp_path / "collector.json", write_file_store(tmp_path))
    out = tmp_path / "out"
    args = ["--config", config, "--plot", "all", "--output-dir", out] + (["--agent", agent] if agent else [])
    result = run_viz(*args)
    assert result.code == 1
    who = f"agent {agent}" if agent else "any agent"
    assert result.err.startswith(f"secure-viz: no data: no samples for {who} in the last 24 h in {tmp_path}")
    assert result.out == ""
    assert not out.exists()


def test_index_escapes_hostile_text(run_viz: RunViz, file_config: Path, tmp_path: Path) -> None:
    assert run_viz("--config", file_config, "--plot", "all", "--output-dir", tmp_path).code == 0
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(page)
    tags = {tag for tag, _ in parser.tags}
    assert "script" not in tags
    assert not [attrs for _, attrs in parser.tags if any(key.startswith("on") for key, _ in attrs)]
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "security&lt;b&gt;" in page
    assert HOSTILE_AGENT in page
    assert {src for tag, attrs in parser.tags if tag == "img" for key, src in attrs if key == "src"} == {
        f"{name}.png" for name in PLOTS
    }


def test_output_dir_that_is_a_file(run_viz: RunViz, file_config: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_viz("--config", file_config, "--plot", "cpu", "--output-dir", blocker)
    assert result.code == 1
    assert result.err.startswith(f"secure-viz: {blocker}: ")
    assert result.err.count("\n") == 1


def test_rewrites_replace_files_atomically(run_viz: RunViz, file_config: Path, tmp_path: Path) -> None:
    assert run_viz("--config", file_config, "--plot", "all", "--output-dir", tmp_path).code == 0
    inode = (tmp_path / "cpu.png").stat().st_ino
    assert run_viz("--config", file_config, "--plot", "all", "--output-dir", tmp_path).code == 0
    assert (tmp_path / "cpu.png").stat().st_ino != inode, "rewritten through a new file and os.replace"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_python_dash_m_and_help(tmp_path: Path, file_config: Path) -> None:
    helped = subprocess.run([sys.executable, "-m", "viz", "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    assert "--output-dir" in helped.stdout and "temperature" in helped.stdout
    ran = subprocess.run(
        [sys.executable, "-m", "viz", "--config", str(file_config), "--plot", "disk", "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == str(tmp_path / "disk.png")
    assert_real_png(tmp_path / "disk.png", "disk")


@pytest.mark.parametrize("blocked", sorted(PLOTS))
def test_a_plot_that_cannot_be_written_fails_the_run(
    run_viz: RunViz, file_config: Path, tmp_path: Path, blocked: str
) -> None:
    """Whichever process draws the plot (this one or the forked helper), the run fails in one line."""
    (tmp_path / f"{blocked}.png").mkdir()
    result = run_viz("--config", file_config, "--plot", "all", "--output-dir", tmp_path)
    assert result.code == 1
    assert result.err.startswith(f"secure-viz: {tmp_path / blocked}.png: cannot write: ")
    assert result.err.count("\n") == 1
    assert not (tmp_path / "index.html").exists(), "no dashboard pointing at a missing plot"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left"


def test_open_alerts_come_from_all_history(run_viz: RunViz, tmp_path: Path, now: float) -> None:
    """An alert fired days ago and never cleared is open; one fired then cleared is not."""
    recent = fleet(now, agents=("a-1", "b-1"), hours=0.5, no_sensor=())
    old = Batch(alerts=[
        Alert(agent="a-1", timestamp=now - 3 * 86_400, metric="disk_usage", value=97.0, threshold=90.0,
              severity="critical", message="disk nearly full"),
        Alert(agent="b-1", timestamp=now - 3 * 86_400, metric="disk_usage", value=95.0, threshold=90.0,
              severity="critical", message="disk nearly full"),
        Alert(agent="b-1", timestamp=now - 2 * 86_400, metric="disk_usage", value=50.0, threshold=90.0,
              severity="info", state="cleared"),
    ])
    config = write_config(tmp_path / "collector.json", write_file_store(tmp_path, old, recent))
    out = tmp_path / "out"
    assert run_viz("--config", config, "--plot", "all", "--hours", "1", "--output-dir", out).code == 0
    rows = table_rows(out / "index.html")
    assert rows["a-1"][-1].startswith("2")  # the last column: open alerts
    assert "critical disk_usage 97 (threshold 90): disk nearly full" in rows["a-1"][-1]
    assert "disk_usage" in rows["a-1"][-1] and "cpu_usage" in rows["a-1"][-1]
    assert "disk_usage" not in rows["b-1"][-1]
    assert rows["b-1"][1].startswith("timeout"), "the newest state of the agent"
    assert rows["a-1"][1].startswith("up") and "seen" in rows["a-1"][1]


@pytest.mark.parametrize("name", ["cpu", "security"])
def test_a_short_history_is_drawn_not_lost(run_viz: RunViz, tmp_path: Path, now: float, name: str) -> None:
    """Three polls seconds apart fall in one bin of an hour's window: a line through one point draws
    nothing, so such points must get a marker (the demo's first plots were empty without it)."""
    samples = [
        Sample(agent="web-1", timestamp=now - 5 + i, cpu_usage=40.0, security_issues=2, threat_level="high")
        for i in range(3)
    ]
    config = write_config(tmp_path / "collector.json", write_file_store(tmp_path, Batch(samples=samples)))
    result = run_viz("--config", config, "--plot", name, "--hours", "1", "--output-dir", tmp_path / "out")
    assert result.code == 0, result.err
    rgb = mpimg.imread(tmp_path / "out" / f"{name}.png")[..., :3]
    plot_area = rgb[:, : int(rgb.shape[1] * 0.785)]  # the legend, with its own line sample, is to the right
    blue = (plot_area[..., 2] > 0.55) & (plot_area[..., 0] < 0.3) & (plot_area[..., 1] > 0.35)
    assert int(blue.sum()) >= 10, f"{name}.png: the samples are not visible in the plot area"


def test_agent_filter_over_a_file_written_with_json_dumps_defaults(
    run_viz: RunViz, tmp_path: Path, now: float, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15: ``--agent srv-007`` said "no data" over a file written with ``json.dumps`` defaults
    (``", "`` and ``": "``), while ``--plot all`` drew srv-007. It reads what json.loads reads now, and a
    line that is not a record is counted on stderr with its file."""
    json_file = tmp_path / "data" / "metrics_data.json"
    json_file.parent.mkdir()
    lines = [
        json.dumps({"agent": name, "timestamp": now - 3600 + 60 * i, "cpu_usage": 40.0 + i, "memory_usage": 30.0,
                    "disk_usage": 50.0, "load_1": 0.5, "security_issues": 0, "threat_level": "none"})
        for i in range(30)
        for name in ("srv-007", "web-1")
    ]
    json_file.write_text("\n".join(lines) + "\nnot a record\n")
    config = write_config(tmp_path / "viz.json", {"type": "file", "json_file": str(json_file)})
    result = run_viz("--config", config, "--plot", "cpu", "--hours", "24", "--agent", "srv-007", "--output-dir",
                     tmp_path / "out")
    assert result.code == 0, result.err
    assert_real_png(tmp_path / "out" / "cpu.png", "cpu")
    assert "skipped 1 line(s) that are not records while looking for srv-007" in caplog.text  # stderr, in the CLI
