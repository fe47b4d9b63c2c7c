"""Bad configuration and usage: one line on stderr naming the file and key, exit 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.viz.conftest import RunViz, write_config
from viz.cli import main

SECRET = "hunter2-do-not-print"


def _args(config: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["--config", config, "--plot", "cpu", "--output-dir", out, *extra]


def test_missing_file(run_viz: RunViz, tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    result = run_viz(*_args(missing, tmp_path / "out"))
    assert result.code == 2
    assert result.err == f"secure-viz: {missing}: cannot read: No such file or directory\n"
    assert not (tmp_path / "out").exists()


def test_not_json(run_viz: RunViz, tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{"storage": ')
    result = run_viz(*_args(config, tmp_path / "out"))
    assert result.code == 2
    assert result.err.startswith(f"secure-viz: {config}: not valid JSON: ")
    assert result.err.count("\n") == 1


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ([], "(top level): must be a JSON object"),
        ({"storage": "file"}, "storage: must be a JSON object"),
        ({"storage": {"type": "sqlite"}}, "storage.type: must be one of 'file' or 'mysql'"),
        ({"storage": {"json_fil": "x"}}, "storage.json_fil: unknown key"),
        ({"storage": {"rotation": {"backup_count": 0}}}, "storage.rotation.backup_count: must be at least 1"),
        ({"storage": {"type": "mysql", "mysql_password": ["x", SECRET]}}, "storage.mysql_password: must be a string"),
        ({"storage": {"type": "mysql", "mysql_port": SECRET}}, "storage.mysql_port: must be a whole number"),
        ({"thresholds": {"cpu_usage": 150}}, "thresholds.cpu_usage: must be at most 100"),
    ],
)
def test_bad_sections_name_file_and_key(run_viz: RunViz, tmp_path: Path, document: object, expected: str) -> None:
    config = tmp_path / "c.json"
    config.write_text(json.dumps(document))
    result = run_viz(*_args(config, tmp_path / "out"))
    assert result.code == 2
    assert result.err.startswith(f"secure-viz: {config}: {expected}")
    assert result.err.count("\n") == 1
    assert SECRET not in result.err
    assert "Traceback" not in result.err


def test_other_collector_keys_are_ignored(run_viz: RunViz, file_config: Path, tmp_path: Path) -> None:
    document = json.loads(file_config.read_text())
    document["tls"] = {"cert": "/nonexistent"}
    document["something_new"] = True
    config = tmp_path / "other.json"
    config.write_text(json.dumps(document))
    assert run_viz(*_args(config, tmp_path / "out")).code == 0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--hours", "0"], "argument --hours: must be more than 0"),
        (["--hours", "nan"], "argument --hours: must be more than 0"),
        (["--hours", "abc"], "argument --hours: not a number: 'abc'"),
        (["--agent", "../etc"], "argument --agent: must be an agent name"),
        (["--agent", "a" * 65], "argument --agent: must be an agent name"),
    ],
)
def test_bad_options(file_config: Path, tmp_path: Path, extra: list[str], expected: str,
                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([str(arg) for arg in _args(file_config, tmp_path / "out", *extra)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"secure-viz: error: {expected}")
    assert err.count("\n") == 1


def test_unknown_plot(tmp_path: Path, file_config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(file_config), "--plot", "pie", "--output-dir", str(tmp_path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("secure-viz: error: argument --plot: invalid choice: 'pie'")
    assert err.count("\n") == 1


def test_mysql_unreachable_is_a_storage_error(run_viz: RunViz, tmp_path: Path) -> None:
    """A MySQL store that cannot be reached: one line, exit 1, no password."""
    config = write_config(
        tmp_path / "c.json",
        {"type": "mysql", "mysql_host": "127.0.0.1", "mysql_port": 1, "mysql_password": SECRET},
    )
    result = run_viz(*_args(config, tmp_path / "out"))
    assert result.code == 1
    assert result.err.startswith("secure-viz: storage: ")
    assert result.err.count("\n") == 1
    assert SECRET not in result.err
