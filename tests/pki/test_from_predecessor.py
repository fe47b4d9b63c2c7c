"""``make_certs --from-predecessor``: the predecessor's README configs turned into ours in one command.

The old files are those its README prints (as JSON, without the README's ``#`` comments). What still
means something is kept; what is dropped is listed with the reason; the result passes ``secure-agent
--check`` and polls a real agent.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pki import make_certs
from secure_agent.config import AgentConfig
from secure_collector.config import CollectorConfig

TIMEOUT = 60

# the predecessor's README, "Agent Configuration" and "Collector Configuration", comments removed
OLD_AGENT: dict[str, Any] = {
    "host": "0.0.0.0",
    "port": 8000,
    "check_interval": 30,
    "log_level": "INFO",
    "log_file": "/var/log/monitor_agent.log",
    "metrics": {
        "enable_temperature": True,
        "enable_cpu": True,
        "enable_memory": True,
        "enable_disk": True,
        "enable_security": True,
    },
    "security": {"allowed_ips": ["127.0.0.1", "192.168.1.0/24"], "require_auth": False},
}
OLD_COLLECTOR: dict[str, Any] = {
    "agents": [
        {"name": "server-01", "host": "192.168.1.101", "port": 8000},
        {"name": "server-02", "host": "192.168.1.102", "port": 8000},
    ],
    "poll_interval": 30,
    "timeout": 10,
    "storage": {
        "type": "file",
        "log_file": "/var/log/metrics_collector.log",
        "metrics_file": "/var/log/metrics_data.log",
        "json_file": "/var.log/metrics_data.json",
        "rotation": {"max_size": "10MB", "backup_count": 5},
    },
    "thresholds": {"cpu_usage": 80, "cpu_temperature": 70, "system_load": 2.0, "memory_usage": 85, "disk_usage": 90},
}


def _write(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(json.dumps(data, indent=4))
    return path


def _make_certs(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(make_certs.__file__)
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def test_the_readme_configs_keep_what_means_something_and_say_what_was_dropped(tmp_path: Path) -> None:
    collector = _write(tmp_path, "collector_config.json", OLD_COLLECTOR)
    agent = _write(
        tmp_path,
        "agent_config.json",
        {
            **OLD_AGENT,
            "security": {**OLD_AGENT["security"], "allowed_ips": ["127.0.0.1", "192.168.1.0/24", "0.0.0.0/0"]},
            "api_key": "x",
        },
    )
    out = tmp_path / "pki"
    result = _make_certs("--out", str(out), "--from-predecessor", str(collector), "--agent-config", str(agent))
    assert result.returncode == 0, result.stderr
    assert "PKI ready" in result.stdout and "Traceback" not in result.stderr
    dropped = [line for line in result.stderr.splitlines() if line.startswith("note: dropped ")]
    assert any("security.require_auth (false): there is no unauthenticated mode" in line for line in dropped)
    assert any("'0.0.0.0/0': admits every address" in line for line in dropped)
    assert any(line.startswith("note: dropped api_key: no such setting") for line in dropped)
    assert any(line.startswith("note: dropped port: ") for line in dropped)
    new_collector = CollectorConfig.model_validate(json.loads((out / "collector.json").read_text()))
    assert [(a.name, a.host, a.port) for a in new_collector.agents] == [
        ("server-01", "192.168.1.101", 8000),
        ("server-02", "192.168.1.102", 8000),
    ]
    assert (new_collector.poll_interval, new_collector.timeout) == (30, 10)
    assert new_collector.thresholds.cpu_temperature == 70 and new_collector.thresholds.system_load == 2.0
    assert new_collector.storage.json_file == Path("/var.log/metrics_data.json")  # the operator's path, as it was
    assert new_collector.storage.log_file == Path("/var/log/metrics_collector.log")
    assert new_collector.storage.rotation.backup_count == 5
    for name in ("server-01", "server-02"):
        config = AgentConfig.model_validate(json.loads((out / f"agent-{name}.json").read_text()))
        assert config.name == name and config.port == 8000 and config.check_interval == 30
        allowed = [ipaddress.ip_network(str(entry)) for entry in config.security.allowed_ips]
        assert allowed == [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("192.168.1.0/24")]
        assert str(config.log_file) == "/var/log/monitor_agent.log"
    # never weaker than our defaults: TLS 1.3 floor, every call authenticated
    assert json.loads((out / "agent-server-01.json").read_text())["tls"]["min_version"] == "TLSv1.3"


def test_the_migrated_configs_pass_the_check_and_poll_a_real_agent(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = tmp_path / "data"
    old_collector = {
        **OLD_COLLECTOR,
        "agents": [{"name": "server-01", "host": "127.0.0.1", "port": port}],
        "poll_interval": 5,
        "storage": {
            "type": "file",
            "log_file": str(data / "metrics_collector.log"),
            "metrics_file": str(data / "metrics_data.log"),
            "json_file": str(data / "metrics_data.json"),
            "rotation": {"max_size": "10MB", "backup_count": 5},
        },
    }
    old_agent = {**OLD_AGENT, "host": "127.0.0.1", "log_file": str(data / "monitor_agent.log")}
    data.mkdir()
    out = tmp_path / "pki"
    result = _make_certs(
        "--out",
        str(out),
        "--from-predecessor",
        str(_write(tmp_path, "collector_config.json", old_collector)),
        "--agent-config",
        str(_write(tmp_path, "agent_config.json", old_agent)),
    )
    assert result.returncode == 0, result.stderr
    agent_config = out / "agent-server-01.json"
    check = subprocess.run(
        [sys.executable, "-m", "secure_agent", "--config", str(agent_config), "--check"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    collector_check = subprocess.run(
        [sys.executable, "-m", "secure_collector", "--config", str(out / "collector.json"), "--check"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert collector_check.returncode == 0, collector_check.stderr
    agent = subprocess.Popen([sys.executable, "-m", "secure_agent", "--config", str(agent_config)])
    try:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline and agent.poll() is None:  # until its port takes connections
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)  # polling an observable condition, bounded by the deadline
        once = subprocess.run(
            [sys.executable, "-m", "secure_collector", "--config", str(out / "collector.json"), "--once"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    finally:
        agent.terminate()
        agent.wait(timeout=15)
    assert once.returncode == 0, once.stdout + once.stderr
    assert once.stdout.split()[:2] == ["server-01", "up"]
    stored = [json.loads(line) for line in (data / "metrics_data.json").read_text().splitlines()]
    assert [sample["agent"] for sample in stored] == ["server-01"]


def test_unusable_predecessor_files_are_refused_with_every_problem(tmp_path: Path) -> None:
    bad = _write(
        tmp_path,
        "collector_config.json",
        {"agents": [{"name": "bad name", "host": "h", "port": 8000}, {"name": "ok", "port": 70000}]},
    )
    result = _make_certs("--out", str(tmp_path / "pki"), "--from-predecessor", str(bad))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("make-certs: ") for line in lines), lines
    assert "agents[0].name" in lines[0] and "agents[1].host" in lines[1] and "agents[1].port" in lines[2]
    assert not (tmp_path / "pki").exists()  # nothing written
    commented = tmp_path / "commented.json"
    commented.write_text('{"poll_interval": 30,   # Polling frequency\n}')
    result = _make_certs("--out", str(tmp_path / "pki"), "--from-predecessor", str(commented))
    assert result.returncode == 2 and "'#' comments" in result.stderr
    result = _make_certs("--out", str(tmp_path / "pki"), "--agent-config", str(commented))
    assert result.returncode == 2 and "--agent-config goes with --from-predecessor" in result.stderr


def test_secure_viz_draws_the_predecessors_stored_samples_with_the_migrated_config(tmp_path: Path) -> None:
    """The predecessor appended ``json.dumps`` of each sample to ``metrics_data.json``; the migrated
    config keeps that path, and ``secure-viz`` reads the file as it is."""
    data = tmp_path / "data"
    data.mkdir()
    now = time.time()
    (data / "metrics_data.json").write_text(
        "".join(
            json.dumps(
                {
                    "agent": name,
                    "timestamp": now - 60 * i,
                    "cpu_usage": 20.0 + i,
                    "cpu_temperature": 45.0,
                    "memory_usage": 60.0,
                    "disk_usage": 70.0,
                    "security_issues": 0,
                    "threat_level": "none",
                }
            )
            + "\n"
            for i in range(30)
            for name in ("server-01", "server-02")
        )
    )
    old_collector = {
        **OLD_COLLECTOR,
        "storage": {
            **OLD_COLLECTOR["storage"],
            "json_file": str(data / "metrics_data.json"),
            "metrics_file": str(data / "metrics_data.log"),
            "log_file": str(data / "collector.log"),
        },
    }
    out = tmp_path / "pki"
    result = _make_certs("--out", str(out), "--from-predecessor", str(_write(tmp_path, "c.json", old_collector)))
    assert result.returncode == 0, result.stderr
    viz = subprocess.run(
        [
            sys.executable,
            "-m",
            "viz",
            "--config",
            str(out / "collector.json"),
            "--plot",
            "cpu",
            "--hours",
            "1",
            "--agent",
            "server-02",
            "--output-dir",
            str(tmp_path / "plots"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert viz.returncode == 0, viz.stderr
    assert (tmp_path / "plots" / "cpu.png").read_bytes().startswith(b"\x89PNG")
