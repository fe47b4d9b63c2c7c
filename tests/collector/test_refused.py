"""What storage refuses for the data itself is set aside, agent by agent; it never holds the spool (helper finding).

Found: the delivery treated a statement the store refused (a plain ``StorageError``: retrying fails the same
way) like an outage: it spooled the batch and replayed it, refused again, for ever, with every later batch of
every agent queued behind it. A forged audit record did exactly that until its validation was tightened; any
row validation lets through and MySQL refuses would do it again. The rows here are built past validation
(``model_construct``), standing for such a gap, and MariaDB is real.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_collector.refused import DIRECTORY
from secure_collector.sink import Delivery
from secure_collector.spool import Spool, decode
from storage.base import Batch, Store
from storage.config import StorageConfig
from storage.factory import open_store
from storage.models import AuditEntry, Sample
from tests.plugins.mariadb import MariaDBServer

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

T0 = 1_700_000_000.0
HASH = "ab" * 32


def sample(agent: str, ts: float = T0) -> Sample:
    return Sample.model_validate({"agent": agent, "timestamp": ts, "cpu_usage": 10.0})


def deep(agent: str, ts: float = T0) -> Sample:
    """A sample whose details nest deeper than MariaDB's JSON functions read (32): the ``details`` CHECK
    (``JSON_VALID``) refuses the row. The model takes it (no agent's answer nests so deep: the wire reader
    bounds depth first), so it stands for a gap between validation and storage that survives the spool."""
    nested: dict[str, object] = {"leaf": 1}
    for _ in range(40):
        nested = {"n": nested}
    return Sample.model_validate({"agent": agent, "timestamp": ts, "cpu_usage": 10.0, "extra": nested})


def poison(agent: str) -> AuditEntry:
    """A record MySQL refuses (``seq`` past BIGINT UNSIGNED), as a validation gap would let through."""
    return AuditEntry.model_construct(
        agent=agent, seq=2**64, hash=HASH, prev="0" * 64, time="", line='{"x":1}', new_copy=True, closes="",
        broke_at=None,
    )


@pytest.fixture
def store(mariadb: MariaDBServer) -> Iterator[Store]:
    mariadb.start()
    mariadb.reset_database()
    opened = open_store(StorageConfig.model_validate(mariadb.storage_section()))
    try:
        yield opened
    finally:
        opened.close()


def stored(store: Store, agent: str) -> list[float]:
    frame = store.query_samples(T0 - 10, T0 + 1000, agent=agent)
    return sorted(float(t) for t in frame["timestamp"])


def test_a_refused_part_is_set_aside_and_the_rest_is_stored(store: Store, tmp_path: Path) -> None:
    delivery = Delivery(store, Spool(tmp_path / "spool", 1024 * 1024))
    delivery.deliver(Batch(samples=(sample("good"), sample("bad")), audit=(poison("bad"),)))
    assert not delivery.backlog  # not spooled: retrying cannot help
    assert stored(store, "good") == [T0]
    assert stored(store, "bad") == [T0]  # its sample is stored; its audit record, which MySQL refuses, is aside
    kept = sorted((tmp_path / "spool" / DIRECTORY).iterdir())
    assert len(kept) == 1 and kept[0].stat().st_mode & 0o777 == 0o600
    aside = json.loads(kept[0].read_bytes())  # the spool's encoding (decode would validate the forged seq)
    assert aside["samples"] == [] and [e["seq"] for e in aside["audit"]] == [2**64]
    assert delivery.refused.count == 1
    delivery.deliver(Batch(samples=(sample("good", T0 + 30), sample("bad", T0 + 30))))
    assert stored(store, "good") == [T0, T0 + 30] and stored(store, "bad") == [T0, T0 + 30]  # nothing held up


def test_a_refused_batch_in_the_spool_no_longer_holds_the_batches_behind_it(store: Store, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 1024 * 1024)
    spool.append(Batch(samples=(sample("good"), deep("bad"))))  # spooled during an outage
    spool.append(Batch(samples=(sample("good", T0 + 30), sample("bad", T0 + 30))))
    delivery = Delivery(store, spool)
    assert delivery.backlog
    assert delivery.retry(force=True)  # the spool is empty: the refused part is aside, the rest stored
    assert stored(store, "good") == [T0, T0 + 30] and stored(store, "bad") == [T0 + 30]
    assert delivery.refused.count == 1
    (kept,) = (tmp_path / "spool" / DIRECTORY).iterdir()
    assert decode(kept.read_bytes()).samples == (deep("bad"),)  # whole, as it was spooled
