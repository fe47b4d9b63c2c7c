"""The ``secure-collector`` program as a user runs it: a subprocess, its exit codes, its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI

RUN_TIMEOUT = 60


def _program() -> list[str]:
    script = Path(sys.executable).parent / "secure-collector"
    return [str(script)] if script.exists() else [sys.executable, "-m", "secure_collector"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*_program(), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def test_once_exit_codes_and_status_lines(test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path) -> None:
    good = start_agent(test_pki)
    gone = start_agent(test_pki)
    gone.stop()
    only_good = write_config(
        tmp_path, collector_data(test_pki, tmp_path, [("localhost", good.host, good.port)]), "a.json"
    )
    result = _run("--config", str(only_good), "--once")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["localhost", "up"]
    assert "Traceback" not in result.stderr

    both = collector_data(test_pki, tmp_path, [("localhost", good.host, good.port), ("gone", gone.host, gone.port)])
    result = _run("--config", str(write_config(tmp_path, both, "b.json")), "--once")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [["localhost", "up"], ["gone", "unreachable"]]
    assert "ECONNREFUSED" in lines[1]
    samples = read_store(load(both)).query_samples(*WIDE)
    assert set(samples["agent"]) == {"localhost"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"poll_interval": "soon"}, "poll_interval"),
        ({"agents": []}, "agents"),
        ({"surprise": 1}, "surprise: unknown key"),
        ({"agents": [{"name": "../etc", "host": "127.0.0.1", "port": 1}]}, "agents[0].name"),
        ({"tls": {"cert": "/nonexistent/collector.crt"}}, "/nonexistent/collector.crt"),
        ({"hmac": {"key_file": "/nonexistent/collector.hmac"}}, "/nonexistent/collector.hmac"),
        ({"alert_command": ["/nonexistent/notify"]}, "alert_command"),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(
    test_pki: TestPKI, tmp_path: Path, change: dict[str, object], expected: str
) -> None:
    data = collector_data(test_pki, tmp_path, [("localhost", "127.0.0.1", 9)], **change)
    path = write_config(tmp_path, data)
    result = _run("--config", str(path), "--once")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert str(path) in lines[0] or expected.startswith("/nonexistent")
    assert "Traceback" not in result.stderr


def test_unreadable_config_and_bad_shard(test_pki: TestPKI, tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    result = _run("--config", str(missing), "--once")
    assert result.returncode == 2 and str(missing) in result.stderr
    (tmp_path / "broken.json").write_text("{not json")
    result = _run("--config", str(tmp_path / "broken.json"))
    assert result.returncode == 2 and "not valid JSON" in result.stderr
    path = write_config(tmp_path, collector_data(test_pki, tmp_path, [("localhost", "127.0.0.1", 9)]))
    result = _run("--config", str(path), "--once", "--shard", "3/2")
    assert result.returncode == 2 and "--shard" in result.stderr and "Traceback" not in result.stderr


def test_help() -> None:
    result = _run("--help")
    assert result.returncode == 0 and "--shard" in result.stdout and "--once" in result.stdout


def test_sigterm_stops_cleanly_after_storing(test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path) -> None:
    agent = start_agent(test_pki, security={"rate_limit": {"per_second": 1000, "burst": 1000}})
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)], poll_interval=0.1)
    path = write_config(tmp_path, data)
    process = subprocess.Popen([*_program(), "--config", str(path)], stderr=subprocess.PIPE, text=True)
    statuses = Path(data["storage"]["json_file"]).with_name("metrics.status.json")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            if statuses.exists() and statuses.read_text().count("\n") >= 2:
                break
            time.sleep(0.05)  # polling an observable condition, bounded by the deadline
        assert process.poll() is None, "collector exited early"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr
    assert "SIGTERM received" in stderr and "Traceback" not in stderr
    lines = [json.loads(line) for line in statuses.read_text().splitlines()]
    assert len(lines) >= 2 and {line["state"] for line in lines} == {"up"}
    assert not list(Path(data["spool_dir"]).glob("*.spool"))
    assert os.path.exists(data["storage"]["json_file"])


def test_the_wrong_agent_behind_a_port_is_a_name_mismatch(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path
) -> None:
    # two agents on one host, both certified for 127.0.0.1; the collector's entry for a1 has a2's port
    pki = make_pki(tmp_path / "pki", agents=["a1=localhost,127.0.0.1", "a2=localhost,127.0.0.1"])
    a2 = start_agent(pki, "a2")
    data = collector_data(pki, tmp_path, [("a1", a2.host, a2.port)])
    result = _run("--config", str(write_config(tmp_path, data)), "--once")
    assert result.returncode == 1
    line = result.stdout.strip()
    assert line.split()[:2] == ["a1", "auth_refused"]
    assert f"name mismatch: the agent at {a2.host}:{a2.port} is 'a2', not 'a1'" in line
    assert "request token refused" not in line
