"""Issue 22, item 1: floods of refusals cannot push the record of a served call off the host.

Each flood of the issue's "Why", against a real agent whose retention is tiny (one 64 KiB segment besides the
live one, and no extra segments kept for a collector): denied connections from 60 networks, a revoked
certificate that reconnects, an admitted certificate without the HMAC key (401 and 429), and all of them at
once. Afterwards the served call made before the flood is still on the host, the chain verifies, every refusal
is accounted for (a record of its own, or counted in a summary naming who, which refusal, how many, first and
last time), and the records written for refusals stay within the global budget.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pki import tokens
from secure_audit.segments import rotated_segments, verify_segments
from tests.agent import wire
from tests.plugins.agent import RunningAgent, StartAgent, rpc_body, rpc_call
from tests.plugins.pki import TestPKI

pytestmark = pytest.mark.slow

TINY_RETENTION = {"max_bytes": 65536, "backup_count": 1, "max_backup_count": 1}
NETWORKS = 60
REFUSAL_EVENTS = {"connection_denied", "handshake_failed", "identity_refused", "bad_request", "rate_limited",
                  "token_refused", "replay"}
TIME_FORMAT_LENGTH = len("2026-03-10T03:22:00.123456Z")


def host_records(agent: RunningAgent) -> list[dict[str, Any]]:
    return [json.loads(line) for p in rotated_segments(agent.audit_log) for line in p.read_text().splitlines()]


def served_before(agent: RunningAgent, pki: TestPKI, collector: str = "collector") -> str:
    """Serve one call and return its request id (what must still be on the host afterwards)."""
    assert rpc_call(agent, pki, "ping", collector=collector, key_id=collector) == "pong"
    call = [r for r in host_records(agent) if r["event"] == "call"][-1]
    return str(call["request_id"])


def flood_denied(agent: RunningAgent, _pki: TestPKI, attempts: int) -> int:
    """Connections from 60 different /24 networks (127.N.0.1), none allowed: closed before TLS."""
    for number in range(attempts):
        with wire.tcp(agent, source=f"127.{1 + number % NETWORKS}.0.1") as sock:
            assert wire.is_closed(sock)
    return attempts


def flood_revoked(agent: RunningAgent, pki: TestPKI, attempts: int) -> int:
    """A revoked certificate that just reconnects (TLS handshake, then hang up)."""
    context = wire.collector_context(pki, "revoked")
    for _ in range(attempts):
        with contextlib.suppress(OSError, ssl.SSLError):  # refused in the handshake: one refusal all the same
            wire.tls(agent, context).close()
    return attempts


def flood_no_key(agent: RunningAgent, pki: TestPKI, attempts: int) -> int:
    """An admitted certificate without the HMAC key: tokens signed with a key of its own (401, then 429),
    from four connections at a time (the agent lingers a moment after each refusal)."""
    body = rpc_body("ping")
    forged = secrets.token_bytes(32)
    context = wire.collector_context(pki, "nokey")
    statuses: list[int] = []

    def send(count: int) -> None:
        for _ in range(count):
            token = tokens.sign("collector", forged, agent.name, body)
            try:
                with wire.tls(agent, context) as sock:
                    statuses.append(wire.exchange(sock, wire.request_bytes(body, authorization=token)).status)
            except (OSError, ssl.SSLError):
                pass

    senders = [threading.Thread(target=send, args=(attempts // 4 + (i < attempts % 4),)) for i in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(60)
    assert set(statuses) <= {401, 429} and statuses
    return attempts


FLOODS: dict[str, tuple[Callable[[RunningAgent, TestPKI, int], int], int]] = {
    "denied connections from 60 networks": (flood_denied, 1800),
    "a revoked certificate reconnecting": (flood_revoked, 400),
    "an admitted certificate without the HMAC key": (flood_no_key, 300),
}


@pytest.fixture
def flood_pki(make_pki: Callable[..., TestPKI], tmp_path: Path) -> TestPKI:
    pki = make_pki(
        tmp_path / "pki", agents=["localhost=localhost,127.0.0.1"], collectors=["collector", "revoked", "nokey"]
    )
    pki.revoke("revoked")
    return pki


def flooded_agent(start_agent: StartAgent, pki: TestPKI, **overrides: Any) -> RunningAgent:
    return start_agent(
        pki,
        audit_rotation=overrides.pop("audit_rotation", TINY_RETENTION),
        security={"allowed_ips": ["127.0.0.1"], "rate_limit": {"per_second": 5, "burst": 10}},
        **overrides,
    )


def assert_accounted(agent: RunningAgent, attempts: int, elapsed: float) -> None:
    records = host_records(agent)
    refusals = [r for r in records if r["event"] in REFUSAL_EVENTS and r["outcome"] == "refused"]
    summaries = [r for r in records if r["event"] == "refusals_suppressed"]
    counted = sum(r["count"] for r in summaries)
    assert len(refusals) + counted == attempts  # every refusal: a record, or counted in a summary
    budget = agent.config.audit_refusals
    assert len(refusals) <= budget.burst + budget.per_second * elapsed + 1  # one global budget
    for summary in summaries:
        assert summary["source"] and summary["refusal"] and summary["count"] >= 1
        assert len(summary["first"]) == len(summary["last"]) == TIME_FORMAT_LENGTH
        assert summary["first"] <= summary["last"]
    assert verify_segments(rotated_segments(agent.audit_log)).ok


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_a_flood_leaves_the_served_record_on_the_host(
    start_agent: StartAgent, flood_pki: TestPKI, flood: str
) -> None:
    agent = flooded_agent(start_agent, flood_pki)
    served = served_before(agent, flood_pki)
    run, attempts = FLOODS[flood]
    started = time.monotonic()
    run(agent, flood_pki, attempts)
    assert agent.agent.server.wait_idle(10.0)
    elapsed = time.monotonic() - started
    agent.stop()  # the last summaries are written at stop
    assert served in {r.get("request_id") for r in host_records(agent)}, "the served call's record was pushed out"
    assert_accounted(agent, attempts, elapsed)


def test_all_floods_at_once_leave_the_served_record_on_the_host(
    start_agent: StartAgent, flood_pki: TestPKI
) -> None:
    agent = flooded_agent(start_agent, flood_pki)
    served = served_before(agent, flood_pki)
    started = time.monotonic()
    threads = [
        threading.Thread(target=run, args=(agent, flood_pki, attempts // 2)) for run, attempts in FLOODS.values()
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert agent.agent.server.wait_idle(10.0)
    elapsed = time.monotonic() - started
    during = served_before(agent, flood_pki)  # the collector is still served: its record is written too
    agent.stop()
    ids = {r.get("request_id") for r in host_records(agent)}
    assert served in ids and during in ids
    attempts = sum(attempts // 2 for _, attempts in FLOODS.values())
    assert_accounted(agent, attempts, elapsed)
    summaries = [r for r in host_records(agent) if r["event"] == "refusals_suppressed"]
    assert {s["refusal"].split("/")[0] for s in summaries} >= {"connection_denied", "identity_refused"}


def test_sources_are_networks_before_authentication_and_certificates_after(
    start_agent: StartAgent, flood_pki: TestPKI
) -> None:
    agent = flooded_agent(start_agent, flood_pki, audit_refusals={"per_source_burst": 1, "burst": 1000})
    flood_denied(agent, flood_pki, 3 * NETWORKS)
    flood_revoked(agent, flood_pki, 5)
    assert agent.agent.server.wait_idle(10.0)
    agent.stop()
    records = host_records(agent)
    denied = [r for r in records if r["event"] == "connection_denied"]
    assert len(denied) == NETWORKS  # one record per /24 network (its bucket holds one), then counted
    summaries = {r["source"]: r for r in records if r["event"] == "refusals_suppressed"}
    assert "127.1.0.0/24" in summaries or "*" in summaries
    revoked = [r for r in records if r["event"] == "identity_refused"]
    assert len(revoked) == 1 and revoked[0]["reason"] == "certificate_revoked"
    by_certificate = summaries.get(revoked[0]["fingerprint"])
    assert by_certificate is not None and by_certificate["refusal"] == "identity_refused/certificate_revoked"
    assert by_certificate["count"] == 4 and by_certificate["common_name"] == "revoked"


def test_records_no_collector_has_fetched_outlive_a_flood(start_agent: StartAgent, flood_pki: TestPKI) -> None:
    """The retention rule alone (a budget so large it protects nothing): what no collector fetched stays."""
    agent = flooded_agent(
        start_agent,
        flood_pki,
        audit_rotation={"max_bytes": 65536, "backup_count": 1, "max_backup_count": 6},
        audit_refusals={"burst": 100_000, "per_second": 10_000, "per_source_burst": 100_000},
    )
    copied = rpc_call(agent, flood_pki, "get_audit", "", 1000)["records"]
    rpc_call(agent, flood_pki, "get_audit", json.loads(copied[-1])["hash"], 1)  # a collector holds these
    served = served_before(agent, flood_pki)  # made after: not fetched by any collector
    flood_denied(agent, flood_pki, 500)  # ~150 KiB of refusal records: several rotations
    agent.stop()
    assert len(rotated_segments(agent.audit_log)) > 2  # more than backup_count + the live one were kept ...
    assert served in {r.get("request_id") for r in host_records(agent)}  # ... so the unfetched record is there
    assert verify_segments(rotated_segments(agent.audit_log)).ok
