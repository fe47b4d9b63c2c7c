"""Audit-log rotation: segments by size, one hash chain through all of them, verified by ``secure-audit verify``;
a crash between rename and the first record of the new segment, and a failing rename, lose nothing."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from secure_agent.audit import GENESIS, AuditLog, parse_timestamp, verify_file
from secure_agent.audit_rotation import RotationPolicy, shift_segments
from secure_audit import cli
from secure_audit.segments import rotated_segments, verify_segments
from tests.audit.helpers import run_program, run_verify
from tests.plugins.agent import StartAgent, rpc_call
from tests.plugins.pki import TestPKI

MAX_BYTES = 2048
MAX_RECORDS = 500  # every writing loop below is bounded by this


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write(log: AuditLog, count: int) -> None:
    for number in range(count):
        log.record("call", "served", method="ping", request_id=f"r{number:05d}", status=200)


def open_log(path: Path, backup_count: int = 50) -> AuditLog:
    log = AuditLog(path, "agent-a", sync_interval=0, rotation=RotationPolicy(MAX_BYTES, backup_count))
    log.open()
    return log


def rotated_log(path: Path, count: int, backup_count: int = 50) -> list[Path]:
    """Write ``count`` records through a rotating log at ``path``; its segments, oldest first."""
    log = open_log(path, backup_count)
    write(log, count)
    log.close()
    return rotated_segments(path)


def test_segments_rotate_by_size_and_verify_as_one_chain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    segments = rotated_log(path, 60)
    assert len(segments) >= 4  # 60 records of ~250 bytes in segments of 2 KiB
    for segment in segments[:-1]:
        size = segment.stat().st_size
        assert MAX_BYTES <= size < MAX_BYTES + 512, segment  # rotated right after the record that filled it
        assert os.stat(segment).st_mode & 0o077 == 0
    for segment in segments[1:]:
        assert records(segment)[0]["event"] == "rotate" and records(segment)[0]["seq"] == 0
    verdict = verify_segments(segments)
    assert verdict.ok and verdict.start == GENESIS
    assert verdict.records == 60 + len(segments) - 1  # the calls and one rotate record per new segment
    code, out, _ = run_verify(capsys, "--rotated", path)
    assert code == 0 and f"chain intact: {len(segments)} segments, {verdict.records} records" in out


def test_backup_count_bounds_the_segments_kept(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    rotated_log(path, 80, backup_count=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    code, out, _ = run_verify(capsys, "--rotated", path)
    assert code == 0  # the oldest kept segment starts with a rotate record: it continues what was dropped
    assert f"{path}.2: continues an older segment that ended with hash " in out


def test_a_deleted_middle_segment_is_detected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    segments = rotated_log(path, 40)
    assert len(segments) >= 3
    segments[1].unlink()
    code, out, err = run_verify(capsys, "--rotated", path)
    assert code == 1
    assert f"{segments[2]}: line 1: does not follow {segments[0]}" in err
    assert f"{segments[2]}: BROKEN at line 1" in out


@pytest.mark.parametrize("live", ["missing", "empty"])
def test_a_crash_between_rename_and_first_record_continues_the_chain(tmp_path: Path, live: str) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, "agent-a", sync_interval=0)
    log.open()
    write(log, 5)
    last, last_time = log.last_hash, parse_timestamp(records(path)[-1]["time"])
    log.close()
    shift_segments(path, 3)  # what rotation does; then the process dies before the new file has a record
    if live == "empty":
        path.touch(mode=0o600)
    restarted = open_log(path)
    assert restarted.last_time == last_time  # so the agent's token floor survives the rotation
    restarted.record("start", "ok")
    restarted.close()
    first = records(path)[0]
    assert (first["event"], first["prev"], first["seq"]) == ("rotate", last, 0)
    assert verify_segments(rotated_segments(path)).ok


def test_a_failing_rename_keeps_every_record_in_the_live_file(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    blocker = tmp_path / "audit.log.1"
    blocker.mkdir()  # the oldest segment's name is taken by a directory: shifting fails
    (blocker / "keep").write_text("")
    log = open_log(path, backup_count=1)
    with caplog.at_level(logging.ERROR, logger="secure_agent.audit"):
        write(log, 30)
    assert "cannot rotate the audit log" in caplog.text
    assert log.broken is None
    assert verify_file(path).records == 30  # nothing lost, nothing rotated
    (blocker / "keep").unlink()
    blocker.rmdir()
    write(log, 30)  # the next attempt succeeds
    log.close()
    assert blocker.is_file()
    assert verify_segments(rotated_segments(path)).ok


def test_compressed_segments_shift_under_their_compressed_name(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "audit.log"
    log = open_log(path)
    write(log, 25)
    segment = tmp_path / "audit.log.2"
    assert segment.exists()
    with gzip.open(tmp_path / "audit.log.2.gz", "wb") as archive:
        archive.write(segment.read_bytes())
    segment.unlink()  # what an archive job may do to an older segment
    before = len(rotated_segments(path))
    for _ in range(MAX_RECORDS):
        if (tmp_path / "audit.log.3.gz").exists():
            break
        write(log, 1)
    log.close()
    assert (tmp_path / "audit.log.3.gz").exists() and len(rotated_segments(path)) == before + 1
    assert run_verify(capsys, "--rotated", path)[0] == 0


def test_a_running_agent_rotates_its_audit_log(start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path) -> None:
    agent = start_agent(
        test_pki,
        audit_rotation={"max_bytes": 65536, "backup_count": 3},
        security={"rate_limit": {"per_second": 10000, "burst": 10000}},
    )
    rotated = agent.audit_log.with_name(agent.audit_log.name + ".1")
    for _ in range(MAX_RECORDS):
        if rotated.exists():
            break
        assert rpc_call(agent, test_pki, "ping") == "pong"
    assert rotated.exists(), "no rotation after the bounded number of calls"
    assert rpc_call(agent, test_pki, "ping") == "pong"
    agent.stop()
    live = records(agent.audit_log)
    assert [r["event"] for r in live] == ["rotate", "call", "stop"]
    result = run_program("verify", "--rotated", agent.audit_log)
    assert result.returncode == 0, result.stderr
    assert "chain intact: 2 segments" in result.stdout


def test_rotation_settings_are_validated(capsys: pytest.CaptureFixture[str], pki_dir: Path, tmp_path: Path) -> None:
    config = json.loads((pki_dir / "agent-localhost.json").read_text())
    config["audit_rotation"] = {"max_bytes": 1024, "backup_count": 5}
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(config))
    assert cli.main(["check", "--agent-config", str(path)]) == 2
    assert "audit_rotation.max_bytes" in capsys.readouterr().err
