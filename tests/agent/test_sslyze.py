"""sslyze against a real agent: client authentication REQUIRED, Mozilla "modern" / "intermediate" compliance.

sslyze pins an older ``cryptography`` than ours, so it lives in its own virtual environment:

    python3 -m venv .venv-sslyze && .venv-sslyze/bin/pip install sslyze

``SSLYZE_PYTHON`` names its interpreter (default ``<repo>/.venv-sslyze/bin/python``). These tests
fail, not skip, when it is missing: the TLS configuration is part of what we promise.
Our CA is private, so it is handed to sslyze (``--certinfo_ca_file``) as the trust store for
certificate path validation; everything else is judged exactly as for a public server.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.plugins.agent import RunningAgent, StartAgent
from tests.plugins.pki import TestPKI

pytestmark = pytest.mark.sslyze

REPO = Path(__file__).resolve().parents[2]
SCAN_TIMEOUT = 120  # seconds; a full scan of a loopback agent takes a few
# sslyze opens many connections at once; the default per-address cap (8) would refuse some of them
SCAN_LIMITS = {"max_connections": 64, "max_connections_per_ip": 64}


def _sslyze() -> str:
    python = os.environ.get("SSLYZE_PYTHON", str(REPO / ".venv-sslyze" / "bin" / "python"))
    if not Path(python).exists():
        pytest.fail(
            f"sslyze not found at {python}: run `python3 -m venv .venv-sslyze && .venv-sslyze/bin/pip install sslyze`"
            " in the repository, or set SSLYZE_PYTHON"
        )
    return python


def _scan(agent: RunningAgent, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_sslyze(), "-m", "sslyze", *args, f"{agent.host}:{agent.port}"],
        capture_output=True,
        text=True,
        timeout=SCAN_TIMEOUT,
        cwd=agent.config_path.parent,
    )


def _with_client_cert(pki: TestPKI) -> list[str]:
    cert, key, _ = pki.collector_files()
    return ["--cert", str(cert), "--key", str(key), "--certinfo_ca_file", str(pki.ca)]


def test_client_authentication_required(start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path) -> None:
    agent = start_agent(test_pki, server=SCAN_LIMITS)
    out = tmp_path / "scan.json"
    result = _scan(agent, "--quiet", "--certinfo", "--mozilla_config=disable", f"--json_out={out}")
    assert result.returncode == 0, result.stdout + result.stderr
    scan: dict[str, Any] = json.loads(out.read_text())["server_scan_results"][0]
    assert scan["connectivity_status"] == "COMPLETED"
    assert scan["connectivity_result"]["client_auth_requirement"] == "REQUIRED"
    assert scan["connectivity_result"]["highest_tls_version_supported"] == "TLS_1_3"


def test_default_config_is_mozilla_modern(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, server=SCAN_LIMITS)
    result = _scan(agent, "--mozilla_config=modern", *_with_client_cert(test_pki))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "OK - Compliant" in result.stdout


def test_tls12_floor_is_mozilla_intermediate(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, server=SCAN_LIMITS, tls={"min_version": "TLSv1.2"})
    result = _scan(agent, "--mozilla_config=intermediate", *_with_client_cert(test_pki))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "OK - Compliant" in result.stdout
    # and the check has teeth: the same agent is not "modern", for the reason we expect
    modern = _scan(agent, "--mozilla_config=modern", *_with_client_cert(test_pki))
    assert modern.returncode != 0
    assert "tls_versions" in modern.stdout
