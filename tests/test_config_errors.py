"""A config file with several mistakes: every program names all of them at once, one line each, then exits 2.

The lines are in our words (no pydantic "Field required" or "Value error, ..."), carry the key path, never
the value (it may be a password), and an unknown key that looks like a known one gets "did you mean".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from jsonconfig import describe_errors
from secure_agent.config import AgentConfig
from secure_collector.config import CollectorConfig
from tests.plugins.agent import agent_config_data
from tests.plugins.pki import TestPKI

ROOT = Path(__file__).resolve().parents[1]
PYDANTIC_WORDS = ("Field required", "Value error", "Input should", "validation error", "Extra inputs")


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60)


def _assert_lines(result: subprocess.CompletedProcess[str], prog: str, path: Path, expected: list[str]) -> None:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(expected), lines
    for line, needle in zip(lines, expected, strict=True):
        assert line.startswith(f"{prog}: {path}: "), line
        assert needle in line, (needle, line)
    for word in PYDANTIC_WORDS:
        assert word not in result.stderr


def _bad_agent(pki: TestPKI, folder: Path) -> Path:
    data: dict[str, Any] = agent_config_data(pki, "localhost", folder)
    del data["name"]
    data["securty"] = {}  # a typo of a section name
    data["security"]["rate_limit"] = {"burst": 0, "per_secnd": 5}
    data["security"]["allowed_ips"] = ["0.0.0.0/0"]
    data["tls"]["min_version"] = "TLSv1.1"
    data["port"] = "eighty"
    path = folder / "agent.json"
    path.write_text(json.dumps(data))
    return path


AGENT_LINES = [
    "name: is required",
    "port: must be a whole number",
    "tls.min_version: must be one of 'TLSv1.2' or 'TLSv1.3'",
    "security.allowed_ips: '0.0.0.0/0' allows every address",
    "security.rate_limit.burst: must be at least 1",
    "security.rate_limit.per_secnd: unknown key (did you mean 'per_second'?)",
    "securty: unknown key (did you mean 'security'?)",
]


def test_agent_and_audit_check_report_every_mistake(test_pki: TestPKI, tmp_path: Path) -> None:
    path = _bad_agent(test_pki, tmp_path)
    for args in (["--check"], []):
        _assert_lines(_run("secure_agent", "--config", str(path), *args), "secure-agent", path, AGENT_LINES)
    result = _run("secure_audit", "check", "--agent-config", str(path))
    _assert_lines(result, "secure-audit check", path, AGENT_LINES)


def _bad_collector(pki: TestPKI, folder: Path) -> Path:
    data: dict[str, Any] = json.loads((pki.root / "collector.json").read_text())
    data["agents"] = [{"name": "a1", "host": "127.0.0.1", "prot": 8000}, {"name": "a 2", "host": "127.0.0.1"}]
    data["poll_intervall"] = 5
    data["thresholds"] = {"cpu_usage": 180, "disk_usage": "full"}
    data["storage"] = {"type": "file", "rotation": {"max_size": [1]}, "mysql_password": "s3cret-value"}
    data["spool_dir"] = str(folder / "spool")
    path = folder / "collector.json"
    path.write_text(json.dumps(data))
    return path


def test_collector_reports_every_mistake(test_pki: TestPKI, tmp_path: Path) -> None:
    path = _bad_collector(test_pki, tmp_path)
    expected = [
        "agents[0].prot: unknown key (did you mean 'port'?)",
        "agents[1].name: must match",
        "thresholds.cpu_usage: must be at most 100",
        "thresholds.disk_usage: must be a number",
        "storage.rotation.max_size: must be a string or a whole number",
        "poll_intervall: unknown key (did you mean 'poll_interval'?)",
    ]
    result = _run("secure_collector", "--config", str(path), "--once")
    _assert_lines(result, "secure-collector", path, expected)
    assert "s3cret-value" not in result.stderr
    _assert_lines(_run("secure_audit", "check", "--collector-config", str(path)), "secure-audit check", path, expected)


def test_viz_reports_every_mistake_of_its_sections(tmp_path: Path) -> None:
    path = tmp_path / "collector.json"
    path.write_text(json.dumps({
        "agents": "whatever viz does not read",
        "thresholds": {"cpu_usage": -1},
        "storage": {"type": "sqlite", "jsn_file": "x", "mysql_port": 0},
    }))
    expected = [
        "storage.type: must be one of 'file' or 'mysql'",
        "storage.mysql_port: must be at least 1",
        "storage.jsn_file: unknown key (did you mean 'json_file'?)",
        "thresholds.cpu_usage: must be at least 0",
    ]
    result = _run("viz", "--config", str(path), "--plot", "cpu", "--output-dir", str(tmp_path / "out"))
    _assert_lines(result, "secure-viz", path, expected)


@pytest.mark.parametrize("model", [AgentConfig, CollectorConfig])
def test_an_unknown_key_far_from_any_known_one_gets_no_guess(model: type[AgentConfig | CollectorConfig]) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({"zzzzzz": 1})
    lines = describe_errors(caught.value, model)
    assert "zzzzzz: unknown key" in lines
    assert not any("did you mean" in line for line in lines if line.startswith("zzzzzz"))


def test_every_program_reads_its_configuration_through_one_loader() -> None:
    # the loader and its wording exist once (jsonconfig); no package keeps a copy of them
    copies = [
        path.relative_to(ROOT)
        for package in ("pki", "secure_agent", "secure_collector", "storage", "viz", "secure_audit")
        for path in (ROOT / package).rglob("*.py")
        if "json.loads(raw)" in path.read_text() or "def describe_errors" in path.read_text()
    ]
    assert copies == []
