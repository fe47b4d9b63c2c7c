"""A collector that was down loses nothing: it back-fills from the agent's sample buffer (issue 18, item 2).

The agent takes samples whether or not anyone polls (here on demand, standing for its ``sample_interval``
while the collector is stopped); the restarted collector fetches what it missed with ``get_samples`` before
live polling resumes, and stores each buffered sample once, stamped with the agent's clock and flagged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from secure_agent.lifecycle import Agent
from secure_agent.metrics import MetricsService
from secure_collector import cli
from tests.collector.helpers import collector_data, write_config
from tests.plugins.agent import agent_with_service, rpc_call
from tests.plugins.pki import TestPKI


@pytest.fixture
def sampled(test_pki: TestPKI, tmp_path: Path) -> Iterator[tuple[Agent, MetricsService]]:
    # no background sampling: the test takes each sample, standing for a sample_interval passing
    with agent_with_service(test_pki, tmp_path / "agent", sample_interval=3600) as running:
        yield running


def _stored(data: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(data["storage"]["json_file"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_get_samples_pages_through_the_buffer_and_says_gap_after_a_reset(
    sampled: tuple[Agent, MetricsService], test_pki: TestPKI
) -> None:
    agent, service = sampled
    for _ in range(5):
        service.take_sample()
    endpoint = _Endpoint(agent)
    first = rpc_call(endpoint, test_pki, "get_samples", 0, 3)
    assert [s["seq"] for s in first["samples"]] == [1, 2, 3] and first["more"] and not first["gap"]
    rest = rpc_call(endpoint, test_pki, "get_samples", 3, 1000)
    assert [s["seq"] for s in rest["samples"]] == [4, 5] and not rest["more"]
    assert all(("cpu_usage" in s and "timestamp" in s and "findings" not in s.get("security", {})) or
               s["security"]["findings"] == [] for s in rest["samples"])
    assert rpc_call(endpoint, test_pki, "get_samples", 99, 10)["gap"] is True  # a seq this buffer never had
    assert rpc_call(endpoint, test_pki, "get_metrics")["sample_seq"] == 5
    calls = [r for r in _audit(agent) if r.get("method") == "get_samples"]
    assert len(calls) == 3  # audited like every call


def test_a_restarted_collector_stores_every_sample_it_missed_once(
    sampled: tuple[Agent, MetricsService], test_pki: TestPKI, tmp_path: Path
) -> None:
    agent, service = sampled
    host, port = agent.address
    data = collector_data(test_pki, tmp_path, [("localhost", host, port)])
    config = str(write_config(tmp_path, data))
    assert cli.main(["--config", config, "--once"]) == 0  # first contact: covered by this poll
    assert [s for s in _stored(data) if s["extra"].get("backfilled")] == []

    for _ in range(10):  # the collector is down for ten sample intervals
        service.take_sample()
    assert cli.main(["--config", config, "--once"]) == 0
    backfilled = [s for s in _stored(data) if s["extra"].get("backfilled")]
    assert [s["extra"]["agent_seq"] for s in backfilled] == list(range(1, 11))
    assert all(s["timestamp"] == s["extra"]["agent_timestamp"] for s in backfilled)  # the agent's clock, said so

    service.take_sample()
    assert cli.main(["--config", config, "--once"]) == 0  # restarted again: only the new one
    assert cli.main(["--config", config, "--once"]) == 0  # and nothing at all
    seqs = [s["extra"]["agent_seq"] for s in _stored(data) if s["extra"].get("backfilled")]
    assert seqs == list(range(1, 12))  # each buffered sample stored once


def test_an_agent_that_serves_one_request_per_connection_is_back_filled_too(test_pki: TestPKI, tmp_path: Path) -> None:
    """Its answer to get_metrics closes the connection (``Connection: close``): get_samples used to be skipped
    there, sweep after sweep, without a word; the follow-up connects again."""
    with agent_with_service(
        test_pki, tmp_path / "agent", sample_interval=3600, server={"max_requests_per_connection": 1}
    ) as (agent, service):
        host, port = agent.address
        data = collector_data(test_pki, tmp_path, [("localhost", host, port)])
        config = str(write_config(tmp_path, data))
        assert cli.main(["--config", config, "--once"]) == 0  # first contact
        for _ in range(4):  # the collector is down for four sample intervals
            service.take_sample()
        assert cli.main(["--config", config, "--once"]) == 0
        seqs = [s["extra"]["agent_seq"] for s in _stored(data) if s["extra"].get("backfilled")]
        assert seqs == [1, 2, 3, 4]


def test_a_failed_poll_is_a_gap_back_filled_at_the_next_good_one(
    sampled: tuple[Agent, MetricsService], test_pki: TestPKI, tmp_path: Path
) -> None:
    agent, service = sampled
    host, port = agent.address
    data = collector_data(test_pki, tmp_path, [("localhost", host, port)], poll_interval=0.2)
    collector = cli.build(cli._arguments(["--config", str(write_config(tmp_path, data))]), [])
    try:
        collector.poller.run(max_sweeps=1)
        backfill = collector.poller.recorder.backfill if collector.poller.recorder is not None else None
        assert backfill is not None
        backfill.gap("localhost")  # as a timeout of this agent would mark it
        for _ in range(3):
            service.take_sample()
        collector.poller.run(max_sweeps=1)
    finally:
        collector.close()
    seqs = [s["extra"]["agent_seq"] for s in _stored(data) if s["extra"].get("backfilled")]
    assert seqs == [1, 2, 3]


class _Endpoint:
    def __init__(self, agent: Agent) -> None:
        self.name = agent.config.name
        self.host, self.port = agent.address


def _audit(agent: Agent) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(agent.config.audit_log).read_text().splitlines()]
