"""Known findings acknowledged: a sealed-memfd process and a known tool in /tmp, live, by hash, path, kind.

The operator's case of issue 21: a process legitimately running from a memfd (or a known tool in /tmp)
fired ``security.deleted_executable.<hash>`` anew for every PID and kept the host at "high" forever.
Acknowledged, it stays in the answer marked as such, counts in neither ``issues`` nor ``threat_level``,
fires no alert, and every acknowledgement is in the audit log; the collector keys findings by what they
are (path, kind), so two PIDs of one binary fire once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from secure_agent.audit import verify_file
from secure_agent.config import AgentConfig
from secure_agent.probes.acknowledge import Acknowledger, summarise
from secure_agent.probes.findings import DELETED_EXECUTABLE, EXEC_FROM_TMP, SSH_BRUTEFORCE, make_finding
from secure_agent.probes.security import SecurityScanner
from secure_collector.alerts import AlertEngine
from secure_collector.config import Thresholds
from storage.models import Finding, Sample
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI

SLEEP = Path(shutil.which("sleep") or "/bin/sleep")
WAIT = 10.0
MEMFD_NAME = "smon-sealed-tool"


@pytest.fixture
def memfd_process() -> Iterator[subprocess.Popen[bytes]]:
    """``sleep`` run from a sealed memfd: /proc/PID/exe is ``/memfd:NAME (deleted)``."""
    fd = os.memfd_create(MEMFD_NAME, os.MFD_CLOEXEC | getattr(os, "MFD_ALLOW_SEALING", 0))
    os.write(fd, SLEEP.read_bytes())
    process = subprocess.Popen([f"/proc/self/fd/{fd}", "60"], pass_fds=(fd,))
    os.close(fd)
    try:
        yield process
    finally:
        process.kill()
        process.wait(timeout=WAIT)


@pytest.fixture
def tool_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """A known tool copied to /tmp, run by two processes."""
    directory = Path(os.path.realpath(tmp_path_factory.mktemp("tool")))
    if not str(directory).startswith("/tmp/"):
        pytest.skip("the test's temporary directory is not under /tmp")
    tool = directory / "known-tool"
    shutil.copy2(SLEEP, tool)
    processes = [subprocess.Popen([str(tool), "60"]) for _ in range(2)]
    try:
        yield tool, processes
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=WAIT)


def _scan(make_config: Callable[..., AgentConfig], acknowledged: list[dict[str, Any]]) -> dict[str, Any]:
    config = make_config(acknowledged_findings=acknowledged, auth_sources=["files"])
    report = SecurityScanner(config.security).scan()
    return {"report": report, "findings": [finding.as_wire() for finding in report.findings]}


def _ours(findings: list[dict[str, Any]], pids: set[int]) -> list[dict[str, Any]]:
    return [f for f in findings if f["evidence"].get("pid") in pids]


def test_a_sealed_memfd_process_acknowledged_by_hash(
    memfd_process: subprocess.Popen[bytes], make_config: Callable[..., AgentConfig]
) -> None:
    digest = hashlib.sha256(SLEEP.read_bytes()).hexdigest()
    before = _scan(make_config, [])
    mine = _ours(before["findings"], {memfd_process.pid})
    assert [(f["kind"], f["severity"], f["evidence"]["path"]) for f in mine] == [
        (DELETED_EXECUTABLE, "high", f"/memfd:{MEMFD_NAME}")
    ]
    assert mine[0]["evidence"]["sha256"] == digest  # read through /proc/PID/exe although the file is gone
    after = _scan(make_config, [{"sha256": digest, "reason": "sealed memfd of our backup agent"}])
    acknowledged = _ours(after["findings"], {memfd_process.pid})
    assert [f["evidence"]["acknowledged"] for f in acknowledged] == ["sealed memfd of our backup agent"]
    assert after["report"].issues == before["report"].issues - 1  # still shown, no longer an issue
    assert all("acknowledged" in f["evidence"] for f in after["findings"][after["report"].issues :])


def test_a_known_tool_in_tmp_acknowledged_by_path_and_kind_until_it_expires(
    tool_in_tmp: tuple[Path, list[subprocess.Popen[bytes]]], make_config: Callable[..., AgentConfig]
) -> None:
    tool, processes = tool_in_tmp
    pids = {process.pid for process in processes}
    today = dt.datetime.now(dt.UTC).date()
    entry = {"kind": EXEC_FROM_TMP, "path": str(tool), "reason": "vendor's diagnostics", "expires": str(today)}
    in_force = _ours(_scan(make_config, [entry])["findings"], pids)
    assert len(in_force) == 2 and all(f["evidence"]["acknowledged"] == "vendor's diagnostics" for f in in_force)
    lapsed = _ours(_scan(make_config, [{**entry, "expires": str(today - dt.timedelta(days=1))}])["findings"], pids)
    assert len(lapsed) == 2 and not any("acknowledged" in f["evidence"] for f in lapsed)


def test_two_pids_of_one_binary_fire_one_alert_and_a_new_pid_none(
    tool_in_tmp: tuple[Path, list[subprocess.Popen[bytes]]], make_config: Callable[..., AgentConfig]
) -> None:
    tool, processes = tool_in_tmp
    engine = AlertEngine(Thresholds())

    def alerts_for_tool() -> list[tuple[str, str]]:
        findings = [Finding.model_validate(f) for f in _scan(make_config, [])["findings"]]
        alerts = engine.evaluate(Sample(agent="web1", timestamp=dt.datetime.now().timestamp(), findings=findings))
        return [(a.metric, a.state) for a in alerts if str(tool) in a.message]

    fired = alerts_for_tool()
    assert len(fired) == 1 and fired[0][1] == "firing" and fired[0][0].startswith("security.exec_from_tmp.")
    processes[0].kill()
    processes[0].wait(timeout=WAIT)
    processes.append(subprocess.Popen([str(tool), "60"]))  # the same binary under a new PID
    assert alerts_for_tool() == []


def _finding(kind: str, severity: str, **evidence: Any) -> Any:
    return make_finding(kind, severity, f"{kind} {evidence}", evidence)  # type: ignore[arg-type]


def test_acknowledged_findings_never_raise_the_threat_level_nor_fire() -> None:
    config = AgentConfig.model_validate({
        "name": "a", "tls": {"cert": "c", "key": "k", "ca": "ca"}, "audit_log": "a.log",
        "security": {"allowed_ips": ["127.0.0.1"], "hmac_keys": {"c": "c.hmac"}, "acknowledged_findings": [
            {"kind": SSH_BRUTEFORCE, "address": "192.0.2.50", "reason": "our own scanner"},
            {"user": "backup", "kind": DELETED_EXECUTABLE, "reason": "upgraded in place"},
        ]},
    })
    findings = [
        _finding(SSH_BRUTEFORCE, "high", address="192.0.2.50", count=40),
        _finding(DELETED_EXECUTABLE, "medium", path="/opt/b/agent", user="backup", pid=7),
        _finding(DELETED_EXECUTABLE, "medium", path="/opt/b/agent", user="mallory", pid=8),
    ]
    shown, issues, level = summarise(*Acknowledger(config.security.acknowledged_findings, lambda: 0.0).apply(findings))
    assert (issues, level) == (1, "medium")
    assert [dict(f.evidence).get("acknowledged") for f in shown] == [None, "our own scanner", "upgraded in place"]
    engine = AlertEngine(Thresholds())
    sample = Sample(agent="a", timestamp=1.0, findings=[Finding.model_validate(f.as_wire()) for f in shown])
    assert [a.message.split(":")[0] for a in engine.evaluate(sample)] == [DELETED_EXECUTABLE]


def test_an_entry_must_name_what_it_acknowledges() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="names nothing to acknowledge"):
        AgentConfig.model_validate({
            "name": "a", "tls": {"cert": "c", "key": "k", "ca": "ca"}, "audit_log": "a.log",
            "security": {"allowed_ips": ["127.0.0.1"], "hmac_keys": {"c": "c.hmac"},
                         "acknowledged_findings": [{"reason": "everything is fine"}]},
        })


def test_every_acknowledgement_is_audited_at_start(test_pki: TestPKI, start_agent: StartAgent) -> None:
    entries = [
        {"kind": SSH_BRUTEFORCE, "address": "192.0.2.50", "reason": "our own scanner"},
        {"path": "/tmp/known-tool", "reason": "vendor's diagnostics", "expires": "2020-01-31"},
    ]
    agent = start_agent(test_pki, security={"acknowledged_findings": entries})
    records = [json.loads(line) for line in agent.audit_log.read_text().splitlines()]
    acknowledgements = [(r["outcome"], r["detail"]) for r in records if r["event"] == "acknowledgement"]
    assert acknowledgements == [
        ("active", "kind=ssh_bruteforce address=192.0.2.50: our own scanner"),
        ("expired", "path=/tmp/known-tool until=2020-01-31: vendor's diagnostics"),
    ]
    assert verify_file(agent.audit_log).ok


def test_a_missing_executable_fires_once_whatever_its_pid() -> None:
    engine = AlertEngine(Thresholds())

    def missing(pid: int) -> Finding:
        evidence = {"pid": pid, "name": "payload", "user": "www-data", "state": "missing"}
        return Finding.model_validate(_finding(DELETED_EXECUTABLE, "medium", **evidence).as_wire())

    first = engine.evaluate(Sample(agent="a", timestamp=1.0, findings=[missing(100), missing(101)]))
    assert [alert.state for alert in first] == ["firing"]
    assert engine.evaluate(Sample(agent="a", timestamp=2.0, findings=[missing(250)])) == []
