"""Acceptance: several real agents and one hostile peer, polled by the real collector over loopback.

good      a real agent                                       -> up, its samples stored
stopped   a real agent, stopped (its port is closed)         -> unreachable
alien     a real agent with a certificate of another CA      -> tls_failure
limited   a real agent whose rate limit its burst used up    -> rate_limited
garbage   a TLS peer of our CA answering malformed XML-RPC   -> bad_response
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from secure_collector import cli
from tests.collector.fakeagent import FakeAgent, http
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.plugins.agent import RPCStatusError, StartAgent, rpc_call
from tests.plugins.pki import TestPKI

EXPECTED = {
    "good": "up",
    "stopped": "unreachable",
    "alien": "tls_failure",
    "limited": "rate_limited",
    "garbage": "bad_response",
}


class Fleet:
    def __init__(self, pki: TestPKI, agents: list[tuple[str, str, int]], folder: Path) -> None:
        self.pki = pki
        self.agents = agents
        self.folder = folder

    def config(self, **overrides: Any) -> dict[str, Any]:
        return collector_data(self.pki, self.folder, self.agents, **overrides)


@pytest.fixture
def fleet(make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path) -> Iterator[Fleet]:
    pki = make_pki(
        tmp_path / "pki",
        agents=[f"{n}=localhost,127.0.0.1" for n in EXPECTED if n != "alien"],
        collectors=["collector"],
    )
    other = make_pki(tmp_path / "other", agents=["alien=localhost,127.0.0.1"], collectors=["collector"])
    good = start_agent(pki, "good")
    stopped = start_agent(pki, "stopped")
    stopped.stop()
    alien = start_agent(other, "alien")
    limited = start_agent(pki, "limited", security={"rate_limit": {"per_second": 0.001, "burst": 1}})
    rpc_call(limited, pki, "ping")  # the burst of one is spent: every poll now meets 429
    with pytest.raises(RPCStatusError) as refused:
        rpc_call(limited, pki, "ping")
    assert refused.value.status == 429
    garbage = FakeAgent(
        pki, lambda body: http(b"<?xml version='1.0'?><methodResponse><params><param><value>"), "garbage"
    )
    agents = [
        ("good", good.host, good.port),
        ("stopped", stopped.host, stopped.port),
        ("alien", alien.host, alien.port),
        ("limited", limited.host, limited.port),
        ("garbage", garbage.host, garbage.port),
    ]
    try:
        yield Fleet(pki, agents, tmp_path)
    finally:
        garbage.stop()


def _states(lines: list[str]) -> dict[str, str]:
    return {line.split()[0]: line.split()[1] for line in lines if line.strip()}


def test_once_shows_every_state_and_stores_only_good_data(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = fleet.config()
    code = cli.main(["--config", str(write_config(tmp_path, data)), "--once"])
    out = capsys.readouterr().out
    assert code == 1
    assert _states(out.splitlines()) == EXPECTED
    store = read_store(load(data))
    samples = store.query_samples(*WIDE)
    assert list(samples["agent"]) == ["good"]
    statuses = store.query_statuses(*WIDE)
    assert dict(zip(statuses["agent"], statuses["state"], strict=True)) == EXPECTED
    assert not list((tmp_path / "spool").glob("*.spool"))
    alerts = store.query_alerts(*WIDE)
    down = alerts[alerts["metric"] == "agent_state"]
    assert set(down["agent"]) == set(EXPECTED) - {"good"}
    assert set(down[down["agent"] == "alien"]["technique"]) == {"T1557"}


def test_long_running_keeps_polling_through_failures(fleet: Fleet, tmp_path: Path) -> None:
    data = fleet.config(poll_interval=0.3)
    collector = cli.build(cli._arguments(["--config", str(write_config(tmp_path, data))]), [])
    runner = threading.Thread(target=collector.poller.run, kwargs={"max_sweeps": 4})
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()
    collector.close()
    assert collector.poller.states == EXPECTED
    store = read_store(load(data))
    samples = store.query_samples(*WIDE)
    assert set(samples["agent"]) == {"good"}
    assert len(samples) == 4  # one per sweep: the broken agents delayed nothing
    assert samples["timestamp"].is_monotonic_increasing
    statuses = store.query_statuses(*WIDE)
    per_agent = statuses.groupby("agent")["state"].agg(set).to_dict()
    assert per_agent == {name: {state} for name, state in EXPECTED.items()}
    # failing agents are backed off: fewer attempts than the good one, but at least one
    counts = statuses["agent"].value_counts().to_dict()
    assert counts["good"] == 4
    assert all(1 <= counts[name] < 4 for name in EXPECTED if name != "good")


def test_a_revoked_agent_is_refused_with_tls_crl_and_nothing_of_it_is_stored(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_pki(
        tmp_path / "pki", agents=["good=localhost,127.0.0.1", "revoked=localhost,127.0.0.1"], collectors=["collector"]
    )
    good = start_agent(pki, "good")
    revoked = start_agent(pki, "revoked")
    polled = [("good", good.host, good.port), ("revoked", revoked.host, revoked.port)]
    # control: before the revocation the same collector config reaches both
    before = collector_data(pki, tmp_path / "before", polled)
    assert before["tls"]["crl"] == str(pki.crl)  # make_certs writes tls.crl into collector.json
    (tmp_path / "before").mkdir()
    assert cli.main(["--config", str(write_config(tmp_path, before, "before.json")), "--once"]) == 0

    pki.revoke("revoked")
    data = collector_data(pki, tmp_path, polled)
    capsys.readouterr()
    assert cli.main(["--config", str(write_config(tmp_path, data)), "--once"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert _states(lines) == {"good": "up", "revoked": "tls_failure"}
    assert "agent certificate rejected: certificate revoked" in next(line for line in lines if "revoked" in line)
    store = read_store(load(data))
    assert set(store.query_samples(*WIDE)["agent"]) == {"good"}
    statuses = store.query_statuses(*WIDE)
    assert dict(zip(statuses["agent"], statuses["state"], strict=True)) == {"good": "up", "revoked": "tls_failure"}
    alerts = store.query_alerts(*WIDE)
    impostor = alerts[alerts["agent"] == "revoked"]
    assert list(zip(impostor["metric"], impostor["severity"], impostor["technique"], strict=True)) == [
        ("agent_state", "critical", "T1557")
    ]
    # the handshake failed before any request: the revoked agent never saw a token of this run
    calls = [r for r in revoked.audit_records() if r.get("method") == "get_metrics"]
    assert len(calls) == 1  # the control run's call only
