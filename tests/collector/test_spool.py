"""The spool: durable, ordered, bounded, resumable; and Delivery's ordering around it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secure_collector.errors import SpoolError
from secure_collector.sink import Delivery
from secure_collector.spool import Spool
from storage.base import Batch
from storage.errors import StorageUnavailable
from storage.memory import MemoryStore
from storage.models import AgentStatus, Alert, Sample

MB = 1024 * 1024


def _batch(n: int, agents: int = 1) -> Batch:
    samples = tuple(Sample(agent=f"a{i}", timestamp=float(n), cpu_usage=float(n % 100)) for i in range(agents))
    statuses = tuple(AgentStatus(agent=f"a{i}", timestamp=float(n), state="up") for i in range(agents))
    alerts = (Alert(agent="a0", timestamp=float(n), metric="cpu_usage", value=1.0, severity="warning"),)
    return Batch(samples, alerts, statuses)


class Recording:
    def __init__(self, fail_at: set[int] | None = None) -> None:
        self.batches: list[Batch] = []
        self.fail_at = fail_at or set()
        self.calls = 0

    def write(self, batch: Batch) -> None:
        self.calls += 1
        if self.calls in self.fail_at:
            raise StorageUnavailable("down (test)")
        self.batches.append(batch)

    def close(self) -> None:
        pass

    @property
    def timestamps(self) -> list[float]:
        return [s.timestamp for b in self.batches for s in b.samples]


def test_replay_in_order_survives_a_restart(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 8 * MB)
    for n in range(5):
        spool.append(_batch(n))
    spool.close()
    assert oct(os.stat(tmp_path / "spool").st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in (tmp_path / "spool").glob("*.spool"))
    reopened = Spool(tmp_path / "spool", 8 * MB)  # a new process
    assert reopened.pending_bytes() > 0
    store = Recording()
    assert reopened.replay(store.write) == 5
    assert store.timestamps == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [a.timestamp for b in store.batches for a in b.alerts] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert reopened.pending_bytes() == 0 and not list((tmp_path / "spool").glob("*.spool"))


def test_failed_replay_resumes_at_the_cursor_without_repeats(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 64 * MB)
    for n in range(30):
        spool.append(_batch(n, agents=100))  # 100 samples a batch: replay writes chunks of about 1000
    store = Recording(fail_at={2})
    with pytest.raises(StorageUnavailable):
        spool.replay(store.write)
    first = list(store.timestamps)
    assert first and len(first) < 3000
    spool.append(_batch(30, agents=100))
    spool.replay(store.write)
    assert sorted(set(store.timestamps)) == [float(n) for n in range(31)]
    assert len(store.timestamps) == 31 * 100  # nothing written twice
    assert store.timestamps == sorted(store.timestamps)


def test_bounded_drops_the_oldest_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool", 1 * MB, segment_bytes=64 * 1024)
    big = 0
    while spool.dropped_batches == 0:
        spool.append(_batch(big, agents=20))
        big += 1
        assert big < 10_000
    assert spool.pending_bytes() <= 1 * MB
    store = Recording()
    spool.replay(store.write)
    kept = sorted({s.timestamp for b in store.batches for s in b.samples})
    assert kept[-1] == float(big - 1)  # the newest survive
    assert kept[0] > 0.0  # the oldest went
    assert "spool full" in caplog.text


def test_torn_last_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path / "spool", 8 * MB)
    spool.append(_batch(1))
    spool.append(_batch(2))
    spool.close()
    segment = next((tmp_path / "spool").glob("*.spool"))
    with open(segment, "ab") as handle:
        handle.write(b'{"v":1,"samples":[{"agent":"a0"')  # a crash mid-write
    store = Recording()
    assert Spool(tmp_path / "spool", 8 * MB).replay(store.write) == 2
    assert store.timestamps == [1.0, 2.0]
    assert "torn" in caplog.text


def test_unusable_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SpoolError, match="file"):
        Spool(tmp_path / "file" / "spool", MB)


def test_delivery_keeps_order_across_an_outage(tmp_path: Path) -> None:
    store = MemoryStore()
    now = [0.0]
    delivery = Delivery(store, Spool(tmp_path / "spool", 8 * MB), retry_min=5, retry_max=5, clock=lambda: now[0])
    delivery.deliver(_batch(0))
    store.set_available(False)
    delivery.deliver(_batch(1))
    assert delivery.backlog
    store.set_available(True)
    delivery.deliver(_batch(2))  # retry time not come: goes behind batch 1 in the spool
    assert [s.timestamp for s in store.samples] == [0.0]
    now[0] = 6.0
    delivery.deliver(_batch(3))
    assert [s.timestamp for s in store.samples] == [0.0, 1.0, 2.0, 3.0]
    assert not delivery.backlog and delivery.stored_batches == 1
    assert delivery.retry(force=True)
