"""Allowlists judged on what they admit (issue 14, item 4).

``::ffff:0:0/96`` on a dual-stack listener admits every IPv4 peer (they arrive as ``::ffff:a.b.c.d``);
``0.0.0.0/1`` + ``128.0.0.0/1`` admit every IPv4 address between them. Both used to start. Now a mapped
network is the IPv4 network it maps, a list whose entries together cover a whole address family stops
the agent (one line naming them), and ``secure-audit check`` reports it as a high finding.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from secure_agent import allowlist
from tests.agent.test_cli import _assert_one_line_refusal, _config, _run
from tests.audit.helpers import run_check
from tests.plugins.agent import RPCStatusError, StartAgent, rpc_call
from tests.plugins.pki import TestPKI


@pytest.mark.parametrize(
    ("allowed", "named"),
    [
        (["::ffff:0:0/96"], "::ffff:0:0/96"),  # one entry: every IPv4 address, written as IPv6
        (["0.0.0.0/1", "128.0.0.0/1"], "0.0.0.0/1, 128.0.0.0/1"),
        (["10.0.0.1", "::ffff:0:0/97", "128.0.0.0/1"], "10.0.0.1, ::ffff:0:0/97, 128.0.0.0/1"),
        (["::/1", "8000::/1", "10.0.0.1"], "::/1, 8000::/1"),
    ],
)
def test_a_list_admitting_a_whole_family_stops_the_agent(
    test_pki: TestPKI, tmp_path: Path, allowed: list[str], named: str
) -> None:
    config = _config(test_pki, tmp_path, security={"allowed_ips": allowed})
    for args in (["--check"], []):
        result = _run("--config", str(config), *args)
        _assert_one_line_refusal(result, "security.allowed_ips", named)


def test_secure_audit_check_reports_it_as_a_high_finding(
    test_pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(test_pki, tmp_path, security={"allowed_ips": ["0.0.0.0/1", "128.0.0.0/1"]})
    report = run_check(capsys, "--agent-config", str(config))
    assert report.code == 1
    finding = report.finding("allowlist-everyone")
    assert finding["severity"] == "high" and "0.0.0.0/1, 128.0.0.0/1" in finding["message"]


def test_nearly_everything_is_not_everything() -> None:
    assert allowlist.admits_everyone(["0.0.0.0/1", "128.0.0.0/2"]) is None
    assert allowlist.admits_everyone(["::ffff:0:0/96", "::1"]) is not None
    assert str(allowlist.parse("::ffff:10.0.0.0/104")) == "10.0.0.0/8"
    assert str(allowlist.parse("::ffff:127.0.0.1")) == "127.0.0.1/32"
    assert allowlist.parse("fe80::/10").version == 6


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this host has no IPv6 loopback")
@pytest.mark.parametrize(
    ("allowed", "v4_admitted", "v6_admitted"),
    [
        (["127.0.0.1"], True, False),
        (["::ffff:127.0.0.1"], True, False),  # the mapped form admits the IPv4 peer it maps
        (["::1"], False, True),
        (["::ffff:10.0.0.0/104", "::1"], False, True),  # a mapped network elsewhere admits no IPv4 loopback
        (["127.0.0.1", "::1"], True, True),
    ],
)
def test_a_dual_stack_listener_judges_ipv4_peers_as_ipv4(
    test_pki: TestPKI, start_agent: StartAgent, allowed: list[str], v4_admitted: bool, v6_admitted: bool
) -> None:
    agent = start_agent(test_pki, host="::", security={"allowed_ips": allowed})

    class At:
        def __init__(self, host: str) -> None:
            self.name, self.host, self.port = agent.name, host, agent.port

    for host, admitted in (("127.0.0.1", v4_admitted), ("::1", v6_admitted)):
        try:
            answer: Any = rpc_call(At(host), test_pki, "ping")
            assert admitted, f"{host} was served"
            assert answer
        except (ConnectionError, OSError, RPCStatusError) as exc:
            assert not admitted, f"{host} was refused: {exc!r}"
    denied = [r for r in agent.audit_records() if r.get("event") == "connection_denied"]
    assert len(denied) == (not v4_admitted) + (not v6_admitted)
