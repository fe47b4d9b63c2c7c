"""Where poll results go: alerts, then storage, or the spool while storage is down.

:class:`Delivery` keeps order: once anything is spooled, later batches are spooled behind it until a
replay has emptied the spool, so storage always receives batches in the order they were made. Replays
are retried with a capped exponential delay, not on every sweep, so a dead database is not hammered.

:class:`Recorder` turns :class:`PollResult` records into samples, statuses, alerts and audit records (one
:class:`~secure_collector.alerts.AlertEngine`, used by one thread), batches them per sweep, hands the
alerts to ``alert_command``'s durable outbox (:mod:`.hook`), delivers the batch, and then saves what is
firing (:mod:`.alertstate`) if that changed, so a restart does not fire it again. An alert that the state
file records as firing has therefore been stored (or spooled) and written to the outbox, from which it
is removed only once the command exited 0: "notified" means exactly that. An agent whose ``audit_chain``
alert is firing is stored as ``audit_broken`` while it answers.

Storage keeps every alert, up to :data:`STORED_PER_POLL` per agent and poll; beyond that bound (a flood
of fresh findings), the most severe are kept and the rest become one counted ``alert_summary`` record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple, Protocol

from pki.validity import days_left
from secure_collector.alerts import AUDIT_CHAIN, AlertEngine
from secure_collector.alertstate import AlertState
from secure_collector.audittrail import AuditOutcome, AuditTrail
from secure_collector.backfill import Backfill, BackfillOutcome
from secure_collector.errors import SpoolError
from secure_collector.expiry import OwnMaterial
from secure_collector.hook import AlertHook, storage_summary
from secure_collector.outbox import SEVERITY_RANK
from secure_collector.refused import DIRECTORY as REFUSED_DIRECTORY
from secure_collector.refused import SetAside, by_agent, items
from secure_collector.spool import Spool
from storage.base import Batch, Store
from storage.errors import StorageConfigError, StorageError, StorageUnavailable
from storage.escape import escape
from storage.models import AgentState, AgentStatus, Alert, AuditEntry, AuditTail, Sample

logger = logging.getLogger(__name__)

RETRY_MIN = 1.0
RETRY_MAX = 30.0
STORED_PER_POLL = 64
"""Alerts of one agent stored one by one per poll (an honest poll raises at most a dozen or so)."""
DEFAULT_AUDIT_HOLD = 86_400.0


class PollResult(NamedTuple):
    """The outcome of one poll of one agent."""

    agent: str
    timestamp: float
    state: AgentState
    detail: str
    latency_ms: float
    sample: Sample | None = None
    retry_after: float | None = None
    audit: AuditOutcome | None = None  # what this sweep fetched of the agent's audit trail
    backfill: BackfillOutcome | None = None  # samples the agent buffered while the collector missed them


class CursorStore(Protocol):
    """Where the back-fill cursors are kept: ``spool_dir`` (BackfillState), or the shared database."""

    def save(self, state: dict[str, int]) -> None: ...


class Observer(Protocol):
    """Told each poll's outcome as recorded (the exporter's :meth:`~secure_collector.exporter.FleetView.observe`)."""

    def __call__(
        self,
        agent: str,
        polled: float,
        state: str,
        latency_ms: float,
        sample: Sample | None,
        firing: Mapping[str, str],
        /,
    ) -> None: ...


class BatchWriter(Protocol):
    """The part of :class:`storage.base.Store` that delivery needs."""

    def write(self, batch: Batch) -> None: ...

    def audit_tails(self, agents: Sequence[str]) -> dict[str, AuditTail]: ...

    def close(self) -> None: ...


class LazyStore:
    """Opens the real store on first use and again after opening failed, so the collector can start
    (and spool) while the database is still down."""

    def __init__(self, opener: Callable[[], Store]) -> None:
        self._opener = opener
        self._store: Store | None = None

    def write(self, batch: Batch) -> None:
        if self._store is None:
            self._store = self._opener()
        self._store.write(batch)

    def audit_tails(self, agents: Sequence[str]) -> dict[str, AuditTail]:
        if self._store is None:
            self._store = self._opener()
        return self._store.audit_tails(agents)

    def current(self) -> Store:
        """The real store, opened when it is not yet (raises what opening raises)."""
        if self._store is None:
            self._store = self._opener()
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class Delivery:
    """Writes batches to the store, spooling them (in order) whenever it cannot. Thread-safe."""

    def __init__(
        self,
        store: BatchWriter,
        spool: Spool,
        *,
        retry_min: float = RETRY_MIN,
        retry_max: float = RETRY_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.spool = spool
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._clock = clock
        self._delay = retry_min
        self._next_retry = 0.0
        self._spooled = bool(spool)
        self._lock = threading.Lock()
        self.stored_batches = 0
        self.spooled_batches = 0
        self.lost_batches = 0  # neither storage nor the spool could take them: logged with the count
        self.refused = SetAside(spool.directory / REFUSED_DIRECTORY)  # what storage refuses: set aside
        self.on_loss: Callable[[], None] | None = None  # told when batches were lost here or in the spool
        self._losses = self._lost()

    def _lost(self) -> int:
        """Batches not in storage for good: refused by the spool, dropped or unreadable in it, or refused by
        storage itself (set aside)."""
        return self.lost_batches + self.spool.dropped_batches + self.refused.count

    @property
    def backlog(self) -> bool:
        """True while something waits in the spool."""
        return self._spooled

    def deliver(self, batch: Batch) -> None:
        """Store ``batch`` now, or spool it behind what is already waiting."""
        if not batch:
            return
        with self._lock:
            try:
                if self._spooled:
                    self._spool(batch)
                    self._replay(force=False)
                    return
                try:
                    self._write(batch)
                    self.stored_batches += 1
                except StorageError as exc:
                    logger.warning("storage unavailable (%s); spooling to %s", exc, self.spool.directory)
                    self._spool(batch)
                    self._schedule_retry()
            finally:
                self._tell_losses()

    def retry(self, *, force: bool = False) -> bool:
        """Replay the spool if its retry time has come (or ``force``); True when the spool is empty."""
        with self._lock:
            try:
                if self._spooled:
                    self._replay(force=force)
                return not self._spooled
            finally:
                self._tell_losses()

    def _tell_losses(self) -> None:
        lost = self._lost()
        if lost != self._losses:
            self._losses = lost
            if self.on_loss is not None:
                self.on_loss()

    def _write(self, batch: Batch) -> None:
        """Store ``batch``; raise what retrying can fix (:mod:`.refused`: the rest is set aside, agent by agent)."""
        try:
            self.store.write(batch)
        except (StorageUnavailable, StorageConfigError):
            raise
        except StorageError:
            for agent, part in by_agent(batch):  # the store refused what the batch holds: whose, which rows?
                try:
                    self.store.write(part)
                except (StorageUnavailable, StorageConfigError):
                    raise  # down meanwhile: the whole batch waits (what was written is a no-op replayed)
                except StorageError:
                    for item in items(part):
                        try:
                            self.store.write(item)
                        except (StorageUnavailable, StorageConfigError):
                            raise
                        except StorageError as exc:
                            self.refused.keep(agent, item, str(exc))

    def _spool(self, batch: Batch) -> None:
        try:
            self.spool.append(batch)
        except SpoolError as exc:
            # Nowhere left to put it: say so loudly, with the count; the next batches try again.
            self.lost_batches += 1
            logger.error(
                "cannot spool a batch of %d samples, %d alerts, %d audit records: %s (%d batches lost so far)",
                len(batch.samples), len(batch.alerts), len(batch.audit), exc, self.lost_batches,
            )
            return
        self._spooled = True
        self.spooled_batches += 1

    def _replay(self, *, force: bool) -> None:
        if not force and self._clock() < self._next_retry:
            return
        try:
            written = self.spool.replay(self._write)
        except StorageError as exc:
            logger.warning("storage still unavailable (%s); retrying in %.0f s", exc, self._delay)
            self._schedule_retry()
            return
        except SpoolError as exc:
            logger.error("spool replay failed: %s", exc)
            self._schedule_retry()
            return
        logger.info("storage is back: replayed %d spooled batches", written)
        self._spooled = False
        self._delay = self._retry_min
        self._next_retry = 0.0

    def _schedule_retry(self) -> None:
        self._next_retry = self._clock() + self._delay
        self._delay = min(self._delay * 2, self._retry_max)


class Recorder:
    """Turns poll results into one batch per sweep, with alerts, and hands it to :class:`Delivery`.

    Not thread-safe: the poller calls it from one thread.
    """

    def __init__(
        self,
        delivery: Delivery,
        engine: AlertEngine,
        hook: AlertHook | None = None,
        state: AlertState | None = None,
        trail: AuditTrail | None = None,
        *,
        audit_hold: float = DEFAULT_AUDIT_HOLD,
        observe: Observer | None = None,
        own: tuple[str, OwnMaterial] | None = None,
        backfill: tuple[Backfill, CursorStore] | None = None,
    ) -> None:
        self.delivery = delivery
        self.engine = engine
        self.hook = hook
        self.state = state
        self.trail = trail
        self.audit_hold = audit_hold
        self.observe = observe
        self.own = own  # the collector's name and its own certificate, CA and CRL (certificate_expiry)
        self.backfill: Backfill | None = backfill[0] if backfill is not None else None
        self._backfill_state: CursorStore | None = backfill[1] if backfill is not None else None
        self._samples: list[Sample] = []
        self._alerts: list[Alert] = []
        self._statuses: list[AgentStatus] = []
        self._reported = False
        self._audit: list[AuditEntry] = []
        self._audit_detail: dict[str, str] = {}  # agent -> its last audit chain break, for its state
        if trail is not None:
            delivery.on_loss = self._audit_lost
        self.last_state: dict[str, tuple[AgentState, str]] = {}  # agent -> state and detail as stored

    def __len__(self) -> int:
        return len(self._statuses)

    def add(self, result: PollResult) -> None:
        if result.sample is not None:
            self._samples.append(result.sample)
        if result.backfill is not None and result.backfill.samples:
            self._samples.extend(result.backfill.samples)
            logger.info("%s: back-filled %d samples", result.agent, len(result.backfill.samples))
        if self.backfill is not None and result.state != "up":
            self.backfill.gap(result.agent)
        state, detail = result.state, result.detail
        try:
            alerts = self.engine.evaluate_state(result.agent, result.state, result.timestamp, result.detail)
            if result.sample is not None:
                alerts += self.engine.evaluate(result.sample)
            if state == "up":
                state, detail, more = self._audit_outcome(result)
                alerts += more
        except Exception as exc:  # the last line of defence for one agent's alerts (engine.py)
            if not self._reported:
                self._reported = True
                logger.error("%s: evaluating alerts failed (%s); none raised", result.agent, type(exc).__name__)
            alerts = []
        if len(alerts) > STORED_PER_POLL:
            ordered = sorted(alerts, key=lambda a: -SEVERITY_RANK[a.severity])
            kept, rest = ordered[: STORED_PER_POLL - 1], ordered[STORED_PER_POLL - 1 :]
            alerts = [*kept, storage_summary(result.agent, result.timestamp, rest, STORED_PER_POLL - 1)]
        self.last_state[result.agent] = (state, detail)
        if self.observe is not None:
            firing = self.engine.firing(result.agent)
            self.observe(result.agent, result.timestamp, state, result.latency_ms, result.sample, firing)
        # validated (in pydantic-core, cheaper than model_construct's Python loop); every value is ours
        self._statuses.append(
            AgentStatus.model_validate(
                {
                    "agent": result.agent,
                    "timestamp": result.timestamp,
                    "state": state,
                    "detail": escape(detail)[:256],
                    "latency_ms": max(0.0, round(result.latency_ms, 3)),
                }
            )
        )
        if alerts:
            self._alerts.extend(alerts)
            for alert in alerts:
                logger.warning(
                    "ALERT %s %s %s %s: %s",
                    alert.agent,
                    escape(alert.metric),
                    alert.state,
                    alert.severity,
                    escape(alert.message),
                )

    def _audit_outcome(self, result: PollResult) -> tuple[AgentState, str, list[Alert]]:
        """The audit records a good poll brought, the ``audit_chain`` alerts, and the state to store."""
        agent, outcome = result.agent, result.audit
        breaks: list[str] = []
        if outcome is not None:
            if self.trail is None or self.trail.current(agent, outcome.generation):
                self._audit.extend(outcome.entries)
            # else: fetched before storage lost records; they are fetched again from where storage's copy ends
            breaks = [found.message for found in outcome.breaks]
            for message in breaks:
                logger.warning("%s: %s", agent, escape(message))
        alerts = self.engine.evaluate_audit(agent, result.timestamp, breaks, self.audit_hold)
        if breaks:
            self._audit_detail[agent] = breaks[0]
        if AUDIT_CHAIN in self.engine.firing(agent):
            detail = self._audit_detail.get(agent, "audit chain broken: see its audit_chain alert")
            return "audit_broken", detail, alerts
        if outcome is not None and outcome.error is not None:
            return "up", f"audit trail: {outcome.error}", alerts
        return "up", result.detail, alerts

    def _audit_lost(self) -> None:
        """Batches were lost (the spool refused or dropped them): audit records may be among them."""
        if self.trail is None:
            return
        agents = self.trail.resync()
        if agents:
            logger.warning(
                "batches were lost (counted above); the audit trails of %d agents are fetched again from where "
                "storage's central copies end, once storage has what waits in the spool",
                len(agents),
            )

    def load_audit_tails(self) -> bool:
        """Read where the agents' central audit copies end, for those not known yet; False if storage cannot say.

        Only once nothing waits in the spool: spooled audit records are newer than what storage holds.
        """
        trail = self.trail
        if trail is None or not trail.pending:
            return True
        if self.delivery.backlog:
            return False
        try:
            tails = self.delivery.store.audit_tails(trail.pending)
        except StorageError as exc:
            logger.warning("cannot read where the central audit copies end (%s); audit trails wait", exc)
            return False
        trail.load(tails)
        return True

    def _own_material(self) -> None:
        """``certificate_expiry`` of the collector's own certificate, CA and CRL, once per sweep."""
        assert self.own is not None  # noqa: S101 - called only then
        name, material = self.own
        now = time.time()
        lefts = [(d.what, days_left(d.at, now), d.crl, d.lifetime) for d in material.deadlines()]
        for alert in self.engine.evaluate_own_material(name, now, lefts):
            self._alerts.append(alert)
            logger.warning("ALERT %s %s %s %s: %s", name, alert.metric, alert.state, alert.severity, alert.message)

    def add_all(self, results: Sequence[PollResult]) -> None:
        for result in results:
            self.add(result)

    def flush(self, *, final: bool = False) -> None:
        """Hand the alerts to the outbox, then deliver what has accumulated as one batch.

        ``final`` (at exit): also store, per agent, how many alerts still wait for ``alert_command``.
        """
        if self.own is not None and self._statuses:
            self._own_material()
        if self.hook is not None:
            self._alerts.extend(self.hook.submit(self._alerts))
            self._alerts.extend(self.hook.delivery_alerts(final=final))
        if not self._statuses and not self._alerts and not self._audit:
            return
        batch = Batch(tuple(self._samples), tuple(self._alerts), tuple(self._statuses), tuple(self._audit))
        self._samples, self._alerts, self._statuses, self._audit = [], [], [], []
        self.delivery.deliver(batch)
        if self.trail is not None and self.trail.pending:
            self.load_audit_tails()
        if self.state is not None:
            # after the alerts are stored or spooled: a crash in between repeats an alert, never loses one
            self.state.save(self.engine)
        if self.backfill is not None and self._backfill_state is not None:
            # likewise: a crash before this save fetches those samples again, and storage keeps them once
            self._backfill_state.save(self.backfill.export())
