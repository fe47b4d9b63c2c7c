"""An idle agent's accept thread sleeps: no periodic wake-ups, and audit syncs only when records wait."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from secure_agent.audit import PENDING_SYNC_DELAY
from tests.plugins.agent import StartAgent, connect, rpc_call
from tests.plugins.pki import TestPKI

WINDOW = 0.6  # seconds of idleness observed: the old accept loop woke 6 times in it


def _switches(thread: threading.Thread) -> int:
    """Voluntary context switches of ``thread`` so far (each is a sleep it woke from)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("voluntary_ctxt_switches:"))
    return int(line.split()[1])


def _accept_thread() -> threading.Thread:
    return next(thread for thread in threading.enumerate() if thread.name == "agent-accept")


def test_idle_accept_thread_does_not_wake(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, server={"audit_sync_interval": 0})  # every record synced as written
    assert rpc_call(agent, test_pki, "ping") == "pong"
    assert agent.agent.server.wait_idle(5.0)
    assert agent.agent.audit.sync_due() is None
    thread = _accept_thread()
    before = _switches(thread)
    threading.Event().wait(WINDOW)  # a window of idleness to observe, not a synchronisation
    assert _switches(thread) - before <= 1  # at most a straggling wake-up, never one per tick


def test_pending_records_are_synced_when_due(
    start_agent: StartAgent, test_pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a long sync interval: pending records are still synced PENDING_SYNC_DELAY after they were written
    agent = start_agent(test_pki, server={"audit_sync_interval": 30})
    audit = agent.agent.audit
    synced = threading.Event()
    real_sync = audit.sync

    def observed_sync() -> None:  # the real sync, observed
        real_sync()
        synced.set()

    monkeypatch.setattr(audit, "sync", observed_sync)
    connection = connect(agent, test_pki)
    try:
        for _ in range(3):
            assert rpc_call(agent, test_pki, "ping", connection=connection) == "pong"
        due = audit.sync_due()
        assert due is None or due <= PENDING_SYNC_DELAY
        # the accept loop wakes for the pending sync by itself: no new connection arrives meanwhile
        assert synced.wait(5.0)
        assert audit.sync_due() is None
    finally:
        connection.close()
