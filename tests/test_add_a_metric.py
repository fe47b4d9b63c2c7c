"""Adding a numeric metric is one declaration and one probe (CONTRIBUTING.md, "Adding a metric").

The declaration and probe of a throwaway metric (``tests/addmetric/declare.py``) are imported by a fresh
process before anything else, as a real entry of ``storage.catalog`` and a real probe module would be;
that process then runs ``tests/addmetric/flow_add_a_metric.py`` with a real agent, collector, file and
MariaDB storage, viz and the exporter. Nothing else of the code base knows the metric's name.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = (
    "import sys\n"
    "import tests.addmetric.declare\n"  # the declaration and the probe, before any program is imported
    "import pytest\n"
    "sys.exit(pytest.main(sys.argv[1:]))\n"
)


@pytest.mark.mysql
@pytest.mark.slow
def test_a_metric_declared_once_with_its_probe_flows_everywhere(tmp_path: Path) -> None:
    flow = ROOT / "tests" / "addmetric" / "flow_add_a_metric.py"
    args = [sys.executable, "-c", RUN, str(flow), "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
            "--basetemp", str(tmp_path / "run"), "--no-cov"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def test_nothing_but_the_declaration_and_the_probe_name_the_throwaway_metric() -> None:
    named = [
        path.relative_to(ROOT)
        for package in ("pki", "secure_agent", "secure_collector", "storage", "viz", "secure_audit")
        for path in (ROOT / package).rglob("*.py")
        if "handles_usage" in path.read_text()
    ]
    assert named == []
