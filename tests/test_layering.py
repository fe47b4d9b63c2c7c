"""Imports run one way (docs/style.md, "Layers"): a change that breaks the layering fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"jsonconfig", "pki", "secure_agent", "secure_collector", "storage", "viz", "secure_audit"}
ALLOWED = {
    # reading configuration files: every program needs it, so it sits under everything and imports nothing
    "jsonconfig": set(),
    "pki": {"jsonconfig"},
    "storage": {"jsonconfig"},
    "secure_agent": {"pki", "jsonconfig"},
    "secure_collector": {"pki", "storage", "jsonconfig"},
    "viz": {"storage", "jsonconfig"},
    "secure_audit": {"pki", "storage", "secure_agent", "secure_collector", "jsonconfig"},
}


def imported_packages(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no modules"
    for path in files:
        wrong = imported_packages(path) - ALLOWED[package] - {package}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"
