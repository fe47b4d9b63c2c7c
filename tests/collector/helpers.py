"""Shared helpers for the collector tests: configs over a test PKI, reading what was stored."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from secure_collector.config import CollectorConfig
from storage.file import FileStore
from tests.plugins.agent import merge
from tests.plugins.pki import TestPKI

WIDE = (0.0, 1e11)


def collector_data(
    pki: TestPKI, folder: Path, polled: Iterable[tuple[str, str, int]], **overrides: Any
) -> dict[str, Any]:
    """A collector config for ``pki``'s collector, polling ``polled`` (name, host, port), data under ``folder``."""
    data = json.loads((pki.root / "collector.json").read_text())
    data = merge(
        data,
        {
            "poll_interval": 0.2,
            "timeout": 2.0,
            "max_workers": 8,
            "storage": {
                "type": "file",
                "json_file": str(folder / "data" / "metrics.json"),
                "metrics_file": str(folder / "data" / "metrics.log"),
            },
            "spool_dir": str(folder / "spool"),
        },
    )
    data["agents"] = [{"name": n, "host": h, "port": p} for n, h, p in polled]
    return merge(data, overrides)


def write_config(folder: Path, data: Mapping[str, Any], name: str = "collector.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(data, indent=2))
    return path


def load(data: Mapping[str, Any]) -> CollectorConfig:
    return CollectorConfig.model_validate(dict(data))


def read_store(config: CollectorConfig) -> FileStore:
    return FileStore.from_config(config.storage, readonly=True)
