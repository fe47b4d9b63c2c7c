"""The audit log: chain, bounded lines, tamper detection, continuation, rotation hook (cases 28, 29)."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import secure_agent.audit as audit_module
from secure_agent.audit import (
    GENESIS,
    MAX_LINE,
    MAX_TEXT,
    AuditLog,
    check_audit_path,
    record_hash,
    seal,
    utc_timestamp,
    verify_file,
    verify_lines,
)
from secure_agent.errors import AuditError
from tests.agent import wire
from tests.plugins.agent import StartAgent, rpc_call
from tests.plugins.pki import TestPKI


def _log(path: Path, count: int = 5) -> AuditLog:
    log = AuditLog(path, "agent-a", sync_interval=0)
    log.open()
    for number in range(count):
        log.record("call", "served", method="ping", request_id=f"r{number}", status=200)
    return log


def _verify_cli(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secure_audit", "verify", str(path)], capture_output=True, text=True, timeout=30
    )


def test_chain_verifies_and_cli_says_so(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    verdict = verify_file(path)
    assert verdict.ok and verdict.records == 5
    result = _verify_cli(path)
    assert result.returncode == 0, result.stderr
    assert "intact, 5 records" in result.stdout


def _rewrite(path: Path, change: object) -> None:
    lines = path.read_text().splitlines(keepends=True)
    change(lines)  # type: ignore[operator]
    path.write_text("".join(lines))


def _forged(line: str) -> str:
    return json.dumps({**json.loads(line), "outcome": "x"}) + "\n"


@pytest.mark.parametrize(
    ("label", "change", "bad_line"),
    [
        ("edit a value", lambda lines: lines.__setitem__(2, lines[2].replace("r2", "r9")), 3),
        ("edit whitespace", lambda lines: lines.__setitem__(1, lines[1].replace(",", ", ", 1)), 2),
        ("delete a line", lambda lines: lines.pop(1), 2),
        ("delete the first", lambda lines: lines.pop(0), 1),
        ("swap two lines", lambda lines: lines.insert(3, lines.pop(2)), 3),
        ("duplicate a line", lambda lines: lines.insert(2, lines[1]), 3),
        ("blank line", lambda lines: lines.insert(4, "\n"), 5),
        ("forged record", lambda lines: lines.__setitem__(4, _forged(lines[4])), 5),
    ],
)
def test_tampering_is_named_by_line(tmp_path: Path, label: str, change: object, bad_line: int) -> None:
    path = tmp_path / "audit.log"
    _log(path).close()
    _rewrite(path, change)
    verdict = verify_file(path)
    assert not verdict.ok and verdict.bad_line == bad_line, (label, verdict)
    result = _verify_cli(path)
    assert result.returncode == 1
    assert f"line {bad_line}" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_rehashed_forgery_still_breaks_the_next_link(tmp_path: Path) -> None:
    from secure_agent.audit import record_hash

    path = tmp_path / "audit.log"
    _log(path).close()
    lines = path.read_text().splitlines()
    record = json.loads(lines[1])
    record["method"] = "get_metrics"
    record["hash"] = record_hash(record)  # a forger who knows the scheme re-seals the record...
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    verdict = verify_file(path)
    assert verdict.bad_line == 3  # ...and is caught by the record after it


def test_unreadable_file_exit_2(tmp_path: Path) -> None:
    result = _verify_cli(tmp_path / "missing.log")
    assert result.returncode == 2
    assert "missing.log" in result.stderr and "Traceback" not in result.stderr


def test_chain_continues_across_opens_and_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = _log(path, 3)
    log.close()
    log = _log(path, 2)  # a restart appends to the same chain
    assert verify_file(path).records == 5
    last = log.last_hash
    rotated = tmp_path / "audit.log.1"
    path.rename(rotated)
    log.reopen()  # what a rotating writer does after moving the file
    log.record("reload", "ok")
    log.close()
    assert verify_file(path).ok is False  # a segment alone does not start from GENESIS...
    assert verify_lines(path.read_text().splitlines(), prev=last).ok  # ...it follows the last segment
    assert verify_file(rotated).last_hash == last


def test_torn_tail_is_cut_back_and_recorded(tmp_path: Path) -> None:
    """A record a crash cut short is cut at the next open, and a record says so: never a refusal to start."""
    path = tmp_path / "audit.log"
    _log(path, 2).close()
    torn = '{"event":"call","outc'
    with open(path, "a") as handle:
        handle.write(torn)
    check_audit_path(path)  # --check: fine, the agent repairs it at start
    log = AuditLog(path, "agent-a", sync_interval=0)
    log.open()
    log.record("start", "ok")
    log.close()
    lines = path.read_text().splitlines()
    repair = json.loads(lines[2])
    assert (repair["event"], repair["count"]) == ("repair", len(torn))
    assert json.loads(lines[3])["event"] == "start"
    assert verify_file(path).ok and verify_file(path).records == 4


@pytest.mark.parametrize("torn", ["", '{"event":"call","outc'])
def test_a_power_loss_that_left_zeros_past_the_last_record_is_repaired(tmp_path: Path, torn: str) -> None:
    """A power loss can leave the file's new size with zeros where the unsynced records were to go (a second of
    records: more than one record's worth): cut like a torn record, never a refusal to start."""
    path = tmp_path / "audit.log"
    _log(path, 2).close()
    with open(path, "ab") as handle:
        handle.write(torn.encode() + bytes(3 * MAX_LINE))
    check_audit_path(path)
    log = AuditLog(path, "agent-a", sync_interval=0)
    log.open()
    log.record("start", "ok")
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["call", "call", "repair", "start"]
    assert json.loads(lines[2])["count"] == len(torn) + 3 * MAX_LINE
    assert verify_file(path).ok


