"""One key holder cannot deny another collector through the replay cache (issue 14, item 2).

Before, the cache was one pool for every key id: ~101k valid calls dated ahead pushed its floor into the
future and every honest token was refused as a replay. Now each key id has its own share: the key that
fills it is answered 429 with ``Retry-After``, and the other key's calls go on.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pki import make_certs, tokens
from tests.agent import wire
from tests.plugins.agent import RPCStatusError, StartAgent, rpc_call
from tests.plugins.pki import TestPKI

SHARE = 20  # the agent's replay cache is made this small for the test; 100,000 per key by default


def test_a_key_that_fills_its_share_is_told_to_wait_and_the_other_key_goes_on(
    start_agent: StartAgent, tmp_path: Path
) -> None:
    root = tmp_path / "pki"
    argv = ["--out", str(root), "--agent", "localhost=localhost,127.0.0.1,::1", "--collector", "collector"]
    assert make_certs.main([*argv, "--collector", "backup"]) == 0
    pki = TestPKI(root)
    agent = start_agent(pki, security={"rate_limit": {"per_second": 1000, "burst": 1000}})
    server = agent.agent.server
    server.verifier.cache = tokens.ReplayCache(agent.config.security.max_clock_skew, capacity=SHARE)
    for _ in range(SHARE):  # "backup" uses its whole share (tokens dated ahead, as the attack did)
        assert rpc_call(agent, pki, "ping", key_id="backup", collector="backup") == "pong"
    with pytest.raises(RPCStatusError) as refused:
        rpc_call(agent, pki, "ping", key_id="backup", collector="backup")
    assert refused.value.status == 429
    assert int(refused.value.headers["Retry-After"]) >= 1
    record = wire.wait_for_record(agent, wire.event("rate_limited", reason="replay_capacity"))
    assert record["common_name"] == "backup" and record["key_id"] == "backup"
    # the honest collector is untouched, however full the other share is
    started = time.monotonic()
    for _ in range(SHARE):
        assert rpc_call(agent, pki, "ping") == "pong"
    assert time.monotonic() - started < 60  # a hang guard
    assert server.verifier.cache.held("collector") == SHARE and server.verifier.cache.held("backup") == SHARE
