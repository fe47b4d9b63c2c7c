"""Issue 15: the first get_metrics after an agent starts had ``cpu_usage: null``, so a ``cpu_usage``
threshold could not fire on the first sweep after any agent restart. Polled the moment its port opens,
the agent now answers with CPU figures measured over a real interval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from secure_collector.cli import main as collector_main
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.plugins.agent import StartAgent, rpc_call
from tests.plugins.pki import TestPKI


def test_an_agent_polled_the_moment_its_port_opens_reports_its_cpu(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)  # returns once the port is open; nothing called it yet
    metrics = rpc_call(agent, test_pki, "get_metrics")
    assert metrics["cpu_usage"] is not None
    assert metrics["cpu"]["percent"] is not None and metrics["cpu"]["per_core"]


def test_a_once_against_a_fresh_agent_stores_cpu_and_fires_its_threshold(
    start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = start_agent(test_pki)
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)], thresholds={"cpu_usage": 0})
    assert collector_main(["--config", str(write_config(tmp_path, data)), "--once"]) == 0, capsys.readouterr()
    store = read_store(load(data))
    [sample] = store.query_samples(*WIDE).to_dict("records")
    assert sample["cpu_usage"] is not None and sample["cpu_usage"] == sample["cpu_usage"]  # not NaN
    alerts = store.query_alerts(*WIDE)
    assert "cpu_usage" in set(alerts["metric"]), json.dumps(alerts.to_dict("records"), default=str)
