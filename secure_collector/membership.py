"""``--shard auto``: collectors that share a MySQL store split the agents among the live ones, and fail over.

Each collector renews a lease in the ``collectors`` table once per poll interval (the database's clock, so
the collectors' clocks need not agree) and polls the agents that rendezvous hashing assigns it over the
members whose lease has not run out. When a member stops renewing (killed, partitioned), its agents go to
the others within the lease plus one interval, and are back-filled from the agents' buffers where the
back-fill cursors it saved in the same database stood, and their audit trails go on from where the shared
central copies end (read again); when it returns, it takes its share back (the
others see it at their next renewal: at most one sweep polls an agent twice, and storage is idempotent).
A collector that cannot reach the database keeps the split it last knew and says so.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from secure_collector.audittrail import AuditTrail
from secure_collector.backfill import Backfill
from storage.errors import StorageError

logger = logging.getLogger(__name__)


class Coordinator(Protocol):
    """What membership needs of the MySQL store (:class:`storage.mysql.MySQLStore`)."""

    def heartbeat(self, member: str, lease: float) -> list[str]: ...

    def leave(self, member: str) -> None: ...

    def backfill_cursors(self, agents: Sequence[str]) -> dict[str, int]: ...

    def save_backfill_cursors(self, cursors: dict[str, int]) -> None: ...


def member_name(spool_dir: object) -> str:
    """This collector among the others: its host and its spool_dir (each collector has its own)."""
    digest = hashlib.sha256(str(spool_dir).encode()).hexdigest()[:12]
    return f"{socket.gethostname()[:150]}:{digest}"


def owner(agent: str, members: Sequence[str]) -> str:
    """The member that rendezvous (highest random weight) hashing gives ``agent``."""
    return max(members, key=lambda member: hashlib.sha256(f"{member}\x00{agent}".encode()).digest())


class Membership:
    """Which agents this collector polls now."""

    def __init__(
        self,
        coordinator: Coordinator,
        member: str,
        agents: Sequence[str],
        lease: float,
        backfill: Backfill | None = None,
        *,
        audit: AuditTrail | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.coordinator = coordinator
        self.member = member
        self.agents = tuple(agents)
        self.lease = lease
        self.backfill = backfill
        self.audit = audit
        self._clock = clock
        self.live: tuple[str, ...] = (member,)
        self.owned: frozenset[str] = frozenset()
        self._renewed: float | None = None

    def owns(self, agent: str) -> bool:
        return agent in self.owned

    def refresh(self) -> None:
        """Renew the lease and recompute the split; agents newly taken over resume their back-fill."""
        try:
            live = tuple(self.coordinator.heartbeat(self.member, self.lease))
        except StorageError as exc:
            logger.warning("shard auto: cannot renew the lease (%s); keeping its %d agents", exc, len(self.owned))
            return
        taken_over = self._renewed is not None  # agents gained at the first renewal are simply this one's
        self._renewed = self._clock()
        if self.member not in live:  # our own row was just written: only a clock jump on the server hides it
            live = tuple(sorted({*live, self.member}))
        owned = frozenset(agent for agent in self.agents if owner(agent, live) == self.member)
        gained = sorted(owned - self.owned)
        if live != self.live or owned != self.owned:
            logger.info(
                "shard auto: %d live collectors (%s); polling %d of %d agents",
                len(live), ", ".join(live), len(owned), len(self.agents),
            )
        self.live, self.owned = live, owned
        if gained and taken_over and self.audit is not None:
            # another collector may have copied their audit trails since this one last read where the shared
            # copies end: going on from there would ask the agents for records they may have deleted (a gap)
            self.audit.resync(gained)
        if gained and self.backfill is not None and self._renewed is not None:
            try:
                cursors = self.coordinator.backfill_cursors(gained)
            except StorageError as exc:
                logger.warning("shard auto: cannot read where the back-fill of %d agents stands (%s)", len(gained), exc)
                return
            self.backfill.load(cursors)  # a gap: fetched at each one's next good poll

    def close(self) -> None:
        """Leave at once, so the others take the agents over without waiting for the lease."""
        try:
            self.coordinator.leave(self.member)
        except StorageError as exc:
            logger.warning("shard auto: cannot leave (%s); the others take over when the lease runs out", exc)


class DatabaseCursors:
    """The back-fill cursors in the shared database, so the collector taking an agent over resumes them."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._saved: dict[str, int] = {}

    def load(self) -> dict[str, int]:
        return {}  # each agent's cursor is read when this collector starts to own it (Membership.refresh)

    def save(self, state: dict[str, int]) -> None:
        changed = {agent: seq for agent, seq in state.items() if self._saved.get(agent) != seq}
        if not changed:
            return
        try:
            self.coordinator.save_backfill_cursors(changed)
        except StorageError as exc:
            logger.warning("shard auto: cannot save the back-fill cursors (%s)", exc)
            return
        self._saved.update(changed)
