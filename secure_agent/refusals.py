"""Audit records of refusals, within one global budget, and summaries of what went over it.

Anyone who can reach the port can make the agent refuse something, and a certificate that is revoked,
not allowed, or lacks the HMAC key can do it as fast as it reconnects. One record per refusal would let
them write to our disk at line rate and push the record of served calls out of the rotated segments.
So refusal records are rationed:

- one **global** token bucket (``audit_refusals.burst`` records at once, ``per_second`` after that) for
  every refusal of every source together, so the disk a flood costs is bounded however many addresses
  it comes from (a /64 of IPv6 gives anyone millions);
- within it, one small bucket per **source** (``per_source_burst``, ``per_source_per_second``), so one
  source cannot spend the whole budget and hide the others: before a client is identified the source is
  its network (the /24 of an IPv4 address, the /64 of an IPv6 one, :func:`source_of`), afterwards the
  SHA-256 fingerprint of its certificate.

What goes over is never dropped: it is counted per (source, refusal) with the first and last time and
written as ``refusals_suppressed`` records ``summary_interval`` seconds after the first refusal counted
(the server's accept loop asks :meth:`RefusalRecorder.due` how long it may sleep, and is woken through
:meth:`RefusalRecorder.set_waker` when counting starts: an idle agent never wakes) and at stop. At most
:data:`MAX_GROUPS` groups of networks and as many of certificates are counted between two summaries (later
sources fold into one ``*`` group) and at most :data:`MAX_SUMMARY_RECORDS` records are written per summary,
certificates before networks, the largest groups first, the rest (and the ``*`` group) folded into one ``*``
record with the number of groups in ``sources``: summaries are bounded too, at most 33 records per
``summary_interval`` (10 s at the least).
Certificates go first because anyone can refuse from as many networks as they like (an IPv6 /48 holds
65,536 /64s), but only our CA makes certificates: a network flood cannot fold a certificate's refusals away.

Served calls, start, stop and reload records do not come through here: nothing limits them but the
rate limit of admitted clients.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from secure_agent.audit import AuditLog
from secure_agent.audit_record import utc_timestamp
from secure_agent.errors import AuditError
from secure_agent.ratelimit import RateLimiter

logger = logging.getLogger(__name__)

SUMMARY_EVENT = "refusals_suppressed"
MAX_GROUPS = 4096  # (source, refusal) pairs counted between two summaries; then one "*" group
MAX_SUMMARY_RECORDS = 32  # records per summary: the largest groups; the rest in one "*" record
MAX_SOURCES = 10_000  # per-source buckets kept (least recently used dropped: a new source starts full)
OTHERS = "*"


def source_of(host: str) -> str:
    """The network a refusal before authentication is counted under: ``192.0.2.0/24``, ``2001:db8::/64``.

    An IPv4-mapped IPv6 address counts as the IPv4 address it carries; text that is no address counts as itself.
    """
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


@dataclass
class _Group:
    count: int
    first: float
    last: float
    sample: dict[str, object] = field(default_factory=dict)  # peer / common name of the last one
    folded: int = 1  # groups folded into this one (for "*")
    identified: bool = False  # the source is a certificate's fingerprint, not a network

    def add(self, other: _Group) -> None:
        self.count += other.count
        self.first = min(self.first, other.first)
        self.last = max(self.last, other.last)
        self.folded += other.folded


@dataclass(frozen=True)
class Budget:
    burst: int = 100
    per_second: float = 1.0
    per_source_burst: int = 10
    per_source_per_second: float = 0.1
    summary_interval: float = 60.0


class RefusalRecorder:
    """Writes refusal records within the budget and summarises the rest. Thread-safe."""

    def __init__(
        self,
        audit: AuditLog,
        budget: Budget = Budget(),
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._audit = audit
        self.budget = budget
        self._wall = wall
        self._global = RateLimiter(budget.per_second, budget.burst, max_clients=1, clock=clock)
        self._sources = RateLimiter(
            budget.per_source_per_second, budget.per_source_burst, max_clients=MAX_SOURCES, clock=clock
        )
        self._lock = threading.Lock()
        self._clock = clock
        self._groups: dict[tuple[str, str], _Group] = {}
        self._sizes = {False: 0, True: 0}  # named groups of networks (False) and of certificates (True)
        self._due: float | None = None  # when the next summary is due (monotonic), while anything is counted
        self._waker: Callable[[], None] | None = None
        self.written = 0
        self.counted = 0
        self._closing = False

    def refuse(self, source: str, event: str, reason: str | None, fields: Mapping[str, object]) -> bool:
        """Record one refusal of ``source``, or count it for the next summary; True when it was written.

        While the log cannot be written (a full disk) refusals are counted for the summary, which keeps who
        was refused, rather than tried one by one (the log would count them by event only).
        """
        if self._audit.broken is None and self._sources.take(source).allowed and self._global.take("").allowed:
            try:
                self._audit.record(event, "refused", reason=reason, **fields)
            except AuditError as exc:  # the log counts what it could not write, and says so when it can
                logger.error("%s", exc)
                return False
            self.written += 1
            return True
        self._count(source, f"{event}/{reason}" if reason else event, fields)
        return False

    def _count(self, source: str, refusal: str, fields: Mapping[str, object]) -> None:
        now = self._wall()
        sample = {key: fields[key] for key in ("peer", "common_name") if fields.get(key) is not None}
        with self._lock:
            self.counted += 1
            identified = source == fields.get("fingerprint")
            key = (source, refusal)
            group = self._groups.get(key)
            if group is None and self._sizes[identified] >= MAX_GROUPS:
                key = (OTHERS, refusal)
                group = self._groups.get(key)
            if group is None:
                self._groups[key] = _Group(1, now, now, sample, identified=identified and key[0] != OTHERS)
                self._sizes[identified] += key[0] != OTHERS
            else:
                group.count += 1
                group.last = now
                group.sample = sample
            starting = self._due is None
            if starting:
                self._due = self._clock() + self.budget.summary_interval
            waker = self._waker
        if self._closing:  # a connection that outlived the stop: no summary will come, so write it now
            self.flush()
        elif starting and waker is not None:
            waker()  # whoever sleeps until the next thing due should know about this one

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """``waker()`` (it must not block) is called when a summary becomes due later."""
        with self._lock:
            self._waker = waker

    def due(self) -> float | None:
        """Seconds until the next summary is due (0: now), or None when nothing is counted."""
        due = self._due
        return None if due is None else max(0.0, due - self._clock())

    def flush_if_due(self) -> None:
        if self.due() == 0.0:
            self.flush()

    def flush(self) -> None:
        """Write the summary records of everything counted since the last summary.

        What cannot be written (the log is broken: a full disk) is counted on and written with the next
        summary, once the log works again; never dropped while the agent runs.
        """
        with self._lock:
            groups, self._groups = self._groups, {}
            self._sizes = {False: 0, True: 0}
            self._due = None
        if not groups:
            return
        named = [(key, group) for key, group in groups.items() if key[0] != OTHERS]
        named.sort(key=lambda item: (not item[1].identified, -item[1].count, item[0]))
        kept, rest = named[:MAX_SUMMARY_RECORDS], named[MAX_SUMMARY_RECORDS:]
        rest += [(key, group) for key, group in groups.items() if key[0] == OTHERS]  # folded when counted
        summaries: list[tuple[str, str, _Group]] = [(source, refusal, group) for (source, refusal), group in kept]
        if rest:
            folded = _Group(0, rest[0][1].first, rest[0][1].last, folded=0)
            kinds = {refusal for (_, refusal), _ in rest}
            for _, group in rest:
                folded.add(group)
            summaries.append((OTHERS, kinds.pop() if len(kinds) == 1 else OTHERS, folded))
        for written, (source, refusal, group) in enumerate(summaries):
            if self._audit.broken is not None:
                self._keep(summaries[written:])
                return
            try:
                self._audit.record(
                    SUMMARY_EVENT,
                    "refused",
                    source=source,
                    refusal=refusal,
                    count=group.count,
                    first=utc_timestamp(group.first),
                    last=utc_timestamp(group.last),
                    sources=group.folded if source == OTHERS else None,
                    **group.sample,
                )
            except AuditError as exc:  # counted by the log as a record not written; its counts are kept here
                logger.error("%s", exc)
                self._keep(summaries[written:])
                return

    def _keep(self, summaries: list[tuple[str, str, _Group]]) -> None:
        """Count ``summaries`` (not written) on, for the next summary."""
        with self._lock:
            for source, refusal, group in summaries:
                kept = self._groups.get((source, refusal))
                if kept is None:
                    self._groups[(source, refusal)] = group
                    self._sizes[group.identified] += source != OTHERS
                else:  # counted since: one group still (``folded`` counts sources only for "*")
                    kept.count += group.count
                    kept.first, kept.last = min(kept.first, group.first), max(kept.last, group.last)
                    kept.folded += group.folded if source == OTHERS else 0
            if self._due is None:
                self._due = self._clock() + self.budget.summary_interval
            if self._closing:
                lost = ", ".join(f"{source} {refusal} x{group.count}" for source, refusal, group in summaries)
                logger.error("refusal summaries that could not be written before the stop: %s", lost)

    def close(self) -> None:
        """Write what is still counted (at stop); from now on a refusal over the budget is summarised at once
        (a connection cut at the stop may still refuse), or logged when the log cannot take it."""
        self.set_waker(None)
        self._closing = True
        self.flush()
