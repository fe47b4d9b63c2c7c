"""A restart does not reopen a replay window: real agents restarted on one audit log, which carries the
nonce and ``ts`` of every accepted token back into the replay cache (secure_agent.audit_replay)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pki import tokens
from secure_agent.audit import AuditLog, verify_file
from secure_agent.audit_rotation import RotationPolicy
from tests.agent import wire
from tests.plugins.agent import RunningAgent, StartAgent, rpc_body
from tests.plugins.pki import TestPKI

FAST_CLOCK = 45  # seconds a collector's clock runs ahead: inside the 60 s a token may be dated ahead
SKEW = 300  # the default security.max_clock_skew


def _accepted_then_restarted(
    start_agent: StartAgent, pki: TestPKI, audit_log: Path, ts: int, method: str = "ping"
) -> tuple[RunningAgent, bytes, str]:
    """Serve one request with a token dated ``ts``, restart on the same audit log; (second agent, request, nonce)."""
    first = start_agent(pki, audit_log=str(audit_log))
    body = rpc_body(method)
    header = wire.signed_headers(first, pki, body, ts=ts)
    captured = wire.request_bytes(body, authorization=header)
    assert wire.send_once(first, pki, captured).status == 200
    first.stop()
    call = next(r for r in wire.records(first) if r["event"] == "call")
    assert call["outcome"] == ("served" if method == "ping" else "faulted")
    token = tokens.parse(header)
    assert (call["key_id"], call["ts"], call["nonce"]) == (token.key_id, token.ts, token.nonce)
    assert token.sig not in audit_log.read_text()  # the signature is never recorded
    return start_agent(pki, audit_log=str(audit_log)), captured, token.nonce


@pytest.mark.parametrize("method", ["ping", "no_such_method"])  # a served call, and a faulted one
def test_a_future_dated_token_is_refused_after_a_restart(
    start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path, method: str
) -> None:
    """Dated ahead of the agent's clock, the token is above the start floor: only the recorded nonce refuses it."""
    audit_log = tmp_path / "audit.log"
    ts = int(time.time()) + FAST_CLOCK
    second, captured, _ = _accepted_then_restarted(start_agent, test_pki, audit_log, ts, method)
    reply = wire.send_once(second, test_pki, captured)
    assert reply.status == 401 and reply.body == b"unauthorized\n"
    record = wire.wait_for_record(second, wire.event("replay", reason="replay"))
    assert record["key_id"] == "collector" and record["status"] == 401
    assert wire.served_calls(second) == 1  # the one call of the first run, none of the second
    second.stop()
    assert verify_file(audit_log).ok  # one chain across both runs, new fields and all


def test_a_token_accepted_before_a_restart_is_refused_after_it(
    start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path
) -> None:
    """A token of the agent's own time: the start floor refuses it, and its nonce is in the reloaded cache too."""
    audit_log = tmp_path / "audit.log"
    ts = int(time.time())
    second, captured, nonce = _accepted_then_restarted(start_agent, test_pki, audit_log, ts)
    reply = wire.send_once(second, test_pki, captured)
    assert reply.status == 401
    wire.wait_for_record(second, wire.event("token_refused", reason="stale"))
    # Independently of the floor, the durable cache holds the nonce: adding it again is refused.
    assert not second.agent.server.verifier.cache.add("collector", nonce, ts, time.time())
    assert wire.served_calls(second) == 1


def test_history_that_cannot_be_read_back_refuses_the_tokens_it_could_hold(
    start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path
) -> None:
    """Retention deleted the start of the window's records: the floor rises just above what they could hold."""
    audit_log = tmp_path / "audit.log"
    written_at = time.time() - 20  # every record of this log is inside the window, and recent
    log = AuditLog(audit_log, "localhost", clock=lambda: written_at, rotation=RotationPolicy(2048, 1))
    log.open()
    for number in range(40):  # ~10 records a segment: rotates, and the oldest segments are deleted
        log.record("call", "served", method="ping", key_id="collector", ts=int(written_at), nonce=f"{number:032x}")
    log.close()
    assert audit_log.with_name("audit.log.1").exists() and not audit_log.with_name("audit.log.2").exists()
    agent = start_agent(test_pki, audit_log=str(audit_log))  # keeps 12 segments: .2 is missing history
    body = rpc_body("ping")
    # deleted records were written by written_at: their tokens were dated at most FORWARD_SKEW after that
    floor = int(written_at) + min(SKEW, tokens.FORWARD_SKEW) + 1
    below = wire.request_bytes(body, authorization=wire.signed_headers(agent, test_pki, body, ts=floor - 10))
    assert wire.send_once(agent, test_pki, below).status == 401
    wire.wait_for_record(agent, wire.event("token_refused", reason="stale"))
    above = wire.request_bytes(body, authorization=wire.signed_headers(agent, test_pki, body, ts=floor + 10))
    assert wire.send_once(agent, test_pki, above).status == 200  # not a blanket refusal
