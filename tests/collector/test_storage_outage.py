"""Storage fails for a while during polling: everything waits in the spool and lands exactly once, in order."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pki import tokens
from secure_collector.alerts import AlertEngine
from secure_collector.config import Thresholds
from secure_collector.poller import Poller
from secure_collector.sink import Delivery, Recorder
from secure_collector.spool import Spool
from secure_collector.transport import AgentConnection
from storage.base import Batch
from storage.errors import StorageUnavailable
from storage.memory import MemoryStore
from storage.models import AuditTail
from tests.plugins.agent import StartAgent, client_context
from tests.plugins.pki import TestPKI


class OutageStore:
    """A test double of the environment: a MemoryStore behind a switch that fails chosen write calls.

    It counts how many times each sample key reached the real store, which MemoryStore's own dedup
    would otherwise hide: exactly-once means every count is 1.
    """

    def __init__(self, fail_calls: set[int]) -> None:
        self.inner = MemoryStore()
        self.fail_calls = fail_calls
        self.calls = 0
        self.delivered: Counter[tuple[str, float]] = Counter()
        self.order: list[float] = []
        self.attempted: set[tuple[str, float]] = set()

    def write(self, batch: Batch) -> None:
        self.calls += 1
        self.attempted.update((s.agent, s.timestamp) for s in batch.samples)
        if self.calls in self.fail_calls:
            raise StorageUnavailable("database is down (test)")
        self.inner.write(batch)
        for sample in batch.samples:
            self.delivered[(sample.agent, sample.timestamp)] += 1
            self.order.append(sample.timestamp)

    def audit_tails(self, agents: Sequence[str]) -> dict[str, AuditTail]:
        return self.inner.audit_tails(agents)

    def close(self) -> None:
        self.inner.close()


def _poller(test_pki: TestPKI, agent_port: int, store: OutageStore, spool: Spool) -> tuple[Poller, Delivery]:
    key = tokens.load_key(test_pki.collector_files()[2])
    connection = AgentConnection("localhost", "127.0.0.1", agent_port, client_context(test_pki), "collector", key)
    # no replay delay, so that the recovery happens within the bounded run
    delivery = Delivery(store, spool, retry_min=0.0, retry_max=0.0)
    recorder = Recorder(delivery, AlertEngine(Thresholds()))
    return Poller([connection], recorder, poll_interval=0.1, max_workers=2), delivery


def test_outage_during_polling_loses_and_duplicates_nothing(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki, security={"rate_limit": {"per_second": 1000, "burst": 1000}})
    # write calls 2-4 fail (outage during polling), 6 fails again in the middle of the replay
    store = OutageStore(fail_calls={2, 3, 4, 6})
    spool = Spool(tmp_path / "spool", 1024 * 1024 * 8)
    poller, delivery = _poller(test_pki, agent.port, store, spool)
    runner = threading.Thread(target=poller.run, kwargs={"max_sweeps": 8})
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive()
    poller.close()
    assert delivery.retry(force=True)  # whatever the last failure left behind
    assert delivery.spooled_batches >= 2
    assert store.calls > 8  # failures really happened and were retried
    assert len(store.attempted) == 8  # one sample per sweep
    assert set(store.delivered) == store.attempted
    assert set(store.delivered.values()) == {1}
    assert store.order == sorted(store.order)  # replayed in order, before anything newer
    assert spool.pending_bytes() == 0
    statuses = pd.DataFrame([s.model_dump() for s in store.inner.statuses])
    assert len(statuses) == 8 and set(statuses["state"]) == {"up"}
