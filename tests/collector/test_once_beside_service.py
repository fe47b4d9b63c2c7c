"""The runbook's ``--once`` next to the running service, and ``--once`` whose sweep only reached the spool.

Beside a running collector of the same ``spool_dir``, ``--once`` polls and prints; the service's storage
(and its lock), spool and alert state stay byte for byte as they were, and the service goes on. With
storage down, ``--once`` exits 3: the agents answered, but the sweep only reached the spool.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.collector.helpers import collector_data, write_config
from tests.collector.test_cli import RUN_TIMEOUT, _program, _run
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI


def _tree(*roots: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``roots``: content hash and modification time (ns)."""
    return {
        str(path): (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _wait_for(condition: object, process: subprocess.Popen[str], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        if callable(condition) and condition():
            return
        time.sleep(0.05)  # polling an observable condition, bounded by the deadline
    raise AssertionError(f"the service did not {what} (exit {process.poll()})")


def test_once_beside_the_running_service_touches_none_of_its_state(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki)
    # one sweep at start, then a long wait: whatever changes in its files later is --once's doing
    data = collector_data(
        test_pki, tmp_path, [("localhost", agent.host, agent.port)], poll_interval=3600,
        thresholds={"cpu_usage": 0, "memory_usage": 0},  # something fires, so there is alert state to keep
    )
    path = write_config(tmp_path, data)
    spool_dir, data_dir = Path(data["spool_dir"]), Path(data["storage"]["json_file"]).parent
    alert_state = spool_dir / "alert-state.json"
    backfill_state = spool_dir / "backfill-state.json"  # saved right after the alert state, same flush
    service = subprocess.Popen([*_program(), "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: alert_state.exists() and backfill_state.exists(), service, "store its first sweep")
        before = _tree(spool_dir, data_dir)
        # the runbook's check, with another agent list sharing the spool_dir (it used to drop the service's state)
        other = write_config(
            tmp_path, {**data, "agents": [{"name": "localhost", "host": agent.host, "port": agent.port},
                                          {"name": "elsewhere", "host": "127.0.0.1", "port": 9}]}, "other.json"
        )
        for config in (path, other):
            result = _run("--config", str(config), "--once")
            assert result.stdout.split()[:2] == ["localhost", "up"], result
            assert "polling without storing" in result.stderr and "in use by another process" not in result.stderr
            assert "Traceback" not in result.stderr
        assert result.returncode == 1  # "elsewhere" did not answer: the exit code still says so
        assert _tree(spool_dir, data_dir) == before
        assert json.loads(alert_state.read_text())["agents"]["localhost"]
        assert service.poll() is None  # the service runs on
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=RUN_TIMEOUT)
    finally:
        if service.poll() is None:
            service.kill()
            service.communicate(timeout=RUN_TIMEOUT)  # closes its stderr pipe too
    assert service.returncode == 0, stderr
    assert "dropped the alert state" not in stderr
    # once the service is gone, --once owns the directory again and stores as the contract says
    samples = Path(data["storage"]["json_file"])
    stored = samples.read_text().count("\n")
    result = _run("--config", str(path), "--once")
    assert result.returncode == 0 and "polling without storing" not in result.stderr
    assert samples.read_text().count("\n") == stored + 1


def test_a_second_service_on_one_spool_dir_is_refused(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki)
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)], poll_interval=3600, timeout=0.1)
    path = write_config(tmp_path, data)
    service = subprocess.Popen([*_program(), "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for((Path(data["spool_dir"]) / "collector.lock").exists, service, "take its lock")
        second = _run("--config", str(path))
        assert second.returncode == 2
        assert f"pid {service.pid}" in second.stderr and "own spool_dir" in second.stderr
    finally:
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=RUN_TIMEOUT)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_once_whose_sweep_only_reached_the_spool_exits_3(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki)
    storage = {"type": "mysql", "mysql_host": "127.0.0.1", "mysql_port": _closed_port(), "mysql_password": "x"}
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)], storage=storage)
    result = _run("--config", str(write_config(tmp_path, data)), "--once")
    assert result.returncode == 3, result
    assert result.stdout.split()[:2] == ["localhost", "up"]
    assert "waits in the spool" in result.stderr
    assert list(Path(data["spool_dir"]).glob("*.spool"))


def test_once_beside_another_shards_service_is_a_probe_too(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki)
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)], poll_interval=3600)
    path = write_config(tmp_path, data)
    spool_dir = Path(data["spool_dir"])
    service = subprocess.Popen([*_program(), "--config", str(path), "--shard", "1/1"], stderr=subprocess.PIPE,
                               text=True)
    try:
        stored = (spool_dir / "alert-state-1of1.json", spool_dir / "backfill-state.json")  # one flush saves both
        _wait_for(lambda: all(p.exists() for p in stored), service, "store its first sweep")
        before = _tree(spool_dir, Path(data["storage"]["json_file"]).parent)
        result = _run("--config", str(path), "--once")  # no --shard: shares the storage and the spool
        assert result.returncode == 0 and f"pid {service.pid}" in result.stderr, result
        assert "polling without storing" in result.stderr
        assert _tree(spool_dir, Path(data["storage"]["json_file"]).parent) == before
    finally:
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=RUN_TIMEOUT)
