"""Fixtures for the probe tests: the fixture trees, and agent configurations to build services from."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secure_agent.config import AgentConfig

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "probes"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def copy_tree(tmp_path: Path) -> Callable[[str], Path]:
    """Copy a fixture tree (symlinks kept as links) into tmp_path, for tests that change it."""

    def copy(relative: str) -> Path:
        target = tmp_path / relative.replace("/", "-")
        shutil.copytree(FIXTURES / relative, target, symlinks=True)
        return target

    return copy


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., AgentConfig]:
    """An AgentConfig with the given ``metrics`` and ``security`` overrides (TLS paths are not read here)."""

    def make(*, metrics: dict[str, Any] | None = None, check_interval: float = 30.0, **security: Any) -> AgentConfig:
        security.setdefault("auth_log_paths", [str(tmp_path / "no-auth.log")])
        return AgentConfig.model_validate(
            {
                "name": "probe-test",
                "check_interval": check_interval,
                "metrics": metrics or {},
                "tls": {
                    "cert": str(tmp_path / "a.crt"), "key": str(tmp_path / "a.key"), "ca": str(tmp_path / "ca.crt"),
                },
                "security": {"allowed_ips": ["127.0.0.1"], "hmac_keys": {"c": str(tmp_path / "c.hmac")}, **security},
                "audit_log": str(tmp_path / "audit.log"),
            }
        )

    return make
