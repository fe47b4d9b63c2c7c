"""Issue 15: a short write to the spool lost batches after the disk recovered.

``Spool.append`` ignored how many bytes ``os.write`` wrote: when the disk filled mid-line the fragment
stayed, the batch counted as spooled, the next batch was glued onto the fragment and replay threw the joined
line away. Now a batch is written whole or cut back, and refused (counted); after the disk has room again,
every batch the spool took is replayed exactly once. On a real small tmpfs (root; skipped otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytest

from secure_collector.errors import SpoolError
from secure_collector.sink import Delivery
from secure_collector.spool import Spool
from storage.base import Batch
from storage.errors import StorageUnavailable
from storage.models import AuditTail, Sample
from tests.collector.test_spool import Recording
from tests.plugins.disk import fill_up

MB = 1024 * 1024


def _batch(n: int) -> Batch:
    # about 2 KB a batch: a few fill the last free block mid-line
    samples = tuple(Sample(agent=f"a{i}", timestamp=float(n), cpu_usage=float(i)) for i in range(8))
    return Batch(samples)


class Down:
    """Storage that is down until told otherwise."""

    def __init__(self) -> None:
        self.up = False
        self.written: list[Batch] = []

    def write(self, batch: Batch) -> None:
        if not self.up:
            raise StorageUnavailable("down (test)")
        self.written.append(batch)

    def audit_tails(self, agents: Sequence[str]) -> dict[str, AuditTail]:
        return {}

    def close(self) -> None:
        pass


def test_a_full_disk_mid_batch_loses_only_the_refused_batches_and_replays_the_rest_once(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(small_disk / "spool", MB, segment_bytes=64 * 1024)
    filler = fill_up(small_disk, leave=9000)
    taken, refused = [], []
    for n in range(18):  # the 18 answers with data
        try:
            spool.append(_batch(n))
            taken.append(n)
        except SpoolError:
            refused.append(n)
    assert taken and refused  # the disk filled in the middle of the run
    filler.unlink()  # the disk recovers
    for n in range(18, 21):
        spool.append(_batch(n))
        taken.append(n)
    replayed = Recording()
    with caplog.at_level(logging.WARNING, logger="secure_collector.spool"):
        spool.replay(replayed.write)
    stamps = sorted({s.timestamp for b in replayed.batches for s in b.samples})
    assert stamps == [float(n) for n in taken]  # every batch the spool took, once; none of the refused
    assert sum(len(b.samples) for b in replayed.batches) == 8 * len(taken)
    assert not [r for r in caplog.records if "unreadable" in r.getMessage() or "torn" in r.getMessage()]
    spool.close()


def test_delivery_counts_what_neither_storage_nor_the_spool_could_take(
    small_disk: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = Down()
    delivery = Delivery(store, Spool(small_disk / "spool", MB, segment_bytes=64 * 1024))
    filler = fill_up(small_disk, leave=9000)
    with caplog.at_level(logging.ERROR, logger="secure_collector.sink"):
        for n in range(18):
            delivery.deliver(_batch(n))
    assert delivery.lost_batches > 0 and delivery.spooled_batches + delivery.lost_batches == 18
    assert any(f"({delivery.lost_batches} batches lost so far)" in r.getMessage() for r in caplog.records)
    filler.unlink()
    store.up = True
    assert delivery.retry(force=True)
    assert len(store.written) and sum(len(b.samples) for b in store.written) == 8 * delivery.spooled_batches
