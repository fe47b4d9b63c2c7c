"""The happy path: a real agent answers the contract's three methods over mutual TLS."""

from __future__ import annotations

import xmlrpc.client

import pytest

from tests.plugins.agent import StartAgent, connect, rpc_call
from tests.plugins.pki import TestPKI


def test_ping_info_metrics(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    assert rpc_call(agent, test_pki, "ping") == "pong"
    info = rpc_call(agent, test_pki, "get_info")
    assert info["name"] == "localhost"
    metrics = rpc_call(agent, test_pki, "get_metrics")
    assert metrics["agent"] == "localhost"
    records = agent.audit_records()
    calls = [r for r in records if r["event"] == "call"]
    assert [r["method"] for r in calls] == ["ping", "get_info", "get_metrics"]
    assert all(r["outcome"] == "served" and r["common_name"] == "collector" for r in calls)


def test_keep_alive_calls(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    conn = connect(agent, test_pki)
    try:
        for _ in range(3):
            assert rpc_call(agent, test_pki, "ping", connection=conn) == "pong"
        with pytest.raises(xmlrpc.client.Fault):
            rpc_call(agent, test_pki, "system.listMethods", connection=conn)
    finally:
        conn.close()
