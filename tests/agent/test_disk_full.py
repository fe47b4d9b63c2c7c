"""Issue 22, item 5: the audit log's file system full for a moment (a small tmpfs): no partial record is left,
calls are refused with 503 while it cannot write, and once space is back the agent serves again by itself (no
signal, no restart), with a record of what it could not write; ``secure-audit verify`` passes throughout.

Needs root (mount); skipped with the reason otherwise. The tmpfs is unmounted afterwards whatever happens.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from secure_agent.audit import AuditLog, verify_file
from secure_agent.audit_rotation import RotationPolicy, segment_path
from secure_agent.config import AgentConfig
from secure_agent.errors import AuditError, StartupError
from secure_agent.lifecycle import Agent
from secure_agent.refusals import Budget, RefusalRecorder
from secure_audit.segments import verify_segments
from tests.plugins.agent import RPCStatusError, StartAgent, agent_config_data, rpc_call
from tests.plugins.disk import fill_up
from tests.plugins.pki import TestPKI

RECOVERY_DEADLINE = 15.0  # the retry timer tries after 1, 2, 4 ... (at most 10) seconds
MAX_CALLS = 400


def call(agent: object, pki: TestPKI) -> int:
    try:
        rpc_call(agent, pki, "ping")  # type: ignore[arg-type]
    except RPCStatusError as refused:
        return refused.status
    return 200


def test_a_full_disk_is_recovered_from_without_a_signal(
    start_agent: StartAgent, test_pki: TestPKI, small_disk: Path
) -> None:
    agent = start_agent(
        test_pki,
        audit_log=str(small_disk / "audit.log"),
        security={"rate_limit": {"per_second": 10_000, "burst": 10_000}},
    )
    assert call(agent, test_pki) == 200
    filler = fill_up(small_disk, 8 * 1024)  # room for a few records, then ENOSPC mid-record
    statuses = [call(agent, test_pki) for _ in range(MAX_CALLS // 10)]
    assert statuses[0] == 200 and 503 in statuses
    refusing = statuses.index(503)
    assert set(statuses[refusing:]) == {503}  # refused while it cannot write, never served unrecorded
    data = agent.audit_log.read_bytes()
    assert data.endswith(b"\n")  # no partial record left behind
    assert verify_file(agent.audit_log).ok  # what is there verifies: a full disk does not read as tampering
    served = sum(1 for line in data.splitlines() if b'"outcome":"served"' in line)
    assert served == statuses.count(200) + 1

    filler.unlink()  # space is back; no signal, no restart
    deadline = time.monotonic() + RECOVERY_DEADLINE
    status = 503
    while status == 503 and time.monotonic() < deadline:
        time.sleep(0.2)  # bounded: the agent's own retry timer is what is waited for
        status = call(agent, test_pki)
        statuses.append(status)
    assert status == 200, "the agent did not serve again once space was back"
    agent.stop()
    records = [json.loads(line) for line in agent.audit_log.read_text().splitlines()]
    resumed = [r for r in records if r["event"] == "audit_resumed"]
    assert len(resumed) == 1
    assert "No space left" in resumed[0]["detail"] or "short write" in resumed[0]["detail"]
    assert resumed[0]["first"] <= resumed[0]["last"]
    # Every refusal is accounted for: tried and counted as not written (the first 503 twice: its call record and
    # the record of its refusal), or over the refusal budget and counted in a summary.
    summarised = sum(r["count"] for r in records if r.get("refusal") == "bad_request/audit_unavailable")
    assert resumed[0]["count"] + summarised == statuses.count(503) + 1
    assert verify_file(agent.audit_log).ok
    assert records[-1]["event"] == "stop"


def wait_writable(log: AuditLog) -> None:
    deadline = time.monotonic() + RECOVERY_DEADLINE
    while log.broken is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # bounded: the log's own retry timer is what is waited for
    assert log.broken is None, "the log did not write again once space was back"


def test_a_full_disk_between_the_rename_and_the_new_segments_first_record(small_disk: Path) -> None:
    """The rename of a rotation needs no space, the new segment's first record does: once space is back, the
    new segment must still start with its ``rotate`` record (else, once it is the oldest segment, it verifies
    as "records cut"), and that record must still say that unfetched segments were deleted."""
    path = small_disk / "audit.log"
    log = AuditLog(path, "agent-a", sync_interval=0, rotation=RotationPolicy(2048, 1, 1), retry_first=0.05)
    log.open()
    written = 0
    while not segment_path(path, 1).exists() and written < MAX_CALLS:  # one rotation done: .1 is unfetched
        log.record("call", "served", method="ping", request_id=f"r{written}")
        written += 1
    # A reader holds .1 open (as get_audit does), so deleting it frees no space.
    with open(segment_path(path, 1), "rb"):
        filler = fill_up(small_disk, 0)  # the live segment's page has room; a new file has none
        with pytest.raises(AuditError):
            while written < 2 * MAX_CALLS:  # the next rotation deletes .1 and renames, then cannot write
                log.record("call", "served", method="ping", request_id=f"r{written}")
                written += 1
    assert path.stat().st_size == 0
    filler.unlink()
    wait_writable(log)
    log.record("call", "served", method="ping", request_id="after")
    log.close()
    live = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in live][:2] == ["rotate", "audit_resumed"]
    assert "deleted 1 segment(s) holding records no collector had fetched" in live[0]["detail"]
    assert verify_segments([path]).ok  # the live segment, as the oldest one kept, starts a chain
    assert verify_segments([segment_path(path, 1), path]).ok


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_summary_the_full_disk_refused_is_written_once_space_is_back(small_disk: Path) -> None:
    """The counts of a refusal summary that a full disk refused are not lost: written with the next summary."""
    clock = Clock()
    path = small_disk / "audit.log"
    log = AuditLog(path, "agent-a", sync_interval=0, retry_first=0.05)
    log.open()
    refusals = RefusalRecorder(
        log, Budget(burst=1, per_second=0.001, per_source_burst=1, per_source_per_second=0.001, summary_interval=60),
        clock=clock, wall=clock,
    )
    for _ in range(30):
        refusals.refuse("fp1", "identity_refused", "certificate_revoked", {"common_name": "rogue"})
    filler = fill_up(small_disk, 0)
    with pytest.raises(AuditError):
        for number in range(MAX_CALLS):  # until the disk is full to the last byte
            log.record("call", "served", method="ping", request_id=f"r{number}")
    clock.now += 60
    refusals.flush_if_due()  # the summary is due and cannot be written
    filler.unlink()
    wait_writable(log)
    clock.now += 60
    refusals.flush_if_due()
    refusals.close()
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    summaries = [r for r in records if r["event"] == "refusals_suppressed"]
    assert [(s["source"], s["refusal"], s["common_name"]) for s in summaries] == [
        ("fp1", "identity_refused/certificate_revoked", "rogue")]
    assert sum(s["count"] for s in summaries) == 29  # the one in the budget was written, every other one counted
    assert verify_file(path).ok


def test_refusals_while_the_disk_is_full_are_summarised_with_who(small_disk: Path) -> None:
    """A refusal the broken log cannot take is counted in the summary (source, refusal, count), not only as
    "identity_refused=N" in ``audit_resumed``: a flood while the disk is full does not hide who sent it."""
    clock = Clock()
    path = small_disk / "audit.log"
    log = AuditLog(path, "agent-a", sync_interval=0, retry_first=0.05)
    log.open()
    refusals = RefusalRecorder(log, Budget(summary_interval=60), clock=clock, wall=clock)
    filler = fill_up(small_disk, 0)
    with pytest.raises(AuditError):
        for number in range(MAX_CALLS):  # until the disk is full to the last byte
            log.record("call", "served", method="ping", request_id=f"r{number}")
    for _ in range(5):  # well within every budget
        refusals.refuse("fp1", "identity_refused", "certificate_revoked", {"common_name": "rogue"})
    filler.unlink()
    wait_writable(log)
    refusals.close()
    log.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    summaries = [r for r in records if r["event"] == "refusals_suppressed"]
    assert [(s["source"], s["refusal"], s["count"]) for s in summaries] == [
        ("fp1", "identity_refused/certificate_revoked", 5)]
    resumed = [r for r in records if r["event"] == "audit_resumed"]
    assert len(resumed) == 1 and "identity_refused" not in (resumed[0].get("events") or "")  # counted once
    assert verify_file(path).ok


def test_what_a_log_closed_while_full_could_not_write_is_logged_with_its_counts(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped while the disk is still full: no ``audit_resumed`` record will ever count what was not written,
    so the operational log says it (how many of each event, first and last time) rather than nothing."""
    path = small_disk / "audit.log"
    log = AuditLog(path, "agent-a", sync_interval=0, retry_first=60)
    log.open()
    fill_up(small_disk, 0)
    failed = 0
    for number in range(MAX_CALLS):
        try:
            log.record("call", "served", method="ping", request_id=f"r{number}")
        except AuditError:
            failed += 1
            if failed == 3:
                break
    log.close()
    assert f"{failed} record(s) not written (call={failed})" in caplog.text
    assert verify_file(path).ok


