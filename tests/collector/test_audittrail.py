"""The collector's check of an agent's audit trail, page by page (:mod:`secure_collector.audittrail`), and where
storage puts what it gets (:func:`storage.auditcopy.placement`): records written by the agent's own writer."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pki.auditchain import GENESIS
from secure_agent.audit import AuditLog, seal
from secure_collector.audittrail import AuditTrail, parse_page
from storage.auditcopy import AuditCopies
from storage.base import Batch
from storage.memory import MemoryStore
from storage.models import AuditTail

AGENT = "web-01"


def chain(tmp_path: Path, count: int, name: str = AGENT) -> list[str]:
    log = AuditLog(tmp_path / f"{name}-{count}.log", name, sync_interval=0)
    log.open()
    for number in range(count):
        log.record("call", "served", method="ping", request_id=f"r{number}", status=200)
    log.close()
    return (tmp_path / f"{name}-{count}.log").read_text().splitlines()


def page(records: list[str], *, more: bool = False, gap: bool = False) -> dict[str, Any]:
    return {"records": records, "more": more, "gap": gap}


def sweep(trail: AuditTrail, *pages: dict[str, Any]) -> Any:
    """One sweep of ``trail`` for AGENT answered with ``pages``; its outcome."""
    call = trail.first_call(AGENT)
    for answer in pages:
        assert call is not None
        call = trail.answer(AGENT, answer)
    return trail.finish(AGENT)


def fresh_trail() -> AuditTrail:
    trail = AuditTrail([AGENT], clock=lambda: 1_700_000_000.0)
    trail.load({})
    return trail


def test_an_intact_trail_over_several_pages_has_no_break(tmp_path: Path) -> None:
    lines = chain(tmp_path, 9)
    trail = fresh_trail()
    assert trail.first_call(AGENT) == ("get_audit", ("", 1000))
    assert trail.answer(AGENT, page(lines[:3], more=True)) == ("get_audit", (json.loads(lines[2])["hash"], 1000))
    assert trail.answer(AGENT, page(lines[3:7])) is None
    outcome = trail.finish(AGENT)
    assert outcome is not None
    assert outcome.breaks == () and outcome.error is None and not outcome.more
    assert [entry.line for entry in outcome.entries] == lines[:7]
    assert [entry.new_copy for entry in outcome.entries] == [True] + [False] * 6  # the first copy starts
    second = sweep(trail, page(lines[7:]))  # the next sweep: what was written since
    assert second.breaks == () and len(second.entries) == 2


@pytest.mark.parametrize(
    ("label", "change", "kind", "stored"),
    [
        ("deleted", lambda lines: lines.pop(3), "link", 5),
        ("reordered", lambda lines: lines.insert(2, lines.pop(4)), "link", 6),
        ("edited", lambda lines: lines.__setitem__(3, lines[3].replace("r3", "r9")), "record", 5),
        ("not json", lambda lines: lines.__setitem__(3, "garbage"), "record", 5),
        ("two not json", lambda lines: lines.__setitem__(slice(3, 4), ["garbage", "rubbish"]), "record", 5),
        ("edited twice", lambda lines: lines.__setitem__(slice(2, 4), [x.replace('"r', '"x') for x in lines[2:4]]),
         "record", 4),
    ],
)
def test_a_break_inside_a_page_is_named_and_a_new_copy_starts(
    tmp_path: Path, label: str, change: Any, kind: str, stored: int
) -> None:
    lines = chain(tmp_path, 6)
    change(lines)
    trail = fresh_trail()
    outcome = sweep(trail, page(lines))
    assert [found.kind for found in outcome.breaks][:1] == [kind], label
    message = outcome.breaks[0].message
    assert "expected" in message and "came" in message
    entries, breaks = list(outcome.entries), len(outcome.breaks)
    for _ in range(len(lines)):  # a second break in a sweep waits for the next one: sweep until caught up
        if not outcome.more:
            break
        after = trail.first_call(AGENT)
        assert after is not None
        held = [json.loads(line).get("hash") if line.startswith("{") else None for line in lines]
        rest = lines[held.index(after[1][0]) + 1 :]
        outcome = sweep(trail, page(rest))
        assert len(outcome.breaks) <= 1  # one break a sweep
        entries += outcome.entries
        breaks += len(outcome.breaks)
    assert not outcome.more
    assert len(entries) == stored  # a line that is not a sealed record is stored nowhere
    restarted = [entry for entry in entries if entry.new_copy]
    assert len(restarted) >= 2  # the first copy, then one after the break...
    assert restarted[1].closes == entries[entries.index(restarted[1]) - 1].hash  # ...closing it


def test_a_gap_starts_a_new_copy_at_the_agents_oldest_record(tmp_path: Path) -> None:
    lines = chain(tmp_path, 5)
    trail = AuditTrail([AGENT])
    held = json.loads(lines[-1])
    trail.load({AGENT: AuditTail("ab" * 32, 9, "2026-01-01T00:00:00.000000Z")})
    assert trail.first_call(AGENT) == ("get_audit", ("ab" * 32, 1000))
    outcome = sweep_from_here(trail, page(lines, gap=True))
    assert [found.kind for found in outcome.breaks] == ["gap"]
    assert "the agent to still hold seq 9" in outcome.breaks[0].expected
    assert "its oldest record is seq 0" in outcome.breaks[0].came
    assert outcome.entries[0].new_copy and outcome.entries[0].closes == "ab" * 32
    assert outcome.entries[-1].hash == held["hash"]


def test_a_gap_whose_oldest_line_is_no_record_does_not_hold_the_trail(tmp_path: Path) -> None:
    """A gap, then lines without a hash at the host's oldest: one break, and the records after them are copied
    in that sweep (the next sweep, still asking after the missing record, would meet the same lines again)."""
    lines = ["garbage", *chain(tmp_path, 3)]
    trail = AuditTrail([AGENT])
    trail.load({AGENT: AuditTail("ab" * 32, 9, "2026-01-01T00:00:00.000000Z")})
    outcome = sweep(trail, page(lines, gap=True))
    assert [found.kind for found in outcome.breaks] == ["gap"] and outcome.error is None
    assert "its oldest line, which is not a record" in outcome.breaks[0].came  # not "no record at all"
    assert [entry.line for entry in outcome.entries] == lines[1:]


def sweep_from_here(trail: AuditTrail, *pages: dict[str, Any]) -> Any:
    for answer in pages:
        trail.answer(AGENT, answer)
    return trail.finish(AGENT)


def test_an_agent_seen_first_must_start_a_chain(tmp_path: Path) -> None:
    lines = chain(tmp_path, 5)
    outcome = sweep(fresh_trail(), page(lines[2:]))  # its first records were cut
    assert [found.kind for found in outcome.breaks] == ["start"]
    assert len(outcome.entries) == 3 and outcome.entries[0].new_copy


def test_another_agents_records_are_a_break(tmp_path: Path) -> None:
    outcome = sweep(fresh_trail(), page(chain(tmp_path, 3, name="db-01")))
    assert {found.kind for found in outcome.breaks} == {"record"} and outcome.entries == ()


@pytest.mark.parametrize("number", ["NaN", "-Infinity", "1e400"])
def test_a_line_with_a_number_json_cannot_hold_is_a_record_break_not_an_error(tmp_path: Path, number: str) -> None:
    """json.loads reads NaN, Infinity and 1e400 (as inf), which canonical form refuses: such a line is a bad
    record (it used to raise ValueError out of the check, and the engine then failed the whole fetch every
    sweep as an internal error, with no audit_chain alert)."""
    from pki.auditchain import verify_lines

    lines = chain(tmp_path, 3)
    lines[1] = lines[1][:-1] + f',"zz":{number}}}'
    outcome = sweep(fresh_trail(), page(lines))
    assert [found.kind for found in outcome.breaks] == ["record"] and outcome.error is None
    assert "not in canonical form" in outcome.breaks[0].came
    verdict = verify_lines(lines)
    assert (verdict.ok, verdict.bad_line, verdict.problem) == (False, 2, "not in canonical form (edited)")


def test_the_same_break_met_again_is_said_once(tmp_path: Path) -> None:
    lines = chain(tmp_path, 4)
    lines[3] = "garbage"  # the newest line is not a record and has no hash to ask past
    trail = fresh_trail()
    first = sweep(trail, page(lines))
    again = sweep(trail, page(lines[3:]))
    assert len(first.breaks) == 1 and again.breaks == ()


@pytest.mark.parametrize(
    "value",
    [None, [], {"records": [], "more": False}, {"records": [1], "more": False, "gap": False},
     {"records": "x", "more": False, "gap": False}, {"records": [], "more": 1, "gap": False},
     {"records": ["x"] * 1001, "more": False, "gap": False},
     {"records": [], "more": False, "gap": False, "extra": 1}],
)
def test_an_answer_that_is_not_the_contracts_struct_stores_nothing(value: object) -> None:
    trail = fresh_trail()
    trail.first_call(AGENT)
    assert trail.answer(AGENT, value) is None
    outcome = trail.finish(AGENT)
    assert outcome is not None
    assert outcome.entries == () and outcome.error is not None and outcome.more
    with pytest.raises(ValueError):
        parse_page(value, 1000)


def test_an_agent_whose_copy_is_not_known_yet_is_not_asked() -> None:
    trail = AuditTrail([AGENT])
    assert trail.pending == (AGENT,)
    assert trail.first_call(AGENT) is None and trail.finish(AGENT) is None


def test_the_per_sweep_budget_bounds_the_calls(tmp_path: Path) -> None:
    lines = chain(tmp_path, 10)
    trail = AuditTrail([AGENT], max_records_per_sweep=4)
    trail.load({})
    assert trail.first_call(AGENT) == ("get_audit", ("", 4))
    assert trail.answer(AGENT, page(lines[:4], more=True)) is None  # the sweep's budget is spent
    outcome = trail.finish(AGENT)
    assert outcome is not None
    assert outcome.more and len(outcome.entries) == 4


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(0, 12), max_size=4), replays=st.lists(st.integers(0, 3), max_size=3))
def test_storage_keeps_each_copy_once_whatever_is_replayed(
    tmp_path_factory: pytest.TempPathFactory, cuts: list[int], replays: list[int]
) -> None:
    """Batches cut anywhere, any of them delivered again later (a spool replay): every backend's copy is the
    chain, once. The file backend and the memory store must agree."""
    folder = tmp_path_factory.mktemp("copies")
    lines = chain(folder, 12)
    trail = fresh_trail()
    trail.first_call(AGENT)
    trail.answer(AGENT, page(lines))
    outcome = trail.finish(AGENT)
    assert outcome is not None
    entries = outcome.entries
    bounds = sorted({0, *cuts, len(entries)})
    batches = [Batch(audit=entries[a:b]) for a, b in itertools.pairwise(bounds)]
    order = list(batches) + [batches[i % len(batches)] for i in replays]
    files, memory = AuditCopies(folder / "audit"), MemoryStore()
    for batch in order:
        files.write(batch.audit)
        memory.write(batch)
    assert list(files.read(AGENT)) == lines
    assert memory.audit_copies(AGENT) == [lines]
    assert files.tail(AGENT) == memory.audit_tails([AGENT])[AGENT]


def test_a_new_copy_keeps_the_old_one_under_its_own_name(tmp_path: Path) -> None:
    lines = chain(tmp_path, 4)
    trail = fresh_trail()
    first = sweep(trail, page(lines[:2]))
    broken = sweep(trail, page(lines[3:]))  # lines[2] never came: the link breaks
    copies = AuditCopies(tmp_path / "audit")
    copies.write(first.entries)
    copies.write(broken.entries)
    copies.write(broken.entries)  # replayed: nothing changes
    kept = sorted(p.name for p in (tmp_path / "audit").iterdir())
    assert kept == [f"{AGENT}.20231114T221320Z.log", f"{AGENT}.log"]
    assert (tmp_path / "audit" / kept[0]).read_text().splitlines() == lines[:2]
    assert list(copies.read(AGENT)) == lines[3:]


def test_a_forged_record_with_a_valid_seal_but_no_place_in_the_chain_is_a_break() -> None:
    forged = seal({"event": "call", "outcome": "served", "agent": AGENT, "time": "2026-01-01T00:00:00.000000Z"},
                  "cd" * 32, 5)
    trail = AuditTrail([AGENT])
    trail.load({AGENT: AuditTail("ab" * 32, 4, "")})
    outcome = sweep(trail, page([forged.line]))
    assert [found.kind for found in outcome.breaks] == ["link"]
    assert outcome.entries[0].new_copy and outcome.entries[0].prev == "cd" * 32
    assert GENESIS not in outcome.breaks[0].came


def _reference(line: str) -> str | None:
    """The reference check of a line's seal: record_hash over the parsed record, then canonical form."""
    from pki.auditchain import canonical, record_hash

    try:
        record = json.loads(line)
    except ValueError:
        return "json"
    if not isinstance(record, dict):
        return "json"
    if not isinstance(record.get("hash"), str) or not isinstance(record.get("prev"), str) or type(
        record.get("seq")
    ) is not int:
        return "lacks hash, prev or seq"
    try:
        sealed = record_hash(record) == record["hash"]
    except ValueError:  # NaN, Infinity, 1e400: json.loads reads them, JSON (and so canonical form) has none
        return "not in canonical form (edited)"
    if not sealed:
        return "hash does not match its content (edited)"
    if canonical(record) != line:
        return "not in canonical form (edited)"
    return None


