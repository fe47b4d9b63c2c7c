"""Real processes: a copied binary running from /tmp, another whose file is deleted, seen with their pids.

Also run the scan as an unprivileged user, for whom root's processes are "permission denied": they must
be counted as unknown, never reported as deleted or missing.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from secure_agent.config import AgentConfig
from secure_agent.metrics import MetricsService
from secure_agent.probes.findings import DELETED_EXECUTABLE, EXEC_FROM_TMP
from secure_agent.probes.processes import scan_processes

SLEEP = shutil.which("sleep") or "/bin/sleep"
WAIT = 10.0


class Dropped:
    def __init__(self, running: subprocess.Popen[bytes], deleted: subprocess.Popen[bytes], path: Path, gone: Path):
        self.running, self.deleted, self.path, self.gone = running, deleted, path, gone


@pytest.fixture
def dropped() -> Iterator[Dropped]:
    """Two copies of sleep started from a fresh directory under /tmp; the second one's file is deleted."""
    directory = Path(tempfile.mkdtemp(prefix="smon-live-", dir="/tmp"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        first, second = directory / "payload", directory / "vanishing"
        for copy in (first, second):
            shutil.copy2(SLEEP, copy)
            copy.chmod(0o755)
        try:
            # Popen returns after the exec succeeded, so /proc/<pid>/exe already names the copy
            processes.append(subprocess.Popen([str(first), "60"]))
            processes.append(subprocess.Popen([str(second), "60"]))
        except PermissionError:
            pytest.skip("/tmp is mounted noexec here")
        second.unlink()
        yield Dropped(processes[0], processes[1], first, second)
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=WAIT)
        shutil.rmtree(directory, ignore_errors=True)


def kinds_for(findings: list[dict[str, object]], pid: int) -> dict[str, dict[str, object]]:
    result: dict[str, dict[str, object]] = {}
    for finding in findings:
        evidence = finding["evidence"]
        assert isinstance(evidence, dict)
        if evidence.get("pid") == pid:
            result[str(finding["kind"])] = evidence
    return result


def test_scan_sees_both_with_their_pids(dropped: Dropped) -> None:
    scan = scan_processes(Path("/proc"))
    findings = [finding.as_wire() for finding in scan.findings]
    running = kinds_for(findings, dropped.running.pid)
    assert set(running) == {EXEC_FROM_TMP}
    assert running[EXEC_FROM_TMP]["path"] == str(dropped.path)
    assert running[EXEC_FROM_TMP]["user"] == "root" or os.geteuid() != 0
    deleted = kinds_for(findings, dropped.deleted.pid)
    assert set(deleted) == {EXEC_FROM_TMP, DELETED_EXECUTABLE}
    assert deleted[DELETED_EXECUTABLE]["path"] == str(dropped.gone)
    assert deleted[DELETED_EXECUTABLE]["state"] == "deleted"


def test_psutil_path_sees_them_too(dropped: Dropped) -> None:
    """The macOS/Windows code path (psutil) run here: a deleted file shows as missing."""
    findings = [finding.as_wire() for finding in scan_processes(platform="darwin").findings]
    assert set(kinds_for(findings, dropped.running.pid)) == {EXEC_FROM_TMP}
    assert kinds_for(findings, dropped.deleted.pid)[DELETED_EXECUTABLE]["state"] == "missing"


def test_service_reports_them_after_a_scan(dropped: Dropped, make_config: Callable[..., AgentConfig]) -> None:
    service = MetricsService(make_config())
    service.start()
    try:
        assert service.wait_for_scan(WAIT)
        snapshot = service.snapshot()
    finally:
        assert service.stop(WAIT)
    findings = snapshot["security"]["findings"]
    assert set(kinds_for(findings, dropped.running.pid)) == {EXEC_FROM_TMP}
    assert DELETED_EXECUTABLE in kinds_for(findings, dropped.deleted.pid)
    assert snapshot["threat_level"] == "high" and snapshot["security_issues"] >= 3


NOBODY = 65534


def scan_as_nobody() -> dict[str, object]:
    """Fork, drop to uid/gid 65534 in the child, scan the real /proc there, and return what it saw."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() with threads alive; the child runs only the scan and _exit,
        # and the parent kills it at the deadline should it ever hang on a lock another thread held
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            scan = scan_processes()
            pids = sorted({int(str(dict(f.evidence)["pid"])) for f in scan.findings})
            seen = {"pids": pids, "unknown": dict(scan.unknown_reasons)}
            os.write(write_end, json.dumps(seen).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], WAIT)
        data = b""
        while ready:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        deadline = time.monotonic() + WAIT
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                break
            select.select([], [], [], 0.01)  # a bounded poll for the child to exit
    report = json.loads(data)
    assert isinstance(report, dict)
    return report


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_unprivileged_scan_counts_roots_processes_as_unknown(dropped: Dropped) -> None:
    report = scan_as_nobody()
    unknown = report["unknown"]
    assert isinstance(unknown, dict) and unknown.get("permission denied", 0) >= 2
    # root's copies in /tmp cannot be inspected by nobody: unknown, never "missing" or "deleted"
    pids = report["pids"]
    assert isinstance(pids, list)
    assert dropped.running.pid not in pids and dropped.deleted.pid not in pids