def test_a_last_line_that_is_not_a_record_still_refuses_to_open(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    _log(path, 2).close()
    with open(path, "a") as handle:
        handle.write('{"event":"call","outcome":"served"}\n')  # whole, but not sealed: not a torn write
    with pytest.raises(AuditError, match="secure-audit verify"):
        AuditLog(path, "a").open()
    with pytest.raises(AuditError):
        check_audit_path(path)


def test_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(AuditError, match="regular file"):
        AuditLog(tmp_path / "fifo", "a").open()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere.log")
    with pytest.raises(AuditError):
        AuditLog(tmp_path / "link", "a").open()  # never follow a planted symlink


def test_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _log(tmp_path / "audit.log", 1).close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=5000), min_size=1, max_size=4))
def test_any_client_string_stays_one_bounded_line(tmp_path_factory: pytest.TempPathFactory, texts: list[str]) -> None:
    path = tmp_path_factory.mktemp("audit") / "audit.log"
    log = AuditLog(path, "agent", sync_interval=0)
    log.open()
    for text in texts:
        log.record("call", "faulted", method=text, path=text, subject=text, reason="not_found")
    log.close()
    data = path.read_bytes()
    assert data.count(b"\n") == len(texts)
    for line in data.splitlines():
        assert len(line) <= MAX_LINE
        assert line.isascii()
        record = json.loads(line)
        assert len(record["method"]) <= MAX_TEXT + 40
    assert verify_file(path).ok


def test_every_record_of_a_session_names_who_and_what(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    assert rpc_call(agent, test_pki, "ping") == "pong"
    wire.send_once(agent, test_pki, wire.request_bytes(b"x", authorization=None))  # token refused
    wire.send_once(agent, test_pki, wire.request_bytes(b"x", authorization=None, path="/x"))  # 404
    agent.reload()
    agent.stop()
    records = wire.records(agent)
    assert [r["event"] for r in records] == ["start", "call", "token_refused", "bad_request", "reload", "stop"]
    assert records[0]["seq"] == 0 and records[0]["prev"] == GENESIS
    for record in records:
        assert record["time"].endswith("Z") and record["agent"] == "localhost" and record["outcome"]
    for record in records[1:4]:
        for key in ("subject", "fingerprint", "serial", "peer", "request_id", "status"):
            assert record[key], key
    assert records[1]["method"] == "ping" and records[1]["key_id"] == "collector"
    assert _verify_cli(agent.audit_log).returncode == 0


def _datetime_text(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


HALF_MICROSECONDS = st.integers(0, 4_000_000).map(lambda halves: halves / 2e6 + 1.7e9)  # rounding ties


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0, max_value=4e9) | HALF_MICROSECONDS)
def test_record_times_are_what_datetime_writes(seconds: float) -> None:
    """The cached-second formatter agrees with datetime, rounding of microseconds and carries included."""
    assert utc_timestamp(seconds) == _datetime_text(seconds)
    assert utc_timestamp(seconds + 1e-7) == _datetime_text(seconds + 1e-7)  # the same second again: from the cache


_FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(audit_module.FIELDS)), _FIELD_VALUES, max_size=len(audit_module.FIELDS)))
def test_a_sealed_line_is_the_canonical_record_with_its_hash(fields: dict[str, object]) -> None:
    """seal() joins two half encodings: the result must be exactly the canonical form, whatever the keys."""
    sealed = seal(fields, GENESIS, 7)
    record = json.loads(sealed.line)
    expected = {key: audit_module.clip(value) for key, value in fields.items() if value is not None}
    expected.update(prev=GENESIS, seq=7, hash=sealed.hash)
    assert record == expected
    assert sealed.line == audit_module.canonical(expected)
    assert sealed.hash == record_hash(expected)


def test_sealed_records_hash_as_record_hash_says() -> None:
    sealed = seal({"time": utc_timestamp(1.7e9), "event": "call", "outcome": "served", "agent": "a"}, GENESIS, 0)
    record = json.loads(sealed.line)
    assert record["hash"] == sealed.hash == record_hash(record)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    """Whoever can write the audit log's directory can delete unfetched segments or plant an ``audit.log.N``
    that get_audit would serve as the agent's records: refused at open and by --check, with the directory named."""
    folder = tmp_path / "audit"
    folder.mkdir()
    folder.chmod(mode)
    with pytest.raises(AuditError, match="directory is writable by group or others"):
        check_audit_path(folder / "audit.log")
    with pytest.raises(AuditError, match="directory is writable by group or others"):
        AuditLog(folder / "audit.log", "a").open()
    assert not (folder / "audit.log").exists()
    folder.chmod(0o700)
    _log(folder / "audit.log", 1).close()  # the same place, once only we can write there
    check_audit_path(folder / "audit.log")
