"""The residual risks SECURITY.md admits, shown against a real agent so that the document stays true.

A test here that asserts the *safe* behaviour is marked ``xfail(strict=True)``: it fails today because of
the admitted risk, and the day the risk is closed it passes, strict xfail turns that into a failure, and
SECURITY.md's "Residual risks" must be updated with it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.agent import wire
from tests.plugins.agent import StartAgent, rpc_body
from tests.plugins.pki import TestPKI

FAST_CLOCK = 120  # seconds a collector's clock runs ahead: inside the default max_clock_skew of 300


@pytest.mark.xfail(
    strict=True,
    reason="SECURITY.md residual risk: a future-dated token whose record a power loss took can be replayed once",
)
def test_a_future_dated_token_whose_record_a_power_loss_took_is_refused_after_a_restart(
    start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path
) -> None:
    """A power loss takes the records written since the last fdatasync (at most server.audit_sync_interval)."""
    audit_log = tmp_path / "audit.log"
    first = start_agent(test_pki, audit_log=str(audit_log))
    body = rpc_body("ping")
    token = wire.signed_headers(first, test_pki, body, ts=int(time.time()) + FAST_CLOCK)
    captured = wire.request_bytes(body, authorization=token)
    assert wire.send_once(first, test_pki, captured).status == 200
    first.stop()
    lines = audit_log.read_text().splitlines(keepends=True)
    assert [json.loads(line)["event"] for line in lines] == ["start", "call", "stop"]
    audit_log.write_text(lines[0])  # what the disk holds if the power went before the call record was synced
    second = start_agent(test_pki, audit_log=str(audit_log))
    assert wire.send_once(second, test_pki, captured).status == 401


def test_a_segment_deleted_after_the_collector_copied_it_is_found_by_verify_against_not_by_the_collector(
    start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Residual risk: the collector already holds those records, so its trail goes on intact; the daily
    ``verify --against`` (or ``verify --rotated`` on the host) is what finds the hole."""
    from secure_audit.segments import rotated_segments
    from tests.collector.helpers import collector_data
    from tests.collector.test_audit_central import Central, fill

    agent = start_agent(test_pki, audit_rotation={"max_bytes": 65536, "backup_count": 6})
    fill(agent, 500)
    central = Central(tmp_path, collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)]))
    assert central.once(capsys)[0] == 0
    segments = rotated_segments(agent.audit_log)
    assert len(segments) >= 4
    segments[1].unlink()  # copied already: a segment in the middle
    code, out = central.once(capsys)
    assert code == 0 and out.split()[1] == "up"  # the collector sees nothing wrong
    assert not (central.alerts()["metric"] == "audit_chain").any()
    found = central.verify_against(agent)
    assert found.returncode == 1 and "lacks seq" in found.stderr
