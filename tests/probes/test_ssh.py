"""SSH brute force over the fixture auth logs: per-source counts in a window, the threshold, the reasons."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from secure_agent.probes.authlog import AuthEvent
from secure_agent.probes.findings import SSH_BRUTEFORCE
from secure_agent.probes.ssh import FailureWindow, SshMonitor

SYSLOG_NOW = datetime(2026, 3, 10, 3, 22).timestamp()  # the syslog fixture is in local time
ISO_NOW = datetime(2026, 3, 10, 3, 12, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def sources(monitor: SshMonitor) -> tuple[dict[str, tuple[int, str]], int | None]:
    scan = monitor.scan()
    assert all(finding.kind == SSH_BRUTEFORCE and finding.technique == "T1110" for finding in scan.findings)
    table: dict[str, tuple[int, str]] = {}
    for finding in scan.findings:
        evidence = dict(finding.evidence)
        table[str(evidence["address"])] = (int(str(evidence["count"])), finding.severity)
    return table, scan.failures


def test_debian_auth_log(fixtures: Path, tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    shutil.copy(fixtures / "auth" / "auth.log", log)
    monitor = SshMonitor([log], max_failures=5, find_time=600, clock=Clock(SYSLOG_NOW))
    table, failures = sources(monitor)
    assert table == {
        "198.51.100.66": (25, "high"),  # "message repeated 25 times", at least 4x the threshold
        "203.0.113.5": (7, "medium"),  # invalid user, PAM, failed password, IPv4-mapped PAM, repeated x2
        "198.51.100.77": (6, "medium"),  # the real source behind the injection attempts
        "2001:db8::42": (5, "medium"),  # IPv6, sshd-session, spelled two ways: exactly the threshold
    }
    # 192.0.2.200 is outside the window, 198.51.100.9 below the threshold, 192.0.2.1 was only ever
    # named inside crafted user names, attacker.example.com is not an address
    assert failures == 25 + 7 + 6 + 5 + 2
    assert "192.0.2.1" not in table


def test_iso_secure_log(fixtures: Path, tmp_path: Path) -> None:
    log = tmp_path / "secure"
    shutil.copy(fixtures / "auth" / "secure", log)
    monitor = SshMonitor([log], max_failures=5, find_time=600, clock=Clock(ISO_NOW))
    table, failures = sources(monitor)
    assert table == {"203.0.113.77": (5, "medium")}
    assert failures == 7  # and fe80::1 twice (with and without zone), below the threshold


def test_the_window_slides_and_the_threshold_is_configurable(fixtures: Path, tmp_path: Path) -> None:
    log = tmp_path / "auth.log"
    shutil.copy(fixtures / "auth" / "auth.log", log)
    clock = Clock(SYSLOG_NOW)
    monitor = SshMonitor([log], max_failures=7, find_time=600, clock=clock)
    assert set(sources(monitor)[0]) == {"198.51.100.66", "203.0.113.5"}
    clock.now += 6 * 60  # 03:28: 203.0.113.5's failures (03:14-03:15) have left the window
    assert set(sources(monitor)[0]) == {"198.51.100.66"}
    clock.now += 10 * 60
    assert sources(monitor) == ({}, 0)


def test_incremental_reads_across_rotation(fixtures: Path, tmp_path: Path) -> None:
    """Failures split over a rotation are counted once each, so the total crosses the threshold."""
    log = tmp_path / "auth.log"
    lines = (fixtures / "auth" / "auth.log").read_text().splitlines(keepends=True)
    v6 = [line for line in lines if "2001:db8::42" in line.lower() or "2001:DB8" in line]
    assert len(v6) == 5
    log.write_text("".join(v6[:2]))
    monitor = SshMonitor([log], max_failures=5, find_time=600, clock=Clock(SYSLOG_NOW))
    assert sources(monitor) == ({}, 2)
    with log.open("a") as handle:
        handle.write(v6[2])
    log.rename(tmp_path / "auth.log.1")
    (tmp_path / "auth.log").write_text("".join(v6[3:]))
    assert sources(monitor) == ({"2001:db8::42": (5, "medium")}, 5)
    assert sources(monitor) == ({"2001:db8::42": (5, "medium")}, 5)  # nothing read twice


def test_reasons_when_no_log_can_be_read(tmp_path: Path) -> None:
    files_only: tuple[Literal["files"]] = ("files",)
    missing = SshMonitor(
        [tmp_path / "auth.log", tmp_path / "secure"], max_failures=5, find_time=600, sources=files_only
    ).scan()
    assert missing.reason is not None and missing.reason.startswith("no auth log found")
    assert str(tmp_path / "secure") in missing.reason
    assert missing.failures is None  # not monitored, not "0 failures"
    directory = SshMonitor([tmp_path], max_failures=5, find_time=600, sources=files_only).scan()
    assert directory.reason == f"{tmp_path}: not a regular file"
    (tmp_path / "secure").write_text("")
    one_readable = SshMonitor(
        [tmp_path / "auth.log", tmp_path / "secure"], max_failures=5, find_time=600, sources=files_only
    ).scan()
    assert one_readable.reason is None and one_readable.failures == 0 and one_readable.source == "files"


def test_memory_stays_bounded_under_address_spraying() -> None:
    window = FailureWindow(600, max_sources=100)
    for index in range(1000):
        window.add(AuthEvent(1000.0, f"2001:db8::{index:x}", None, "failed_password", 1))
    counts = window.counts(1000.0)
    assert len(counts) == 100
    assert {c.address for c in counts} == {f"2001:db8::{index:x}" for index in range(900, 1000)}  # newest kept
