"""The optional ``alert_command``: each alert as one JSON document on its stdin, at least once, fairly.

The program runs with an argument vector, never through a shell, with a minimal environment, no
terminal, and under ``timeout`` (killed after it). Exit 0 means it took the alert; anything else is a
failure, retried with backoff. What happens to an alert, in order:

1. **Admission** (:meth:`AlertHook.submit`, on the recorder's thread). Each agent has a share of the
   outbox, :data:`AGENT_SHARE` alerts waiting; the whole outbox holds :data:`OUTBOX_MAX`. Security-finding
   alerts of one agent pass a token bucket (:data:`SECURITY_BURST`, one more every
   :data:`SECURITY_REFILL` seconds). What exceeds either is not dropped: it is counted into that agent's
   one summary alert (metric ``alert_summary``: "N more alerts from web-07, most severe: critical"), which
   waits like any other and so still arrives. An agent over its security rate also raises one
   ``security_flood`` alert (critical) per flood, stored and sent; a flood ends after
   :data:`FLOOD_QUIET` seconds without overflow.
2. **The outbox** (:mod:`.outbox`): written durably before :meth:`AlertHook.submit` returns.
3. **Delivery** (one background thread): critical first, then warning, then info; among agents with an
   alert of the same severity, the one served least since its backlog began goes next (round robin),
   so one agent's flood cannot hold another's critical alert back. A failure retries that alert after
   1, 2, 4 ... up to :data:`RETRY_MAX` seconds and pauses all deliveries after consecutive failures
   (up to :data:`PAUSE_MAX`), so a dead receiver is not hammered. At exit (:meth:`AlertHook.close`) it
   keeps delivering for a bounded time but sits out no pause: what is left, logged with its count, is
   sent at the next start.

The document on stdin is the stored alert's fields plus ``id`` (:func:`.outbox.alert_id`): the same alert
always carries the same id, so a receiver can drop the rare second copy that at-least-once implies.
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from secure_collector.alerts import make_alert
from secure_collector.errors import AlertHookError
from secure_collector.outbox import SEVERITY_RANK, Entry, Outbox
from storage.escape import escape
from storage.models import Alert, Severity

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
AGENT_SHARE = 20
"""Alerts of one agent waiting in the outbox one by one; more are counted into its summary."""
OUTBOX_MAX = 10_000
SECURITY_BURST = 20
SECURITY_REFILL = 3.0
"""Seconds per security-finding alert an agent may add beyond its burst (20 a minute)."""
FLOOD_QUIET = 600.0
RETRY_MIN = 1.0
RETRY_MAX = 300.0
PAUSE_MAX = 60.0
SUMMARY_METRIC = "alert_summary"
FLOOD_METRIC = "security_flood"
DELIVERY_METRIC = "alert_delivery"
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def resolve(argv: Sequence[str]) -> tuple[str, ...]:
    """Check ``alert_command`` at start-up: an executable program, as an absolute path or found on PATH."""
    if not argv or not argv[0]:
        raise AlertHookError("alert_command: must name a program")
    program = argv[0]
    found = program if os.path.isabs(program) else shutil.which(program, path=_ENV["PATH"])
    if found is None or not Path(found).is_file() or not os.access(found, os.X_OK):
        raise AlertHookError(f"alert_command: {program!r} is not an executable program")
    return (found, *argv[1:])


def _key(entry: Entry) -> tuple[int, int]:
    return (-entry.rank, entry.seq)


@dataclass
class _Agent:
    """One agent's place in the outbox and its security-alert budget."""

    queue: list[Entry] = field(default_factory=list)  # by severity, then arrival
    tokens: float = float(SECURITY_BURST)
    refilled: float = 0.0
    flooding: bool = False
    last_overflow: float = 0.0
    summary: Entry | None = None
    served: int = 0
    failed_reported: int = 0  # pending-after-failure count last stored as alert_delivery

    @property
    def individual(self) -> int:
        return len(self.queue) - (self.summary is not None)


