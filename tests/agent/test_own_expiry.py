"""The agent says when its own certificate or CRL is close to expiry: in its log and its audit log (issue 20)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI


def test_a_certificate_close_to_expiry_is_logged_and_audited_at_start(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pki = make_pki(tmp_path / "pki", agents=["soon=localhost,127.0.0.1"], collectors=["collector"])
    cert, key = pki.issue(
        "soon", "server", hosts=["localhost", "127.0.0.1"],
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=12), folder="short",
    )
    agent = start_agent(pki, "soon", tls={"cert": str(cert), "key": str(key)})
    records = [r for r in agent.audit_records() if r["event"] == "certificate_expiry"]
    assert len(records) == 1 and records[0]["outcome"] == "warning"
    assert "the agent's certificate" in records[0]["detail"] and "expires in 1" in records[0]["detail"]
    assert any("expires in 1" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_a_certificate_far_from_expiry_says_nothing(
    test_pki: TestPKI, start_agent: StartAgent
) -> None:
    agent = start_agent(test_pki)
    assert not [r for r in agent.audit_records() if r["event"] == "certificate_expiry"]
