"""What storage refuses (not an outage: the data itself) is set aside, agent by agent, instead of blocking the spool.

Storage says which failures retrying can fix: :class:`~storage.errors.StorageUnavailable` (the database is
down, the disk full) and :class:`~storage.errors.StorageConfigError` (credentials, a read-only store) are spooled
and retried; a plain :class:`~storage.errors.StorageError` is a statement the store refused for what the batch
holds, which fails the same way every time. Spooled and retried, one such batch would hold every batch behind
it, from every agent, for ever: one row a hostile agent got past validation would stop storage for the fleet.

So a refused batch is written again agent by agent, and a part the store still refuses row by row (an
agent's audit records together: they are a chain); what the store still refuses is written to
``<spool_dir>/refused/`` (the spool's own encoding, one file each, mode 0600), counted and logged with its
counts and the store's reason, and never retried. Everything else is stored as usual.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pki.files import PRIVATE_MODE, write_atomic
from secure_collector.spool import encode
from storage.base import Batch
from storage.escape import escape

logger = logging.getLogger(__name__)

DIRECTORY = "refused"


def items(part: Batch) -> Iterator[Batch]:
    """One agent's part as single rows (samples, alerts, statuses), then its audit records together (they
    are a chain: each is placed after the one before it)."""
    for sample in part.samples:
        yield Batch(samples=(sample,))
    for alert in part.alerts:
        yield Batch(alerts=(alert,))
    for status in part.statuses:
        yield Batch(statuses=(status,))
    if part.audit:
        yield Batch(audit=part.audit)


def by_agent(batch: Batch) -> Iterator[tuple[str, Batch]]:
    """``batch`` split into one batch per agent (in the order agents first appear), each keeping its order."""
    agents = dict.fromkeys(
        item.agent for part in (batch.samples, batch.alerts, batch.statuses, batch.audit) for item in part
    )
    for agent in agents:
        yield agent, Batch(
            samples=tuple(s for s in batch.samples if s.agent == agent),
            alerts=tuple(a for a in batch.alerts if a.agent == agent),
            statuses=tuple(s for s in batch.statuses if s.agent == agent),
            audit=tuple(e for e in batch.audit if e.agent == agent),
        )


class SetAside:
    """The parts of batches storage refused, kept in ``directory`` for the operator. Thread-safe."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.count = 0  # parts set aside (or lost, when even that failed: logged)
        self._lock = threading.Lock()

    def keep(self, agent: str, part: Batch, reason: str) -> Path | None:
        """Write ``part`` aside and log it; the file, or None when it could not be written (logged too)."""
        with self._lock:
            self.count += 1
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            path = self.directory / f"{stamp}-{self.count:06d}-{os.getpid()}.spool"
            what = (
                f"{len(part.samples)} samples, {len(part.alerts)} alerts, {len(part.statuses)} statuses, "
                f"{len(part.audit)} audit records"
            )
            try:
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                if not write_atomic(path, encode(part), mode=PRIVATE_MODE):
                    raise FileExistsError(f"{path} exists")  # never written over: another part's evidence
            except (OSError, ValueError) as exc:
                logger.error(
                    "storage refused %s's part of a batch (%s): %s; it could not be set aside either (%s): lost",
                    escape(agent), what, escape(reason), exc,
                )
                return None
            logger.error(
                "storage refused %s's part of a batch (%s): %s; set aside in %s, not retried (the rest is stored)",
                escape(agent), what, escape(reason), path,
            )
            return path
