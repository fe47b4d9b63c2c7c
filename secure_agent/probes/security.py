"""One security scan: processes, sockets and SSH failures (auth logs or the journal), merged into findings.

The scan is the expensive part of the agent's metrics (it walks every process and reads the logs), so the
metrics service runs it in the background every ``check_interval`` seconds and serves the last report.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from secure_agent.config import SecurityConfig
from secure_agent.probes.acknowledge import Acknowledger, summarise
from secure_agent.probes.findings import Finding, ThreatLevel
from secure_agent.probes.journal import JournalFollower
from secure_agent.probes.network import scan_network
from secure_agent.probes.processes import scan_processes
from secure_agent.probes.ssh import SshMonitor

SECURITY_METRICS = ("processes", "network", "ssh_auth_log")


class SecurityReport(NamedTuple):
    scanned_at: float
    duration: float  # seconds the scan took
    findings: tuple[Finding, ...]  # open ones first, most severe first, at most MAX_FINDINGS; then acknowledged
    issues: int  # all open (not acknowledged) findings, including any beyond the cap
    threat_level: ThreatLevel
    ssh_failures: int | None  # None: no SSH log source readable (the reason is in ``unavailable``)
    unknown_processes: int
    unavailable: tuple[tuple[str, str], ...]  # (metric, reason) for the parts that could not run


class SecurityScanner:
    """Holds the auth-log state between scans; :meth:`scan` must not run concurrently with itself."""

    def __init__(
        self,
        config: SecurityConfig,
        *,
        proc_root: Path = Path("/proc"),
        platform: str = sys.platform,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._proc_root = proc_root
        self._platform = platform
        self._clock = clock
        self._acknowledger = Acknowledger(config.acknowledged_findings, clock)
        self._ssh = SshMonitor(
            config.auth_log_paths,
            max_failures=config.ssh_max_failures,
            find_time=config.ssh_find_time,
            clock=clock,
            sources=config.auth_sources,
            journal=JournalFollower(config.journal_directory, initial_since=config.ssh_find_time, clock=clock),
        )

    def scan(self) -> SecurityReport:
        started = time.perf_counter()
        processes = scan_processes(self._proc_root, platform=self._platform)
        network = scan_network(
            self._proc_root,
            suspicious_ports=self._config.suspicious_ports,
            expected_listeners=self._config.expected_listeners,
            platform=self._platform,
        )
        ssh = self._ssh.scan()
        unavailable = tuple(
            (metric, reason)
            for metric, reason in zip(SECURITY_METRICS, (processes.reason, network.reason, ssh.reason), strict=True)
            if reason is not None
        )
        shown, issues, level = summarise(
            *self._acknowledger.apply(ssh.findings + processes.findings + network.findings)
        )
        return SecurityReport(
            scanned_at=self._clock(),
            duration=time.perf_counter() - started,
            findings=shown,
            issues=issues,
            threat_level=level,
            ssh_failures=ssh.failures,
            unknown_processes=processes.unknown,
            unavailable=unavailable,
        )

    def close(self) -> None:
        self._ssh.close()
