"""The refusal budget on a controlled clock (:mod:`secure_agent.refusals`): one global bucket, one per source,
and periodic summaries of what went over it, bounded in number, into a real audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from secure_agent.audit import AuditLog
from secure_agent.refusals import MAX_GROUPS, MAX_SUMMARY_RECORDS, Budget, RefusalRecorder, source_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("host", "source"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9%eth0", "2001:db8:1:2::/64"),
        ("not an address", "not an address"),
    ],
)
def test_sources_are_networks(host: str, source: str) -> None:
    assert source_of(host) == source


def recorder(tmp_path: Path, clock: Clock, **budget: Any) -> tuple[RefusalRecorder, AuditLog, list[int]]:
    log = AuditLog(tmp_path / "audit.log", "agent-a", sync_interval=0, clock=clock)
    log.open()
    woken: list[int] = []
    refusals = RefusalRecorder(log, Budget(**budget), clock=clock, wall=clock)
    refusals.set_waker(lambda: woken.append(1))
    return refusals, log, woken


def records(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


def test_one_global_budget_across_sources_and_a_small_one_per_source(tmp_path: Path) -> None:
    clock = Clock()
    refusals, log, _ = recorder(tmp_path, clock, burst=5, per_second=1.0, per_source_burst=2,
                                per_source_per_second=0.1)
    written = [refusals.refuse(f"net{n}", "connection_denied", "address_not_allowed", {}) for n in range(4)
               for _ in range(3)]
    assert written.count(True) == 5  # the global burst, however many sources
    assert written[:3] == [True, True, False]  # and one source gets two of them at most
    clock.now += 2.0  # two more global tokens; each source's own bucket refills slowly
    assert refusals.refuse("net9", "connection_denied", "address_not_allowed", {})
    assert not refusals.refuse("net0", "connection_denied", "address_not_allowed", {})
    log.close()


def test_what_goes_over_is_summarised_periodically_with_who_which_how_many_and_when(tmp_path: Path) -> None:
    clock = Clock()
    refusals, log, woken = recorder(tmp_path, clock, burst=1, per_second=0.001, per_source_burst=1,
                                    per_source_per_second=0.001, summary_interval=60)
    assert refusals.due() is None
    refusals.refuse("fp1", "identity_refused", "certificate_revoked", {"peer": "127.0.0.1:1", "common_name": "x"})
    for second in range(5):
        clock.now = 1000.0 + second
        refusals.refuse("fp1", "identity_refused", "certificate_revoked", {"peer": f"127.0.0.1:{second}",
                                                                         "common_name": "x"})
    assert woken == [1]  # the accept loop is told once, when counting starts
    assert refusals.due() == pytest.approx(56.0)
    refusals.flush_if_due()
    assert not [r for r in records(tmp_path) if r["event"] == "refusals_suppressed"]  # not yet
    clock.now = 1060.0
    refusals.flush_if_due()
    summary = [r for r in records(tmp_path) if r["event"] == "refusals_suppressed"]
    assert len(summary) == 1
    assert (summary[0]["source"], summary[0]["refusal"], summary[0]["count"]) == (
        "fp1", "identity_refused/certificate_revoked", 5)
    assert summary[0]["first"] == "1970-01-01T00:16:40.000000Z" and summary[0]["last"] == "1970-01-01T00:16:44.000000Z"
    assert (summary[0]["peer"], summary[0]["common_name"]) == ("127.0.0.1:4", "x")
    assert refusals.due() is None  # nothing counted since: no wake-ups
    clock.now = 1200.0
    refusals.refuse("fp1", "identity_refused", "certificate_revoked", {})
    clock.now = 1260.0
    refusals.flush_if_due()
    assert len([r for r in records(tmp_path) if r["event"] == "refusals_suppressed"]) == 2  # periodic
    log.close()


def test_summaries_are_bounded_and_fold_the_smallest_sources(tmp_path: Path) -> None:
    clock = Clock()
    refusals, log, _ = recorder(tmp_path, clock, burst=1, per_second=0.001, per_source_burst=1,
                                per_source_per_second=0.001)
    sources = MAX_GROUPS + 50
    for number in range(sources):
        for _ in range(2 if number < 10 else 1):
            refusals.refuse(f"net{number}", "connection_denied", "address_not_allowed", {})
    refusals.close()
    log.close()
    written = [r for r in records(tmp_path) if r["event"] == "connection_denied"]
    summaries = [r for r in records(tmp_path) if r["event"] == "refusals_suppressed"]
    assert len(summaries) == MAX_SUMMARY_RECORDS + 1
    assert {s["source"] for s in summaries[:9]} == {f"net{n}" for n in range(1, 10)}  # the largest first
    assert [s["source"] for s in summaries].count("*") == 1
    folded = summaries[-1]
    assert folded["source"] == "*" and folded["refusal"] == "connection_denied/address_not_allowed"
    assert folded["sources"] == sources - 9 - (MAX_SUMMARY_RECORDS - 9) - 50 + 1  # the rest, and the overflow
    assert len(written) + sum(s["count"] for s in summaries) == sources + 10  # every refusal accounted for


def test_a_flood_from_many_networks_cannot_fold_a_certificates_refusals_away(tmp_path: Path) -> None:
    """Anyone can refuse from thousands of networks (an IPv6 /48 holds 65,536 /64s), each more often than a revoked
    certificate that probes now and then: the summary still names that certificate, with its count."""
    clock = Clock()
    refusals, log, _ = recorder(tmp_path, clock, burst=1, per_second=0.001, per_source_burst=1,
                                per_source_per_second=0.001)
    refusals.refuse("2001:db8::/64", "connection_denied", "address_not_allowed", {})  # the whole budget
    for number in range(MAX_GROUPS + 10):
        for _ in range(3):
            refusals.refuse(f"2001:db8:0:{number:x}::/64", "connection_denied", "address_not_allowed", {})
    fingerprint = "ab" * 32
    for _ in range(2):
        refusals.refuse(fingerprint, "identity_refused", "certificate_revoked",
                        {"fingerprint": fingerprint, "common_name": "stolen"})
    refusals.close()
    log.close()
    summaries = [r for r in records(tmp_path) if r["event"] == "refusals_suppressed"]
    assert len(summaries) == MAX_SUMMARY_RECORDS + 1  # still bounded
    named = [s for s in summaries if s["source"] == fingerprint]
    assert [(s["refusal"], s["count"], s["common_name"]) for s in named] == [
        ("identity_refused/certificate_revoked", 2, "stolen")]
    assert sum(s["count"] for s in summaries) == 3 * (MAX_GROUPS + 10) + 2  # every refusal accounted for


def test_a_refusal_after_the_stop_is_not_counted_into_a_summary_that_never_comes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection cut at the stop can still refuse after the last summary: it is written at once, and once the
    log is closed too, its counts go to the operational log, never nowhere."""
    clock = Clock()
    refusals, log, _ = recorder(tmp_path, clock, burst=1, per_second=0.001, per_source_burst=1,
                                per_source_per_second=0.001)
    refusals.refuse("net1", "bad_request", "incomplete_request", {})  # the whole budget
    refusals.close()
    refusals.refuse("net2", "bad_request", "incomplete_request", {"peer": "192.0.2.9:1"})
    summaries = [r for r in records(tmp_path) if r["event"] == "refusals_suppressed"]
    assert [(s["source"], s["refusal"], s["count"]) for s in summaries] == [
        ("net2", "bad_request/incomplete_request", 1)]
    log.close()
    refusals.refuse("net3", "bad_request", "incomplete_request", {})
    assert "net3 bad_request/incomplete_request x1" in caplog.text
