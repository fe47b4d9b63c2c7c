"""index.html in a real headless Chromium: every plot loads, nothing leaves the directory, no script runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.viz.cdp import chromium_page, find_chromium
from tests.viz.fleet import HOSTILE_MESSAGE
from viz.plots import PLOTS

IMAGES = """JSON.stringify(Array.from(document.images).map(i => ({
    src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth, height: i.naturalHeight})))"""


@pytest.mark.chromium
def test_dashboard_loads_every_image_in_chromium(run_viz, file_config: Path, tmp_path: Path) -> None:
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
