"""``secure-audit verify HOSTLOG --against CENTRAL``: 0 when the host holds every centrally held record unchanged
(newer records, and older ones rotated away behind a segment that links to the copy, are fine), 1 naming the
first record the host lacks or holds differently, 2 for unusable input. Logs are written by the agent's writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_agent.audit import AuditLog
from secure_agent.audit_rotation import RotationPolicy
from secure_audit.segments import rotated_segments
from tests.audit.helpers import resealed, run_verify

SEGMENT = 2048


def host_log(folder: Path, count: int, backup_count: int = 50) -> tuple[Path, list[str]]:
    """A rotating log of ``count`` call records; its path and every line written (oldest first)."""
    path = folder / "host" / "audit.log"
    log = AuditLog(path, "web-01", sync_interval=0, rotation=RotationPolicy(SEGMENT, backup_count))
    log.open()
    for number in range(count):
        log.record("call", "served", method="ping", request_id=f"r{number:04d}", status=200)
    log.close()
    return path, [line for segment in rotated_segments(path) for line in segment.read_text().splitlines()]


def central(folder: Path, lines: list[str]) -> Path:
    path = folder / "central.log"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def against(capsys: pytest.CaptureFixture[str], host: Path, copy: Path) -> tuple[int, str, str]:
    return run_verify(capsys, host, "--against", copy)


def test_a_host_holding_the_copy_and_newer_records_passes(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    host, lines = host_log(tmp_path, 40)
    code, out, err = against(capsys, host, central(tmp_path, lines[:30]))
    assert code == 0, err
    assert "holds every record of the central copy (30 records; 0 older ones rotated away" in out


def test_records_rotated_away_behind_a_linking_segment_are_not_missing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    host, lines = host_log(tmp_path, 60)
    segments = rotated_segments(host)
    assert len(segments) >= 4
    for oldest in segments[:2]:  # what retention does: the oldest segments go
        oldest.unlink()
    code, out, err = against(capsys, host, central(tmp_path, lines))
    assert code == 0, err
    kept = sum(len(p.read_text().splitlines()) for p in segments[2:])
    assert f"({kept} records; {len(lines) - kept} older ones rotated away on the host)" in out
    segments[3].unlink()  # but a segment in the middle is not rotation
    assert against(capsys, host, central(tmp_path, lines))[0] == 1


@pytest.mark.parametrize("whole", [False, True])
def test_a_cut_tail_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path, whole: bool) -> None:
    host, lines = host_log(tmp_path, 40)
    copy = central(tmp_path, lines)
    live = host.read_text().splitlines(keepends=True)
    cut = len(live) if whole else 1  # the last record, or the whole live segment
    host.write_text("".join(live[:-cut]))
    code, out, err = against(capsys, host, copy)
    assert code == 1
    first_lacked = json.loads(lines[-cut])
    assert f"the host lacks seq {first_lacked['seq']} ({first_lacked['time']}" in err
    assert "cut tail" in err and "DOES NOT HOLD the central copy" in out


def test_a_rewritten_chain_is_held_differently(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    host, lines = host_log(tmp_path, 12)
    records = [json.loads(line) for line in host.read_text().splitlines()]
    out_lines = resealed(host.read_text().splitlines(), 3)
    copy = central(tmp_path, lines)
    host.write_text("".join(f"{line}\n" for line in out_lines))
    code, _, err = against(capsys, host, copy)
    assert code == 1
    assert f"holds seq 3 ({records[3]['time']}" in err and "differently" in err


def test_a_deleted_segment_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    host, lines = host_log(tmp_path, 60)
    segments = rotated_segments(host)
    assert len(segments) >= 4
    gone = segments[1].read_text().splitlines()
    segments[1].unlink()
    code, _, err = against(capsys, host, central(tmp_path, lines))
    assert code == 1
    assert f"lacks seq {json.loads(gone[0])['seq']} ({json.loads(gone[0])['time']}" in err


def test_an_empty_or_missing_host_log_fails_when_the_copy_has_records(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, lines = host_log(tmp_path, 5)
    copy = central(tmp_path, lines)
    empty = tmp_path / "empty" / "audit.log"
    empty.parent.mkdir()
    empty.write_text("")
    for host in (empty, tmp_path / "nowhere" / "audit.log"):
        code, _, err = against(capsys, host, copy)
        assert code == 1 and "holds no record" in err


def test_a_host_whose_oldest_segment_links_to_nothing_held_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    _, lines = host_log(tmp_path / "one", 10)
    other, _ = host_log(tmp_path / "two", 40)  # another log, whose oldest segments are gone
    for oldest in rotated_segments(other)[:2]:
        oldest.unlink()
    code, _, err = against(capsys, other, central(tmp_path, lines))
    assert code == 1 and "follows no record of the central copy" in err
    code, _, err = against(capsys, host_log(tmp_path / "three", 10)[0], central(tmp_path, lines))
    assert code == 1 and "holds seq 0" in err and "differently" in err  # both start a chain: not the same one


def test_an_empty_copy_is_held_by_any_intact_host(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    host, _ = host_log(tmp_path, 10)
    assert against(capsys, host, central(tmp_path, []))[0] == 0


def test_a_broken_host_chain_fails_even_when_the_copy_matches(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    host, lines = host_log(tmp_path, 12, backup_count=50)
    live = host.read_text().splitlines(keepends=True)
    live.pop(-2)  # after what the copy holds
    host.write_text("".join(live))
    code, _, err = against(capsys, host, central(tmp_path, lines[:3]))
    assert code == 1 and "does not follow" in err


@pytest.mark.parametrize(
    "extra",
    [["--rotated"], ["--agent", "web-01"], ["--collector-config", "x.json"], ["--against", "a", "--agent", "b"]],
)
def test_contradictory_options_are_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str]) -> None:
    host, _ = host_log(tmp_path, 3)
    args = [*extra] if "--against" in extra else [*extra, "--against", str(tmp_path / "c.log")]
    if extra == ["--rotated"]:
        args = ["--rotated", "--against", str(tmp_path / "c.log")]
    code, _, err = run_verify(capsys, host, *args)
    assert code == 2 and err.startswith("secure-audit verify: ")


def test_an_unknown_agent_in_the_collector_config_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, pki_dir: Path
) -> None:
    host, _ = host_log(tmp_path, 3)
    config = json.loads((pki_dir / "collector.json").read_text())
    config["storage"] = {"type": "file", "json_file": str(tmp_path / "data" / "m.json")}
    path = tmp_path / "collector.json"
    path.write_text(json.dumps(config))
    code, _, err = run_verify(capsys, host, "--collector-config", path, "--agent", "nobody")
    assert code == 2 and "no agent named 'nobody'" in err


def test_a_host_log_given_by_a_symlink_is_checked_with_the_segments_beside_its_target(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Found: given a symlink to the host's live log (a convenience path; the agent itself refuses a symlinked
    ``audit_log``, so its segments are always beside the real file), verify looked for the rotated segments
    beside the link, found none, counted every record in them as rotated away and passed, though a rotated
    segment held a centrally held record differently. The link is followed to the real log first."""
    host, lines = host_log(tmp_path, 40)
    segments = rotated_segments(host)
    assert len(segments) >= 3
    copy = central(tmp_path, lines)
    older = segments[-2].read_text().splitlines()  # audit.log.1: records the collector holds
    segments[-2].write_text("".join(f"{line}\n" for line in resealed(older, 1)))
    link = tmp_path / "elsewhere" / "audit.log"
    link.parent.mkdir()
    link.symlink_to(host)
    assert against(capsys, host, copy)[0] == 1
    code, out, err = against(capsys, link, copy)
    assert code == 1, out
    assert "holds seq" in err and "differently" in err and str(segments[-2]) in err


def test_a_torn_last_line_of_the_central_copy_is_no_record_the_host_lacks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Found: a central copy file whose last line is torn (the collector stopped mid-append; appends are not
    fsync'd, and the collector cuts such a line when it next opens the copy) failed the host: "the host lacks
    a line that is not a record", though the host holds every record. ``--collector-config`` already read the
    copy without it; ``--against FILE`` now does too, and says so."""
    host, lines = host_log(tmp_path, 20)
    copy = central(tmp_path, lines[:15])
    with open(copy, "a") as handle:
        handle.write(lines[15][:100])  # part of the next record, no newline
    code, out, err = against(capsys, host, copy)
    assert code == 0, err
    assert "holds every record of the central copy (15 records" in out
    assert "torn" in err
    copy.write_text("".join(f"{line}\n" for line in lines[:15]) + lines[15][:100].replace("seq", "qes") + "\n")
    assert against(capsys, host, copy)[0] == 1  # a whole line is a line: held differently
