"""Acceptance (issue 21): an agent on a host whose sshd logs only to the journal detects a brute force,
and the collector stores it and alerts; a host with no readable source is stored as not monitored."""

from __future__ import annotations

import time
from pathlib import Path

from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.collector.test_cli import _run
from tests.plugins.agent import RunningAgent, StartAgent, rpc_call
from tests.plugins.pki import TestPKI
from tests.probes.journal import Entry, JournalFixture

SCAN_WAIT = 20.0


def _scanned(agent: RunningAgent, pki: TestPKI) -> dict[str, object]:
    """The agent's answer once its first security scan is done (bounded wait on an observable state)."""
    deadline = time.monotonic() + SCAN_WAIT
    while time.monotonic() < deadline:
        answer = rpc_call(agent, pki, "get_metrics")
        if answer["security"]["scanned_at"] is not None:
            return dict(answer)
        time.sleep(0.05)
    raise AssertionError("no security scan within the wait")


def test_journal_only_host_brute_force_is_stored_and_alerted(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    journal = JournalFixture(tmp_path / "journal")
    now = time.time()
    journal.append([
        Entry(now - 30 + i, "sshd", f"Failed password for invalid user admin{i} from 203.0.113.77 port {4000 + i} ssh2")
        for i in range(8)
    ])
    agent = start_agent(test_pki, security={
        "auth_log_paths": [str(tmp_path / "auth.log")],  # Debian 12 without rsyslog: no auth log at all
        "journal_directory": str(journal.directory),
        "rate_limit": {"per_second": 1000, "burst": 1000},
    })
    answer = _scanned(agent, test_pki)
    security = answer["security"]
    assert isinstance(security, dict) and security["ssh_failures"] == 8
    brute = [f for f in security["findings"] if f["kind"] == "ssh_bruteforce"]
    assert [(f["severity"], f["evidence"]["address"]) for f in brute] == [("medium", "203.0.113.77")]
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)])
    result = _run("--config", str(write_config(tmp_path, data)), "--once")
    assert result.returncode == 0, result.stderr
    store = read_store(load(data))
    sample = store.query_samples(*WIDE).iloc[-1]
    assert sample["ssh_failures"] == 8 and sample["threat_level"] in ("medium", "high")  # high: other findings here
    alerts = store.query_alerts(*WIDE)
    fired = alerts[alerts["metric"].str.startswith("security.ssh_bruteforce.")]
    assert len(fired) == 1 and "203.0.113.77" in fired["message"].iloc[0]  # eight user names, one alert


def test_no_readable_source_is_stored_as_not_monitored(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    empty = tmp_path / "no-journal"
    empty.mkdir()
    agent = start_agent(test_pki, security={
        "auth_log_paths": [str(tmp_path / "auth.log")], "journal_directory": str(empty),
    })
    answer = _scanned(agent, test_pki)
    assert answer["security"]["ssh_failures"] is None  # type: ignore[index]
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)])
    assert _run("--config", str(write_config(tmp_path, data)), "--once").returncode == 0
    sample = read_store(load(data)).query_samples(*WIDE).iloc[-1]
    assert sample["ssh_failures"] != sample["ssh_failures"]  # NaN: not monitored, not 0
