"""``secure-audit verify`` over one file and over rotated segments: intact chains pass, a missing,
reordered, cut or edited segment is named. Segments are sealed with the writer's own ``seal``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agent.audit import GENESIS, AuditLog, seal
from tests.audit.helpers import run_program, run_verify


def sealed(count: int, prev: str = GENESIS, *, rotate: bool = False) -> tuple[list[str], str]:
    """``count`` records following ``prev`` (the first a ``rotate`` record if asked); lines and last hash."""
    lines = []
    for seq in range(count):
        event = "rotate" if rotate and seq == 0 else "call"
        record = seal({"time": f"2026-01-01T00:00:{seq % 60:02d}.000000Z", "event": event, "outcome": "ok"}, prev, seq)
        lines.append(record.line)
        prev = record.hash
    return lines, prev


def write_segments(folder: Path, sizes: list[int], name: str = "audit.log") -> list[Path]:
    """Segments oldest first, as the agent leaves them: ``name.N`` ... ``name.1``, then ``name``."""
    paths = [folder / f"{name}.{n}" for n in range(len(sizes) - 1, 0, -1)] + [folder / name]
    prev = GENESIS
    for index, (path, size) in enumerate(zip(paths, sizes, strict=True)):
        lines, prev = sealed(size, prev, rotate=index > 0)
        path.write_text("".join(line + "\n" for line in lines))
    return paths


def test_a_live_log_from_the_writer_verifies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", "agent-a", sync_interval=0)
    log.open()
    log.record("start", "ok")
    last = log.record("call", "served", method="ping")
    log.close()
    code, out, err = run_verify(capsys, tmp_path / "audit.log")
    assert (code, err) == (0, "")
    assert out == f"{tmp_path / 'audit.log'}: intact, 2 records, last hash {last}\n"


def test_rotated_segments_verify_as_one_chain(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    paths = write_segments(tmp_path, [3, 2, 4])
    code, out, err = run_verify(capsys, *paths)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("chain intact: 3 segments, 9 records, last hash ")
    assert run_verify(capsys, "--rotated", tmp_path / "audit.log")[1] == out


def test_a_deleted_middle_segment_is_detected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    oldest, middle, live = write_segments(tmp_path, [3, 2, 4])
    code, out, err = run_verify(capsys, oldest, live)
    assert code == 1
    reason = f"does not follow {oldest} (a segment is missing, out of order or replaced)"
    assert err == f"secure-audit verify: {live}: line 1: {reason}\n"
    assert out.splitlines()[-1] == f"{live}: BROKEN at line 1 (3 records intact before it)"
    middle.unlink()
    assert run_verify(capsys, "--rotated", live)[0] == 1


def test_segments_out_of_order_are_detected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    oldest, middle, live = write_segments(tmp_path, [3, 2, 4])
    code, _, err = run_verify(capsys, oldest, live, middle)
    assert code == 1 and f"{live}: line 1: does not follow {oldest}" in err


def test_an_edited_record_names_its_segment_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    oldest, middle, live = write_segments(tmp_path, [3, 3, 3])
    lines = middle.read_text().splitlines()
    lines[1] = lines[1].replace('"outcome":"ok"', '"outcome":"no"')
    middle.write_text("\n".join(lines) + "\n")
    code, out, err = run_verify(capsys, "--rotated", live)
    assert code == 1
    assert err == f"secure-audit verify: {middle}: line 2: hash does not match its content (edited)\n"
    assert out.splitlines() == [
        f"{oldest}: intact, 3 records, last hash {json.loads(oldest.read_text().splitlines()[-1])['hash']}",
        f"{middle}: BROKEN at line 2 (4 records intact before it)",
    ]


def test_a_segment_alone_continues_from_the_hash_its_rotate_record_names(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, _, live = write_segments(tmp_path, [3, 2, 4])
    code, out, _ = run_verify(capsys, live)
    assert code == 0
    assert out.splitlines()[-1].startswith(f"{live}: continues an older segment that ended with hash ")


def test_records_cut_from_the_start_are_detected(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lines, _ = sealed(5)
    log = tmp_path / "audit.log"
    log.write_text("".join(line + "\n" for line in lines[2:]))  # no rotate record, prev is not genesis
    code, _, err = run_verify(capsys, log)
    assert code == 1 and f"{log}: line 1: does not start a chain" in err


def test_rotated_finds_numbered_and_compressed_segments_in_numeric_order(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    paths = write_segments(tmp_path, [1] * 12)  # audit.log.11 ... audit.log.1, audit.log: 10 sorts after 9
    for path in paths[:3]:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as handle:
            handle.write(path.read_bytes())
        path.unlink()
    code, out, err = run_verify(capsys, "--rotated", tmp_path / "audit.log")
    assert code == 0, err
    assert "chain intact: 12 segments, 12 records" in out
    assert out.splitlines()[0].startswith(f"{tmp_path / 'audit.log.11.gz'}: intact")


@pytest.mark.parametrize("damage", ["missing", "truncated-gzip", "not-gzip"])
def test_unreadable_segments_are_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: str
) -> None:
    oldest, _, live = write_segments(tmp_path, [2, 2, 2])
    bad = tmp_path / "audit.log.5.gz"
    if damage == "truncated-gzip":
        bad.write_bytes(gzip.compress(oldest.read_bytes())[:-12])
    elif damage == "not-gzip":
        bad.write_bytes(oldest.read_bytes())
    code, out, err = run_verify(capsys, bad, live)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"secure-audit verify: {bad}: cannot read: ")


def test_rotated_takes_one_live_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    paths = write_segments(tmp_path, [2, 2])
    code, out, err = run_verify(capsys, "--rotated", *paths)
    assert code == 2 and out == "" and err.count("\n") == 1 and "--rotated takes one FILE" in err


def test_the_program_verifies_segments(tmp_path: Path) -> None:
    paths = write_segments(tmp_path, [2, 2])
    result = run_program("verify", *paths)
    assert result.returncode == 0, result.stderr
    assert "chain intact: 2 segments, 4 records" in result.stdout


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=3, max_size=6), data=st.data())
def test_any_split_verifies_and_any_missing_inner_segment_is_found(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], data: st.DataObject
) -> None:
    from secure_audit.segments import verify_segments

    folder = tmp_path_factory.mktemp("segments")
    paths = write_segments(folder, sizes)
    whole = verify_segments(paths)
    assert whole.ok and whole.records == sum(sizes) and whole.start == GENESIS
    gone = data.draw(st.integers(min_value=1, max_value=len(paths) - 2))
    broken = verify_segments(paths[:gone] + paths[gone + 1 :])
    assert not broken.ok and broken.bad_path == paths[gone + 1] and broken.bad_line == 1


def test_a_cut_tail_is_not_detectable_from_the_file_alone(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """SECURITY.md residual risk: the chain cannot show records removed from its end; a kept last hash can."""
    (path,) = write_segments(tmp_path, [5])
    kept_last_hash = json.loads(path.read_text().splitlines()[-1])["hash"]
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:3]))
    code, out, _ = run_verify(capsys, path)
    assert code == 0  # the file alone looks intact...
    assert kept_last_hash not in out  # ...but the last hash recorded elsewhere is no longer its last hash


def test_two_agents_logs_verify_each_on_its_own(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # issue 21: `secure-audit verify a1.log a2.log` chained them and called the second tampered
    logs = []
    for name in ("a1", "a2"):
        log = AuditLog(tmp_path / f"{name}.log", name)
        log.open()
        log.record("start", "ok")
        log.close()
        logs.append(tmp_path / f"{name}.log")
    code, out, err = run_verify(capsys, *logs)
    assert code == 0, err
    assert f"{logs[0]}: intact" in out and f"{logs[1]}: intact" in out
    lines = logs[1].read_text().splitlines()
    logs[1].write_text("\n".join([lines[0].replace('"start"', '"stop"'), *lines[1:]]) + "\n")
    code, out, err = run_verify(capsys, *logs)
    assert code == 1 and f"{logs[0]}: intact" in out and str(logs[1]) in err and str(logs[0]) not in err
