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


def _module_imports(path: Path) -> set[str]:
    """The modules of ours that ``path`` imports, by dotted name (``from pkg import mod`` counts as ``pkg.mod``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name.split(".")[0] in OURS}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_two_modules_import_each_other_in_a_cycle() -> None:
    files = {_module_name(path): path for package in OURS for path in (ROOT / package).rglob("*.py")}
    graph = {
        name: {dep for dep in _module_imports(path) if dep in files and dep != name} for name, path in files.items()
    }
    # a package's __init__ re-exporting its modules is not a cycle of the code: leave packages out as targets
    graph = {name: {dep for dep in deps if files[dep].name != "__init__.py"} for name, deps in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep] if dep in path else [name, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