def test_an_agent_that_cannot_start_on_a_full_disk_leaves_no_retry_thread_behind(
    small_disk: Path, test_pki: TestPKI, tmp_path: Path
) -> None:
    """Found: a start whose first write failed (a crash right after a rotation's rename left the live segment
    empty; its ``rotate`` record needs room the full disk does not have) was refused, as it should be, but
    the audit log's retry thread, started by that failed write, ran on with nobody to stop it: an agent
    built again in the same process (a supervisor's restart) had two, each writing once the disk had room."""
    path = small_disk / "audit.log"
    log = AuditLog(path, "localhost", sync_interval=0, rotation=RotationPolicy(2048, 1, 1))
    log.open()
    written = 0
    while not segment_path(path, 1).exists() and written < MAX_CALLS:
        log.record("call", "served", method="ping", request_id=f"r{written}")
        written += 1
    log.close()
    path.write_bytes(b"")  # the crash right after the rename: the new segment has no record yet
    fill_up(small_disk, 0)
    before = {thread.ident for thread in threading.enumerate() if thread.name == "audit-retry"}
    config = AgentConfig.model_validate(agent_config_data(test_pki, "localhost", tmp_path, audit_log=str(path)))
    with pytest.raises(StartupError):
        Agent(config)
    left = [t for t in threading.enumerate() if t.name == "audit-retry" and t.ident not in before]
    for thread in left:
        thread.join(timeout=5)  # bounded: a closed log's retry thread ends at once
    assert not [thread for thread in left if thread.is_alive()]
