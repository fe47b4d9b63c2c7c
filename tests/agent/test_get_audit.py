"""``get_audit(after, limit)``: the records after the one a collector holds, exactly as the host has them;
``gap`` when it holds no such record; parameters checked; the call audited like every call; and the
retention rule that keeps what no collector has fetched (:mod:`secure_agent.audit_reader`)."""

from __future__ import annotations

import json
import os
import threading
import xmlrpc.client
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_agent.audit import AuditLog
from secure_agent.audit_reader import MAX_ANSWER_CHARS, AuditReader
from secure_agent.audit_rotation import RotationPolicy
from secure_agent.dispatch import FAULTS
from secure_audit.segments import rotated_segments, verify_segments
from tests.agent import wire
from tests.plugins.agent import StartAgent, rpc_call
from tests.plugins.pki import TestPKI


def lines_on_host(path: Path) -> list[str]:
    """Every record on the host, oldest segment first: the reference a reader must agree with."""
    return [line for segment in rotated_segments(path) for line in segment.read_text().splitlines()]


def hash_of(line: str) -> str:
    digest: str = json.loads(line)["hash"]
    return digest


def write(log: AuditLog, count: int, start: int = 0) -> None:
    for number in range(start, start + count):
        log.record("call", "served", method="ping", request_id=f"r{number:05d}", status=200)


