"""SECURITY.md backs every claim with a test a reader can find: every test it cites must exist.

A citation is ``tests/FILE.py::test_name``, or ``::test_name`` meaning the same file as the citation
before it. A test renamed or removed without updating the document fails here, naming the citation.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["SECURITY.md", "docs/runbook.md", "deploy/README.md"]
_CITATION = re.compile(r"(tests/[a-z0-9_/]+\.py)?::(\w+)|(tests/[a-z0-9_/]+\.py)")


@cache
def defined_tests(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(), str(path))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test_")
    )


def citations(text: str) -> list[tuple[str, str | None]]:
    """(file, test name or None) for every citation, resolving ``::name`` to the file cited last."""
    found: list[tuple[str, str | None]] = []
    current: str | None = None
    for match in _CITATION.finditer(text):
        file_with_name, name, file_alone = match.groups()
        if file_alone is not None:
            current = file_alone
            found.append((file_alone, None))
            continue
        current = file_with_name or current
        assert current is not None, f"::{name} cited before any test file"
        found.append((current, name))
    return found


def test_security_md_cites_tests_for_its_claims() -> None:
    cited = citations((ROOT / "SECURITY.md").read_text())
    assert len({name for _, name in cited if name}) >= 80  # the document is built on them


def test_every_cited_test_exists() -> None:
    missing = []
    for document in DOCUMENTS:
        for file, name in citations((ROOT / document).read_text()):
            path = ROOT / file
            if not path.is_file():
                missing.append(f"{document}: {file} (no such file)")
            elif name is not None and name not in defined_tests(path):
                missing.append(f"{document}: {file}::{name}")
    assert not missing, "\n".join(missing)


def test_the_citation_reader_resolves_shorthand() -> None:
    text = "`tests/a/test_x.py::test_one`, `::test_two`; then `tests/b/test_y.py` and `::test_three`"
    assert citations(text) == [
        ("tests/a/test_x.py", "test_one"),
        ("tests/a/test_x.py", "test_two"),
        ("tests/b/test_y.py", None),
        ("tests/b/test_y.py", "test_three"),
    ]