_FIELD_NAMES = st.sampled_from(["agent", "detail", "event", "method", "path", "reason", "address", "version"])
_TRICKY = st.text(st.sampled_from(['"', "\\", "h", "a", "s", ":", ",", "{", "}", "é", "\n", "x"]), max_size=12)
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False),
                    _TRICKY, st.just('"hash":"' + "ab" * 32 + '",'))


@settings(max_examples=300, deadline=None)
@given(
    fields=st.dictionaries(_FIELD_NAMES, _VALUES, max_size=6),
    edit=st.sampled_from(
        ["none", "char", "spaces", "move hash", "other hash", "drop", "duplicate hash", "NaN", "Infinity", "1e400"]
    ),
    at=st.integers(0, 10_000),
    char=st.sampled_from(["x", '"', " ", "\\", "0"]),
)
def test_the_seal_check_of_a_record_is_the_references(fields: dict[str, Any], edit: str, at: int, char: str) -> None:
    """read_record hashes the canonical text once (pki.auditchain._seal_problem): it must say what the
    reference (record_hash, then canonical) says, for sealed lines and for every kind of edit to them."""
    from pki.auditchain import read_record

    line = seal(fields, "cd" * 32, 3).line
    record = json.loads(line)
    if edit == "char":
        spot = at % len(line)
        line = line[:spot] + char + line[spot + 1 :]
    elif edit == "spaces":
        line = json.dumps(record, sort_keys=True)
    elif edit == "move hash":
        line = json.dumps({"hash": record.pop("hash"), **record}, separators=(",", ":"))
    elif edit == "other hash":
        line = line.replace(record["hash"], "ef" * 32)
    elif edit == "drop":
        record.pop(sorted(record)[at % len(record)])
        line = json.dumps(record, sort_keys=True, separators=(",", ":"))
    elif edit == "duplicate hash":
        line = line[:-1] + f',"hash":"{record["hash"]}"}}'
    elif edit in ("NaN", "Infinity", "1e400"):  # a number JSON cannot hold, where a value was or as a new one
        line = line[:-1] + f',"zz":{edit}}}'
    expected = _reference(line)
    found = read_record(line)
    if expected is None:
        assert not isinstance(found, str) and found.line == line
    elif expected == "json":
        assert isinstance(found, str) and "JSON" in found
    else:
        assert found == expected


