"""Executables in world-writable directories, deleted or missing, against a fixture process table."""

from __future__ import annotations

import os
import pwd
import xmlrpc.client
from pathlib import Path

from secure_agent.probes.findings import DELETED_EXECUTABLE, EXEC_FROM_TMP, Finding
from secure_agent.probes.processes import inspect, scan_processes


def by_pid(findings: tuple[Finding, ...]) -> dict[int, list[tuple[str, str]]]:
    table: dict[int, list[tuple[str, str]]] = {}
    for finding in findings:
        pid = dict(finding.evidence)["pid"]
        assert isinstance(pid, int)
        table.setdefault(pid, []).append((finding.kind, finding.severity))
    return table


def test_fixture_process_table(fixtures: Path) -> None:
    scan = scan_processes(fixtures / "proc" / "host", platform="linux")
    assert scan.reason is None
    assert by_pid(scan.findings) == {
        100: [(EXEC_FROM_TMP, "medium")],
        101: [(EXEC_FROM_TMP, "high"), (DELETED_EXECUTABLE, "high")],  # /dev/shm, then deleted
        102: [(DELETED_EXECUTABLE, "low")],  # a package upgrade replaced nginx under it
        103: [(DELETED_EXECUTABLE, "high")],  # memfd: fileless
        104: [(DELETED_EXECUTABLE, "medium")],  # alive, no executable at all
        107: [(EXEC_FROM_TMP, "medium"), (DELETED_EXECUTABLE, "high")],
        108: [(DELETED_EXECUTABLE, "medium")],
    }
    # kernel thread, zombie and an exe that is not a link are unknown, not findings
    assert scan.unknown == 3
    assert dict(scan.unknown_reasons) == {"kernel thread": 1, "zombie": 1, "unreadable (EINVAL)": 1}
    assert scan.scanned == 17  # every numeric entry; "self", "net" and "sys" are not processes
    for finding in scan.findings:
        assert finding.technique == {EXEC_FROM_TMP: "T1059", DELETED_EXECUTABLE: "T1070.004"}[finding.kind]


def test_evidence_names_pid_user_path_and_state(fixtures: Path) -> None:
    scan = scan_processes(fixtures / "proc" / "host", platform="linux")
    deleted = [f for f in scan.findings if f.kind == DELETED_EXECUTABLE and dict(f.evidence)["pid"] == 107]
    evidence = dict(deleted[0].evidence)
    # a comm with ") S 1 (" in it does not confuse the stat parser; the path keeps its spaces
    assert evidence == {
        "pid": 107, "name": "evil) S 1 (x", "user": evidence["user"], "path": "/var/tmp/a b(c)", "state": "deleted",
    }
    assert evidence["user"] in {"1000", *(entry.pw_name for entry in pwd.getpwall() if entry.pw_uid == 1000)}
    missing = next(f for f in scan.findings if dict(f.evidence)["pid"] == 104)
    assert dict(missing.evidence)["state"] == "missing" and "path" not in dict(missing.evidence)


def test_hostile_file_names_are_escaped_and_marshal(tmp_path: Path) -> None:
    """A binary named with terminal escapes, a newline and bytes that are not UTF-8."""
    pid_dir = tmp_path / "4242"
    pid_dir.mkdir()
    (pid_dir / "stat").write_text("4242 (x) S 1 1 1 0 -1 4194560 0\n")
    os.symlink(b"/tmp/\x1b[31mred\nline\xff\xfe \xe2\x80\xae (deleted)", bytes(pid_dir / "exe"))
    scan = scan_processes(tmp_path, platform="linux")
    paths = {dict(f.evidence)["path"] for f in scan.findings}
    assert paths == {"/tmp/\\x1b[31mred\\x0aline\\xff\\xfe \\u202e"}
    for finding in scan.findings:
        assert "\n" not in finding.summary and "\x1b" not in finding.summary
        xmlrpc.client.loads(xmlrpc.client.dumps((finding.as_wire(),), allow_none=True))


def test_a_process_that_vanished_is_skipped(tmp_path: Path) -> None:
    assert inspect(tmp_path, 999999, {}) is None
    assert scan_processes(tmp_path, platform="linux").reason == f"no processes under {tmp_path}"


def test_real_proc_has_unknown_kernel_threads_and_no_finding_for_this_process() -> None:
    scan = scan_processes()
    assert scan.reason is None and scan.scanned > 1
    assert dict(scan.unknown_reasons).get("kernel thread", 0) >= 1
    assert os.getpid() not in by_pid(scan.findings)
    info = inspect(Path("/proc"), os.getpid(), {})
    assert info is not None and info.state == "ok" and info.exe is not None and os.path.exists(info.exe)