def test_records_after_a_hash_oldest_first_and_the_call_is_audited(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    for _ in range(3):
        rpc_call(agent, test_pki, "ping")
    everything = rpc_call(agent, test_pki, "get_audit", "", 1000)
    on_host = agent.audit_log.read_text().splitlines()
    assert everything == {"records": on_host[:-1], "more": False, "gap": False}  # its own record comes after
    assert json.loads(on_host[-1])["method"] == "get_audit"  # audited like every call
    after = hash_of(on_host[1])
    page = rpc_call(agent, test_pki, "get_audit", after, 2)
    assert page == {"records": on_host[2:4], "more": True, "gap": False}
    wire.assert_chain_intact(agent)


def test_a_hash_the_host_does_not_hold_is_a_gap(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    rpc_call(agent, test_pki, "ping")
    page = rpc_call(agent, test_pki, "get_audit", "ab" * 32, 1)
    assert page["gap"] is True
    assert page["records"] == agent.audit_log.read_text().splitlines()[:1]  # from the oldest it has


@pytest.mark.parametrize(
    "params",
    [(), ("",), ("", 0), ("", 1001), ("", True), ("", "5"), ("xyz", 5), ("AB" * 32, 5), ("ab" * 33, 5), (5, 5),
     ("", 5, 5)],
)
def test_bad_parameters_are_a_generic_fault(
    start_agent: StartAgent, test_pki: TestPKI, params: tuple[object, ...]
) -> None:
    agent = start_agent(test_pki)
    with pytest.raises(xmlrpc.client.Fault) as fault:
        rpc_call(agent, test_pki, "get_audit", *params)
    assert (fault.value.faultCode, fault.value.faultString) == FAULTS["params"]
    record = wire.wait_for_record(agent, wire.event("call", method="get_audit"))
    assert (record["outcome"], record["reason"]) == ("faulted", "params")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    first=st.integers(1, 40),
    more=st.integers(0, 20),
    max_bytes=st.sampled_from([700, 1500, 4000, 1_000_000]),
    query=st.integers(-1, 60),
    limit=st.integers(1, 25),
)
def test_any_page_is_the_records_that_follow_on_the_host(
    tmp_path_factory: pytest.TempPathFactory, first: int, more: int, max_bytes: int, query: int, limit: int
) -> None:
    """Differential: whatever the rotation, the index answers what a plain read of the segments says."""
    path = tmp_path_factory.mktemp("reader") / "audit.log"
    log = AuditLog(path, "agent-a", sync_interval=0, rotation=RotationPolicy(max_bytes, 1000))
    log.open()
    reader = AuditReader(log)
    write(log, first)
    reader.get_audit("", 1)  # index what is there now ...
    write(log, more, first)  # ... then the live segment grows, maybe rotates
    reference = lines_on_host(path)
    if query < 0 or query >= len(reference):
        after, expected = "", reference[:limit]
    else:
        after, expected = hash_of(reference[query]), reference[query + 1 : query + 1 + limit]
    page = reader.get_audit(after, limit)
    assert page == {"records": expected, "more": len(expected) < len(reference) - (query + 1 if after else 0),
                    "gap": False}
    log.close()


def test_the_answer_stays_within_its_size(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, "agent-a", sync_interval=0)
    log.open()
    for number in range(1000):  # records of ~800 characters, most of them '<' escaped to '&lt;'
        log.record("bad_request", "refused", path="<" * 128, method="<" * 128, detail=f"{number}")
    page = AuditReader(log).get_audit("", 1000)
    text = xmlrpc.client.dumps((page,), methodresponse=True)
    assert page["more"] and 100 < len(page["records"]) < 1000
    assert len(text) <= MAX_ANSWER_CHARS + 1024 < 1024 * 1024
    log.close()


def test_uncollected_segments_are_kept_up_to_the_ceiling_and_collected_ones_go(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path, "agent-a", sync_interval=0, rotation=RotationPolicy(1500, 1, 10))
    log.open()
    reader = AuditReader(log)
    write(log, 100)  # many rotations, no collector yet: the ceiling is what is kept
    assert len(rotated_segments(path)) == 11
    newest = lines_on_host(path)[-1]
    reader.get_audit(hash_of(newest), 1)  # a collector holds everything up to here
    write(log, 30, 100)  # several more rotations
    on_host = lines_on_host(path)
    assert newest in on_host  # what follows it (and its own segment) was not fetched yet: all kept
    assert all(f'"r{number:05d}"' in "".join(on_host) for number in range(100, 130))
    kept = len(rotated_segments(path))
    assert kept < 11  # the segments before it, fetched, went down to backup_count
    reader.get_audit(hash_of(on_host[-1]), 1)  # now it holds everything again
    write(log, 10, 130)
    assert len(rotated_segments(path)) < kept
    assert verify_segments(rotated_segments(path)).ok
    log.close()


def test_a_fetched_segment_deleted_past_the_ceiling_does_not_pass_for_the_live_one(tmp_path: Path) -> None:
    """A collector fetched part of a segment, then went away; the segment is deleted past the ceiling and ext4
    gives its inode to the next live segment. The agent must not take that for "fetched up to the live one" and
    delete, unsaid, the unfetched segments it keeps up to the ceiling. (Reproduces where the file system reuses
    inodes, as ext4 does; passes either way once fixed.)"""
    path = tmp_path / "audit.log"
    ceiling = 4
    log = AuditLog(path, "agent-a", sync_interval=0, rotation=RotationPolicy(1500, 1, ceiling))
    log.open()
    reader = AuditReader(log)
    write(log, 2)
    reader.get_audit(hash_of(lines_on_host(path)[0]), 1)  # the collector holds the first record, then is gone
    write(log, 80, 2)  # that segment goes past the ceiling, then several more rotations
    assert len(rotated_segments(path)) == ceiling + 1  # what no collector has fetched: kept up to the ceiling
    rotations = [json.loads(line) for line in lines_on_host(path) if '"event":"rotate"' in line]
    assert all("deleted" in r["detail"] for r in rotations)  # every deletion of unfetched records is said
    assert verify_segments(rotated_segments(path)).ok
    log.close()


def test_a_fifo_planted_as_a_segment_is_refused_not_waited_on(start_agent: StartAgent, test_pki: TestPKI) -> None:
    """Found: a FIFO named ``audit.log.1`` (whoever can write the log's directory: root, since the directory's
    mode is checked) made get_audit's open of it wait for a writer, holding the audit log's lock: every call
    after it waited on its record, and the agent answered nothing more. Segments are opened non-blocking and
    must be regular files: get_audit is a generic fault, and the agent goes on serving and recording."""
    agent = start_agent(test_pki)
    rpc_call(agent, test_pki, "ping")
    fifo = Path(f"{agent.audit_log}.1")
    os.mkfifo(fifo)
    outcome: dict[str, object] = {}

    def ask() -> None:
        try:
            outcome["answer"] = rpc_call(agent, test_pki, "get_audit", "", 10)
        except xmlrpc.client.Fault as fault:
            outcome["fault"] = fault.faultString
        except Exception as exc:  # a timeout: what the test reports below
            outcome["error"] = exc

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(10)
    if asking.is_alive():  # release the blocked open so the agent can stop
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        asking.join(10)
        pytest.fail("get_audit waited on a FIFO planted as a segment")
    assert "fault" in outcome, outcome
    assert "fifo" not in str(outcome["fault"]).lower() and "audit.log" not in str(outcome["fault"])  # no internals
    rpc_call(agent, test_pki, "ping")  # serving, and recording
    records = [json.loads(line) for line in agent.audit_log.read_text().splitlines()]
    assert records[-1]["method"] == "ping" and records[-1]["outcome"] == "served"