def test_a_disk_that_fills_while_a_copy_starts_leaves_no_torn_first_record(small_disk: Path) -> None:
    """Found: the first record of a new copy (an agent's first, or the first after a break) was written with
    one ``os.write`` whose count was not checked. On a disk that filled mid-record the copy began with a torn
    line, the write counted as done, and once the disk had room the next record was glued onto the fragment:
    the first record of the copy (after a break, the evidence) was gone and the copy no longer verified. Now
    the new copy is refused whole (storage unavailable: the batch waits in the spool) and written later."""
    from tests.plugins.disk import fill_up

    log = AuditLog(small_disk / "host.log", AGENT, sync_interval=0)
    log.open()
    big = "\u00e9" * 128  # 768 bytes as a JSON escape: records of about 6 KiB, wider than a page
    wide = {key: big for key in ("detail", "subject", "path", "peer", "reason", "common_name", "key_id", "version")}
    for number in range(3):
        log.record("call", "refused", request_id=f"r{number}", **wide)
    log.close()
    lines = (small_disk / "host.log").read_text().splitlines()
    (small_disk / "host.log").unlink()
    assert all(len(line) > 4096 for line in lines)
    trail = fresh_trail()
    first, second = sweep(trail, page(lines[:1])), sweep(trail, page(lines[1:]))
    copies = AuditCopies(small_disk / "audit")
    (small_disk / "audit").mkdir()
    filler = fill_up(small_disk, leave=4096)  # one page: a part of the first record fits
    with pytest.raises(OSError):
        copies.write(first.entries)
    filler.unlink()  # room again; the spool replays what storage refused, then the next sweep's
    copies.write(first.entries)
    copies.write(second.entries)
    assert list(copies.read(AGENT)) == lines
    assert sorted(p.name for p in (small_disk / "audit").iterdir()) == [f"{AGENT}.log"]