class AlertHook:
    """Runs ``argv`` once per alert with the alert as JSON on stdin, from a durable outbox, on a thread."""

    def __init__(
        self,
        argv: Sequence[str],
        outbox: Path,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.argv = resolve(argv)
        self.timeout = timeout
        self.outbox = Outbox(outbox)
        self._clock = clock
        self._wall = wall
        self._lock = threading.Condition()
        self._agents: dict[str, _Agent] = {}
        self._waiting: dict[str, _Agent] = {}  # the agents with alerts in the outbox
        self._pending = 0
        self._closing = False
        self._deadline: float | None = None
        self._pause_until = 0.0
        self._consecutive_failures = 0
        self.delivered = 0
        self.failed = 0
        self.collapsed = 0
        for entry in self.outbox.load():
            self._enqueue(entry)
            if entry.alert.metric == SUMMARY_METRIC:
                self._agent(entry.alert.agent).summary = entry
        if self._pending:
            logger.info("%s: %d alerts of an earlier run wait for alert_command", self.outbox.directory, self._pending)
        self._thread = threading.Thread(target=self._run, name="alert-hook", daemon=True)
        self._thread.start()

    # -- admission (the recorder's thread) -------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def submit(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Admit ``alerts`` to the outbox (durably); return alerts the admission raised (floods) to store."""
        if not alerts:
            return []
        raised: list[Alert] = []
        with self._lock:
            now = self._clock()
            changed: dict[str, Entry] = {}
            for alert in alerts:
                for entry in self._admit(alert, now, raised):
                    changed[entry.name] = entry
            try:
                self.outbox.write(list(changed.values()))
            except OSError as exc:
                # the alerts stay queued in memory and are stored; only a crash now would lose their delivery
                logger.error("%s: cannot write the alert outbox (%s)", self.outbox.directory, exc.strerror or exc)
            self._lock.notify_all()
        return raised

    def _admit(self, alert: Alert, now: float, raised: list[Alert]) -> list[Entry]:
        agent = self._agent(alert.agent)
        if agent.flooding and now - agent.last_overflow > FLOOD_QUIET:
            agent.flooding = False
        admitted = True
        if alert.metric.startswith("security."):
            elapsed = max(0.0, now - agent.refilled)
            agent.tokens = min(float(SECURITY_BURST), agent.tokens + elapsed / SECURITY_REFILL)
            agent.refilled = max(now, agent.refilled)
            if agent.tokens >= 1.0:
                agent.tokens -= 1.0
            else:
                admitted = False
                agent.last_overflow = now
                if not agent.flooding:
                    agent.flooding = True
                    flood = _flood_alert(alert.agent, alert.timestamp)
                    raised.append(flood)
                    entry = self.outbox.new_entry(flood)
                    self._enqueue(entry)
                    return [entry, *self._collapse(agent, alert)]
        if admitted and agent.individual < AGENT_SHARE and self._pending < OUTBOX_MAX:
            entry = self.outbox.new_entry(alert)
            self._enqueue(entry)
            return [entry]
        return self._collapse(agent, alert)

    def _collapse(self, agent: _Agent, alert: Alert) -> list[Entry]:
        """Count ``alert`` into its agent's summary (made when there is none waiting)."""
        count = int(alert.value or 0) if alert.metric == SUMMARY_METRIC else 1
        self.collapsed += count
        summary = agent.summary
        if summary is None:
            entry = self.outbox.new_entry(_summary_alert(alert.agent, alert.timestamp, count, alert.severity))
            agent.summary = entry
            self._enqueue(entry)
            return [entry]
        old = summary.alert
        severity: Severity = max(old.severity, alert.severity, key=SEVERITY_RANK.__getitem__)
        summary.alert = _summary_alert(old.agent, old.timestamp, int(old.value or 0) + count, severity)
        agent.queue.remove(summary)
        bisect.insort(agent.queue, summary, key=_key)
        return [summary]

    def _agent(self, name: str) -> _Agent:
        agent = self._agents.get(name)
        if agent is None:
            agent = self._agents[name] = _Agent(refilled=self._clock())
        return agent

    def _enqueue(self, entry: Entry) -> None:
        agent = self._agent(entry.alert.agent)
        bisect.insort(agent.queue, entry, key=_key)
        self._waiting[entry.alert.agent] = agent
        self._pending += 1

    # -- delivery (the hook's thread) ------------------------------------------------------------
    def _next(self, now: float) -> tuple[Entry | None, float]:
        """The entry to send now, or None and how long to wait."""
        if now < self._pause_until:
            return None, self._pause_until - now
        best: Entry | None = None
        best_key: tuple[int, int, int, int] | None = None
        wait = 3600.0
        for agent in self._waiting.values():
            for entry in agent.queue:  # a few dozen at most: an agent's share and its summary
                if entry.next_try > now:
                    wait = min(wait, entry.next_try - now)
                    continue
                # fewer failed attempts first: an alert the command keeps refusing does not hold back
                # the others of its severity (its own backoff outgrows the global pause)
                key = (-entry.rank, entry.attempts, agent.served, entry.seq)
                if best_key is None or key < best_key:
                    best, best_key = entry, key
        return best, wait

    def _run(self) -> None:
        while True:
            with self._lock:
                while True:
                    now = self._clock()
                    if self._closing and (
                        not self._pending
                        or (self._deadline is not None and now >= self._deadline)
                        or now < self._pause_until  # failing: no backoff at exit, the next start retries
                    ):
                        return
                    entry, wait = self._next(now)
                    if entry is not None:
                        break
                    if self._deadline is not None:
                        wait = min(wait, self._deadline - now)
                    self._lock.wait(max(0.0, wait))
                agent = self._agents[entry.alert.agent]
                if entry is agent.summary:
                    agent.summary = None  # what is counted from now on goes into a new summary
                document = entry.document()
            error = self._deliver(document)
            with self._lock:
                self._finish(entry, agent, error)

    def _finish(self, entry: Entry, agent: _Agent, error: str) -> None:
        now = self._clock()
        if not error:
            self.delivered += 1
            self._consecutive_failures = 0
            agent.queue.remove(entry)
            agent.served += 1
            self._pending -= 1
            try:
                self.outbox.remove(entry)
            except OSError as exc:
                logger.warning("%s: cannot remove a delivered alert (%s)", self.outbox.directory, exc.strerror or exc)
            if not agent.queue:
                agent.served = 0  # a new backlog starts with a clean slate
                del self._waiting[entry.alert.agent]
            return
        self.failed += 1
        self._consecutive_failures += 1
        entry.attempts += 1
        entry.last_error = error
        entry.next_try = now + min(RETRY_MIN * 2 ** min(entry.attempts - 1, 30), RETRY_MAX)
        pause = min(RETRY_MIN * 2 ** min(self._consecutive_failures - 1, 30), PAUSE_MAX)
        self._pause_until = now + pause
        if entry.alert.metric == SUMMARY_METRIC and agent.summary is None:
            agent.summary = entry  # still waiting: keep counting into it
        logger.error(
            "alert_command %s: %s; %d alerts wait in %s (retrying in %.0f s)",
            self.argv[0],
            error,
            self._pending,
            self.outbox.directory,
            pause,
        )

    def _deliver(self, document: bytes) -> str:
        """Run the command for one alert; "" when it exited 0, else what went wrong."""
        try:
            completed = subprocess.run(  # noqa: S603 - argv from the operator's config, checked at start, no shell
                self.argv,
                input=document,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=self.timeout,
                env=_ENV,
                close_fds=True,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"timed out after {self.timeout:.0f} s (killed)"
        except OSError as exc:
            return f"cannot run: {exc.strerror or exc}"
        if completed.returncode != 0:
            tail = escape(completed.stderr[-200:].decode("utf-8", "replace"))
            return f"exited {completed.returncode}: {tail}"
        return ""

    # -- what storage and the operator learn -------------------------------------------------------
    def delivery_alerts(self, *, final: bool = False) -> list[Alert]:
        """``alert_delivery`` alerts for storage: per agent, alerts that failed delivery and still wait
        (``final``: every alert still waiting), when that count changed; cleared when it is back to 0."""
        alerts: list[Alert] = []
        with self._lock:
            now = self._wall()
            for name, agent in self._agents.items():
                waiting = len(agent.queue) if final else sum(1 for e in agent.queue if e.attempts)
                if waiting == agent.failed_reported:
                    continue
                agent.failed_reported = waiting
                if waiting:
                    last = next((e.last_error for e in agent.queue if e.last_error), "not tried before exit")
                    message = (
                        f"{waiting} alerts not yet delivered to alert_command ({last}); "
                        "kept in the outbox and retried"
                    )
                    alerts.append(_alert(name, now, DELIVERY_METRIC, waiting, "warning", message))
                else:
                    alerts.append(
                        _alert(name, now, DELIVERY_METRIC, 0, "info", "alerts delivered again", state="cleared")
                    )
        return alerts

    def close(self, timeout: float | None = None) -> int:
        """Deliver what waits for up to ``timeout`` seconds, then stop; the number of alerts left waiting."""
        with self._lock:
            self._closing = True
            self._deadline = None if timeout is None else self._clock() + timeout
            self._lock.notify_all()
        self._thread.join(None if timeout is None else timeout + self.timeout + 1.0)
        left = self.pending
        if left:
            logger.warning(
                "%d alerts not delivered to alert_command yet; kept in %s and sent at the next start",
                left,
                self.outbox.directory,
            )
        return left


def _alert(
    agent: str, timestamp: float, metric: str, value: float | None, severity: Severity, message: str, state: str = ""
) -> Alert:
    return make_alert(agent, timestamp, metric, value, None, severity, message, state)


def _summary_alert(agent: str, timestamp: float, count: int, severity: Severity) -> Alert:
    message = f"{count} more alerts from {agent}, most severe: {severity}"
    return _alert(agent, timestamp, SUMMARY_METRIC, count, severity, message)


def _flood_alert(agent: str, timestamp: float) -> Alert:
    message = (
        f"{agent} raised security-finding alerts faster than {SECURITY_BURST} at once and one every "
        f"{SECURITY_REFILL:g} s: the rest are counted into summaries (a flood can hide a real finding)"
    )
    alert = _alert(agent, timestamp, FLOOD_METRIC, None, "critical", message)
    return alert.model_copy(update={"threshold": float(SECURITY_BURST)})


def storage_summary(agent: str, timestamp: float, alerts: Sequence[Alert], bound: int) -> Alert:
    """The one stored record for the alerts of one poll beyond ``bound`` (counted, most severe kept)."""
    severity: Severity = max((a.severity for a in alerts), key=SEVERITY_RANK.__getitem__, default="info")
    message = (
        f"{len(alerts)} more alerts from {agent} in this poll, most severe: {severity} "
        f"(at most {bound} are stored one by one per agent and poll)"
    )
    return _alert(agent, timestamp, SUMMARY_METRIC, len(alerts), severity, message)

