"""index.html in a real headless Chromium: every plot loads, nothing leaves the directory, no script runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.viz.cdp import chromium_page, find_chromium
from tests.viz.conftest import RunViz, write_config, write_file_store
from tests.viz.fleet import HOSTILE_MESSAGE, operator_fleet
from viz.plots import PLOTS

IMAGES = """JSON.stringify(Array.from(document.images).map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})))"""


@pytest.mark.chromium
def test_dashboard_loads_every_image_in_chromium(run_viz: RunViz, file_config: Path, tmp_path: Path) -> None:
    binary = find_chromium()
    if binary is None:
        pytest.fail("Chromium is not installed: apt-get install -y chromium (the test command installs it)")
    out = tmp_path / "dashboard"
    assert run_viz("--config", file_config, "--plot", "all", "--output-dir", out).code == 0
    profile = tmp_path / "profile"
    profile.mkdir()
    with chromium_page(binary, profile) as page:
        page.load((out / "index.html").as_uri())
        assert page.evaluate("document.readyState") == "complete"
        images = json.loads(page.evaluate(IMAGES))
        assert [image["src"] for image in images] == [f"{name}.png" for name in PLOTS]
        for image in images:
            width, height = PLOTS[image["src"].removesuffix(".png")].pixels
            assert image == {"src": image["src"], "complete": True, "width": width, "height": height}
        assert page.evaluate("document.scripts.length") == 0
        assert HOSTILE_MESSAGE in page.evaluate("document.body.innerText"), "shown as text, not markup"
        assert page.evaluate("document.querySelectorAll('tbody tr').length") == 4
        requested = page.requested_urls()
    assert requested, "the page was loaded through the network domain"
    assert all(url.startswith(out.as_uri() + "/") for url in requested), requested


COLUMNS = """JSON.stringify(Array.from(document.querySelectorAll('thead th')).map(th => th.innerText))"""
ROWS = """JSON.stringify(Array.from(document.querySelectorAll('tbody tr')).map(
    tr => Array.from(tr.cells).map(td => td.innerText)))"""


@pytest.mark.chromium
def test_operator_dashboard_with_one_agent_down(run_viz: RunViz, tmp_path: Path, now: float) -> None:
    """Several agents, one down: the table an operator reads first, checked in Chromium, and screenshot."""
    binary = find_chromium()
    if binary is None:
        pytest.fail("Chromium is not installed: apt-get install -y chromium (the test command installs it)")
    config = write_config(tmp_path / "collector.json", write_file_store(tmp_path, operator_fleet(now)))
    out = tmp_path / "dashboard"
    assert run_viz("--config", config, "--plot", "all", "--hours", "3", "--output-dir", out).code == 0
    profile = tmp_path / "profile"
    profile.mkdir()
    with chromium_page(binary, profile) as page:
        page.load((out / "index.html").as_uri())
        columns = json.loads(page.evaluate(COLUMNS))
        assert columns == ["Agent", "State", "Threat", "CPU", "Memory", "Swap", "Disk", "Load 1 min", "Temp.",
                           "SSH failures", "Cert. days", "Sample age", "Open alerts"]
        rows = {row[0]: row for row in json.loads(page.evaluate(ROWS))}
        order = list(rows)
        # most trouble first: the agent that does not answer, then by threat level (high, low), then breaches
        assert order == ["edge-1", "web-1", "web-2", "backup-1", "db-1"], order
        assert rows["edge-1"][1].startswith("timeout") and "seen 41 min ago" in rows["edge-1"][1]
        assert rows["backup-1"][columns.index("SSH failures")] == "not monitored"
        assert rows["db-1"][columns.index("Temp.")] == "no sensor"
        over = page.evaluate("Array.from(document.querySelectorAll('td.over')).map(td => td.innerText).join(',')")
        assert "93 %" in over  # backup-1's disk over its threshold is marked
        assert page.evaluate("document.scripts.length") == 0
        refresh = page.evaluate("document.querySelector('meta[http-equiv=refresh]').content")
        assert refresh == "60"
        assert "5 agents, 1 agent not answering" in page.evaluate("document.querySelector('header').innerText")
        images = json.loads(page.evaluate(IMAGES))
        assert [image["src"] for image in images] == [f"{name}.png" for name in PLOTS]
        assert all(image["complete"] and image["width"] > 0 for image in images)
        shot = page.screenshot(1280, 1500)
        requested = page.requested_urls()
    assert all(url.startswith(out.as_uri() + "/") for url in requested), requested
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 50_000
    (tmp_path / "dashboard.png").write_bytes(shot)
    target = os.environ.get("SMON_DASHBOARD_SCREENSHOT")  # set to docs/dashboard.png to refresh the docs
    if target:
        Path(target).write_bytes(shot)
