"""SSH brute force on a host whose sshd logs only to the systemd journal (Debian 12's default).

Real journal files (systemd-journal-remote writes them, journalctl reads them, as on a host), the same
sshd lines as the auth-log fixture: the same sources, counts and severities; read incrementally by cursor;
forged entries (``logger -t sshd`` as a user) and injected user names ignored; and where no source can be
read, ``ssh_failures`` is null with the reason, in the scan, the agent's answer and the stored sample.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from secure_agent.config import AgentConfig
from secure_agent.metrics import MetricsService
from secure_agent.probes.journal import JournalFollower
from secure_agent.probes.ssh import SshMonitor
from secure_collector.validate import to_sample, validate_answer
from tests.probes.journal import Entry, JournalFixture, entries_of_syslog
from tests.probes.test_ssh import SYSLOG_NOW, Clock, sources

FILE_TABLE = {
    "198.51.100.66": (25, "high"),
    "203.0.113.5": (7, "medium"),
    "198.51.100.77": (6, "medium"),
    "2001:db8::42": (5, "medium"),
}


def _monitor(directory: Path, clock: Clock, tmp_path: Path) -> SshMonitor:
    journal = JournalFollower(directory, initial_since=600, clock=clock)
    return SshMonitor([tmp_path / "no-auth.log"], max_failures=5, find_time=600, clock=clock, journal=journal)


def test_journal_only_host_detects_the_brute_force_the_auth_log_shows(fixtures: Path, tmp_path: Path) -> None:
    journal = JournalFixture(tmp_path / "journal")
    journal.append(entries_of_syslog((fixtures / "auth" / "auth.log").read_text().splitlines(), 2026))
    monitor = _monitor(journal.directory, Clock(SYSLOG_NOW), tmp_path)
    table, failures = sources(monitor)
    assert table == FILE_TABLE  # exactly what the same lines in /var/log/auth.log give
    assert failures == 25 + 7 + 6 + 5 + 2
    assert monitor.scan().source == "journal"


def test_read_incrementally_by_cursor(tmp_path: Path) -> None:
    journal = JournalFixture(tmp_path / "journal")
    now = datetime(2026, 3, 10, 3, 22).timestamp()
    clock = Clock(now)
    attempt = "Failed password for root from 203.0.113.9 port 4000 ssh2"
    journal.append([Entry(now - 100 + i, "sshd", attempt) for i in range(3)])
    monitor = _monitor(journal.directory, clock, tmp_path)
    assert sources(monitor) == ({}, 3)
    cursor = monitor._journal.cursor if monitor._journal else None
    assert cursor is not None
    assert sources(monitor) == ({}, 3)  # nothing read twice
    journal.append([Entry(now - 50 + i, "sshd", attempt) for i in range(3)])
    assert sources(monitor) == ({"203.0.113.9": (6, "medium")}, 6)
    clock.now = now + 700  # the window moves on: the old failures age out, none is re-read
    assert sources(monitor) == ({}, 0)


def test_forged_and_injected_entries_do_not_count(tmp_path: Path) -> None:
    journal = JournalFixture(tmp_path / "journal")
    now = datetime(2026, 3, 10, 3, 22).timestamp()
    forged = "Failed password for root from 192.0.2.99 port 22 ssh2"
    injected = "Failed password for invalid user x from 192.0.2.1 port 22 ssh2 from 198.51.100.77 port 40100 ssh2"
    journal.append(
        [Entry(now - 60, "sshd", forged, uid=1000) for _ in range(10)]  # `logger -t sshd` by a user
        + [Entry(now - 60, "fakesshd", forged) for _ in range(10)]  # another program, as root
        + [Entry(now - 30, "sshd", injected) for _ in range(5)]
        + [Entry(now - 20, "sshd-session", "Failed password for root from 2001:db8::42 port 50022 ssh2")]
        + [Entry(now - 10, "sshd", "Failed password for root from 198.51.100.8 port 22 ssh2\nsecond line")]
    )
    table, failures = sources(_monitor(journal.directory, Clock(now), tmp_path))
    assert table == {"198.51.100.77": (5, "medium")}  # the real source behind the crafted user name
    assert failures == 6


def test_no_readable_source_is_not_monitored_not_zero(tmp_path: Path) -> None:
    empty = tmp_path / "no-journal"
    empty.mkdir()
    scan = _monitor(empty, Clock(SYSLOG_NOW), tmp_path).scan()
    assert scan.failures is None and scan.source is None
    assert scan.reason is not None
    assert "no auth log found" in scan.reason and f"no systemd journal found ({empty})" in scan.reason


def _agent_config(tmp_path: Path, journal: Path, sources: list[str]) -> AgentConfig:
    return AgentConfig.model_validate({
        "name": "web1",
        "tls": {"cert": "a.crt", "key": "a.key", "ca": "ca.crt"},
        "security": {
            "allowed_ips": ["127.0.0.1"], "hmac_keys": {"c": "c.hmac"},
            "auth_log_paths": [str(tmp_path / "auth.log")], "auth_sources": sources,
            "journal_directory": str(journal),
        },
        "audit_log": str(tmp_path / "audit.log"),
    })


def _answer(config: AgentConfig, fixtures: Path) -> dict[str, Any]:
    service = MetricsService(config, proc_root=fixtures / "proc", sys_root=fixtures / "sys", platform="linux")
    service.refresh()
    return service.snapshot()


def test_the_answer_and_the_stored_sample_say_not_monitored(fixtures: Path, tmp_path: Path) -> None:
    config = _agent_config(tmp_path, tmp_path / "nowhere", ["files", "journal"])
    answer = _answer(config, fixtures)
    assert answer["security"]["ssh_failures"] is None
    assert "no auth log found" in answer["unavailable"]["ssh_auth_log"]
    sample = to_sample(validate_answer(json.loads(json.dumps(answer)), "web1"), 1e9)
    assert sample.ssh_failures is None


def test_configured_journal_is_read_even_when_an_auth_log_exists(fixtures: Path, tmp_path: Path) -> None:
    journal = JournalFixture(tmp_path / "journal")
    journal.append([Entry(datetime.now().timestamp() - 5, "sshd", "Invalid user a from 203.0.113.4 port 1")])
    (tmp_path / "auth.log").write_text("")
    answer = _answer(_agent_config(tmp_path, journal.directory, ["journal"]), fixtures)
    assert answer["security"]["ssh_failures"] == 1
    assert "ssh_auth_log" not in answer["unavailable"]
    files_first = _answer(_agent_config(tmp_path, journal.directory, ["files", "journal"]), fixtures)
    assert files_first["security"]["ssh_failures"] == 0  # the (empty) auth log is readable: it is the source
