"""Every program answers ``--version`` with the project's version (pyproject.toml), and exits 0."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@pytest.mark.parametrize(
    ("command", "prog"),
    [
        (["-m", "secure_agent"], "secure-agent"),
        (["-m", "secure_collector"], "secure-collector"),
        (["-m", "viz"], "secure-viz"),
        (["-m", "secure_audit"], "secure-audit"),
        (["-m", "storage"], "python -m storage"),
        ([str(ROOT / "pki" / "make_certs.py")], "make-certs"),
    ],
)
def test_every_program_answers_version(command: list[str], prog: str) -> None:
    result = subprocess.run([sys.executable, *command, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{prog} {VERSION}"


def test_every_package_carries_the_project_version() -> None:
    import pki
    import secure_agent
    import secure_audit
    import secure_collector
    import storage
    import viz

    for package in (pki, secure_agent, secure_audit, secure_collector, storage, viz):
        assert package.__version__ == VERSION, package.__name__
