"""Fixtures for the viz tests: fleets written through the real file backend, and PNG checks."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
from matplotlib import image as mpimg

from storage.base import Batch
from storage.file import FileStore
from tests.viz.fleet import fleet, hostile
from viz.cli import main
from viz.plots import PLOTS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Run(NamedTuple):
    code: int
    out: str
    err: str


RunViz = Callable[..., Run]
"""The ``run_viz`` fixture: ``run_viz(*args: str | Path) -> Run``."""


def write_config(path: Path, storage: dict[str, Any], thresholds: dict[str, Any] | None = None) -> Path:
    """A collector config as the collector reads it; viz uses only ``storage`` and ``thresholds``."""
    document: dict[str, Any] = {
        "agents": [{"name": "web-1", "host": "127.0.0.1", "port": 8443}],
        "poll_interval": 30,
        "storage": storage,
    }
    if thresholds is not None:
        document["thresholds"] = thresholds
    path.write_text(json.dumps(document))
    return path


def write_file_store(directory: Path, *batches: Batch) -> dict[str, Any]:
    """Write ``batches`` through :class:`FileStore`; return the ``storage`` config section naming it."""
    json_file = directory / "data" / "metrics_data.json"
    store = FileStore(json_file, max_bytes=64 * 1024 * 1024)
    try:
        for batch in batches:
            store.write(batch)
    finally:
        store.close()
    return {"type": "file", "json_file": str(json_file), "rotation": {"max_size": "64MB", "backup_count": 2}}


@pytest.fixture
def now() -> float:
    return time.time()


@pytest.fixture
def file_config(tmp_path: Path, now: float) -> Path:
    """A collector config whose file storage holds :func:`fleet` and :func:`hostile` data."""
    storage = write_file_store(tmp_path, fleet(now), hostile(now))
    return write_config(tmp_path / "collector.json", storage, {"cpu_usage": 75})


@pytest.fixture
def run_viz(capsys: pytest.CaptureFixture[str]) -> RunViz:
    """Run ``secure-viz`` in this process with the given arguments; returns code, stdout, stderr."""

    def run(*args: str | Path) -> Run:
        code = main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def assert_real_png(path: Path, name: str) -> None:
    """``path`` is a PNG of plot ``name``'s size with drawn content: text, axes and coloured data."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    width, height = PLOTS[name].pixels
    pixels = mpimg.imread(path)
    assert pixels.shape[:2] == (height, width), f"{path}: {pixels.shape[:2]} != {(height, width)}"
    rgb = pixels[..., :3]
    ink = (rgb < 0.9).any(axis=2).mean()
    assert ink > 0.01, f"{path}: only {ink:.2%} of the pixels are not background"
    saturation = rgb.max(axis=2) - rgb.min(axis=2)
    coloured = int((saturation > 0.3).sum())
    assert coloured > 300, f"{path}: only {coloured} coloured pixels: no data drawn"
    assert float(np.std(rgb)) > 0.02


def listed(paths: Sequence[str]) -> list[str]:
    return sorted(Path(p).name for p in paths)
