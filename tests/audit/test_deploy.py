"""deploy/: the systemd units are sandboxed and valid, and the logrotate rules do what deploy/README.md says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from storage.config import StorageConfig

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# where this install's entry points are (the running interpreter's scripts directory, else PATH): no one layout
_AGENT = shutil.which("secure-agent", path=str(Path(sys.executable).parent)) or shutil.which("secure-agent")
VENV_BIN = Path(_AGENT or sys.executable).parent
SERVICES = [
    "secure-collector.service", "secure-monitor-audit.service", "secure-agent.service", "secure-monitor-enroll.service"
]
TIMEOUT = 60

Unit = dict[str, dict[str, list[str]]]


def parse_unit(path: Path) -> Unit:
    """Section -> key -> every value given (systemd allows repeats), comments and blank lines dropped."""
    unit: Unit = defaultdict(lambda: defaultdict(list))
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        unit[section][key.strip()].append(value.strip())
    return unit


def service_unit(name: str) -> Path:
    path = DEPLOY / name
    assert path.exists(), f"deploy/{name} is missing"
    return path


def runnable_copy(path: Path, folder: Path) -> Path:
    """The unit with its programs pointed at this install's entry points (systemd-analyze verify checks them)."""
    copy = folder / path.name
    copy.write_text(path.read_text().replace("/opt/secure-monitor/bin/", f"{VENV_BIN}/"))
    return copy


@pytest.mark.parametrize("name", SERVICES)
def test_services_run_sandboxed_as_a_dedicated_user(name: str) -> None:
    service = parse_unit(service_unit(name))["Service"]
    assert service["User"] == (["secure-monitor-ca"] if name == "secure-monitor-enroll.service" else ["secure-monitor"])
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
    }
    for key, value in expected.items():
        assert service[key] == [value], key
    # "read-only" for the agent, whose disk probe must statvfs() /home; either way nothing there is writable
    assert service["ProtectHome"] in (["yes"], ["read-only"])
    assert "@system-service" in service["SystemCallFilter"]
    assert service["RestrictAddressFamilies"], "no RestrictAddressFamilies"
    assert not set(" ".join(service["RestrictAddressFamilies"]).split()) - {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert service["UMask"] == ["0077"]


def test_collector_has_no_capability_and_writes_only_its_state_and_logs() -> None:
    service = parse_unit(DEPLOY / "secure-collector.service")["Service"]
    assert service["CapabilityBoundingSet"] == [""] and service["AmbientCapabilities"] == [""]
    writable = {Path(p) for p in " ".join(service["ReadWritePaths"]).split()}
    assert writable == {Path("/var/lib/secure-monitor"), Path("/var/log/secure-monitor")}
    # the default storage.json_file lands inside what the unit lets the collector write
    assert StorageConfig().json_file.parent in writable
    assert service["RestartPreventExitStatus"] == ["2"]  # a bad config is not retried in a loop


@pytest.fixture
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found is not None, "systemd-analyze is not installed (scripts/test.sh installs systemd)"
    return found


@pytest.mark.parametrize("name", [*SERVICES, "secure-monitor-audit.timer"])
def test_units_pass_systemd_analyze_verify(systemd_analyze: str, tmp_path: Path, name: str) -> None:
    units = [runnable_copy(service_unit(name), tmp_path)]
    if name.endswith(".timer"):
        units.append(runnable_copy(DEPLOY / "secure-monitor-audit.service", tmp_path))
    result = subprocess.run(
        [systemd_analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Unknown key" not in result.stderr and "Unknown section" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("name", "ceiling"),
    [
        ("secure-agent.service", 2.0),
        ("secure-collector.service", 2.0),
        ("secure-monitor-audit.service", 1.0),
        ("secure-monitor-enroll.service", 2.0),
    ],
)
def test_exposure_rating_is_low(systemd_analyze: str, tmp_path: Path, name: str, ceiling: float) -> None:
    unit = runnable_copy(service_unit(name), tmp_path)
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", f"--threshold={int(ceiling * 10)}", str(unit)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "Overall exposure level" in result.stdout


def test_logrotate_moves_the_agent_log_and_truncates_the_collector_log(tmp_path: Path) -> None:
    logrotate = shutil.which("logrotate") or shutil.which("logrotate", path="/usr/sbin:/sbin")
    assert logrotate is not None, "logrotate is not installed (scripts/test.sh installs it)"
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    (logs / "agent.log").write_text("agent line\n")
    (logs / "collector.log").write_text("collector line\n")
    rules = (DEPLOY / "logrotate.secure-monitor").read_text()
    assert "audit" not in "".join(line for line in rules.splitlines() if line.startswith("/"))
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        rules.replace("/var/log/secure-monitor/", f"{logs}/").replace(
            "su secure-monitor secure-monitor", "su root root"
        )
    )
    conf.chmod(0o644)
    result = subprocess.run(
        [logrotate, "--force", "--state", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # agent: renamed, no new file (it reopens by itself); collector: copied, truncated in place
    assert not (logs / "agent.log").exists() and (logs / "agent.log.1").read_text() == "agent line\n"
    assert (logs / "collector.log").read_text() == "" and (logs / "collector.log.1").read_text() == "collector line\n"
