"""MemoryStore keeps the Store promises, and can play an outage for the collector's spool tests."""

from __future__ import annotations

import importlib
import inspect

import pytest

from storage import SAMPLE_COLUMNS, AgentStatus, Alert, Batch, Sample, StorageUnavailable
from storage.base import Store
from storage.memory import MemoryStore

T0 = 1_700_000_000.0


def test_first_write_of_a_key_wins_and_frames_have_the_contract_columns() -> None:
    store = MemoryStore()
    first = Sample(agent="web-1", timestamp=T0, cpu_usage=1.0)
    store.write(Batch(samples=[first, Sample(agent="web-1", timestamp=T0, cpu_usage=2.0)]))
    store.write(Batch(alerts=[Alert(agent="web-1", timestamp=T0, metric="cpu_usage", severity="info")] * 2))
    store.write(Batch(statuses=[AgentStatus(agent="web-1", timestamp=T0, state="up")] * 2))
    assert store.samples == (first,)
    assert len(store.alerts) == 1 and len(store.statuses) == 1
    frame = store.query_samples(T0, T0, agent="web-1")
    assert tuple(frame.columns) == SAMPLE_COLUMNS
    assert frame["cpu_usage"].tolist() == [1.0]
    assert store.writes == 3


def test_an_outage_refuses_writes_and_reads_until_it_ends() -> None:
    store = MemoryStore()
    store.set_available(False)
    with pytest.raises(StorageUnavailable):
        store.write(Batch(samples=[Sample(agent="web-1", timestamp=T0)]))
    with pytest.raises(StorageUnavailable):
        store.query_samples(0, T0)
    store.set_available(True)
    store.write(Batch(samples=[Sample(agent="web-1", timestamp=T0)]))
    assert len(store.query_samples(0, T0)) == 1
    store.close()
    with pytest.raises(StorageUnavailable, match="closed"):
        store.write(Batch())



@pytest.mark.parametrize(
    "backend", ["storage.memory.MemoryStore", "storage.file.FileStore", "storage.mysql.MySQLStore"]
)
def test_every_backend_has_the_store_methods_with_their_signatures(backend: str) -> None:
    module, name = backend.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    for method in ("write", "query_samples", "query_alerts", "query_statuses", "close"):
        expected = inspect.signature(getattr(Store, method))
        assert inspect.signature(getattr(cls, method)) == expected, method
