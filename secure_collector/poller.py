"""Polling: every agent every ``poll_interval``, at most ``max_workers`` polls in flight, failing agents backed off.

One sweep starts at every tick of a fixed grid (``start + k * poll_interval``); a sweep's results are
stored as one batch. Each agent has at most one poll in flight: if it is still busy at its next tick
(a slow agent), that tick is skipped for it alone. An agent whose poll fails waits
``min(poll_interval * 2**(failures - 1), backoff_max)`` (and at least an agent's ``Retry-After``) before
it is tried again, rounded up to a tick; its first good poll brings it back to every tick.

A slow or dead agent never delays the others: calls run concurrently on one thread (:mod:`.engine`), every
call ends by ``timeout``, failing agents are backed off, and *restricted* agents -- those whose last poll
failed, and those whose last poll took more than :data:`SLOW_SHARE` of ``timeout`` (slow, even if valid) --
may hold at most a quarter of the ``max_workers`` slots together, so the healthy ones always find
three quarters free. An agent is judged again by each poll: one quick good answer lifts the restriction.
Storage runs on a thread of its own (:class:`Writer`), so a slow database never delays a poll either.

``--shard I/N`` keeps the agents that rendezvous (highest-random-weight) hashing assigns to shard I: each
collector computes the same split from the agent names alone, and growing N to N+1 moves only about
1/(N+1) of the agents.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from secure_collector.config import AgentEntry
from secure_collector.engine import Engine, FollowUp, Stamper
from secure_collector.membership import Membership
from secure_collector.sink import PollResult, Recorder
from secure_collector.transport import AgentConnection
from storage.escape import escape
from storage.models import AgentState

logger = logging.getLogger(__name__)

DEFAULT_BACKOFF_MAX = 300.0
MAX_BATCH_DELAY = 1.0
"""A sweep's batch is written when its last poll is in, or this many seconds after its first result."""
BATCH_LIMIT = 5000
SLOW_SHARE = 0.5
"""A call that takes more than this share of ``timeout`` marks its agent slow."""


# -- sharding ------------------------------------------------------------------------------------
def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 1 <= I <= N <= 4096."""
    index_text, sep, count_text = text.partition("/")
    if not sep or not index_text.isdigit() or not count_text.isdigit():
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 1/3")
    index, count = int(index_text), int(count_text)
    if not 1 <= index <= count <= 4096:
        raise ValueError(f"--shard {text!r}: need 1 <= I <= N <= 4096")
    return index, count


def _weight(shard: int, agent: str) -> int:
    digest = hashlib.sha256(f"{shard}\x00{agent}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def shard_of(agent: str, count: int) -> int:
    """The shard (1..count) that owns ``agent``: the one with the highest weight for it."""
    return max(range(1, count + 1), key=lambda shard: _weight(shard, agent))


def select_shard(agents: Iterable[AgentEntry], index: int, count: int) -> tuple[AgentEntry, ...]:
    return tuple(agent for agent in agents if shard_of(agent.name, count) == index)


# -- scheduling ----------------------------------------------------------------------------------
@dataclass
class _Slot:
    connection: AgentConnection
    position: int
    due: float = 0.0
    failures: int = 0
    state: AgentState | None = None
    slow: bool = False

    @property
    def failing(self) -> bool:
        return self.state is not None and self.state != "up"

    @property
    def restricted(self) -> bool:
        """Failing or slow: it shares a quarter of the workers with the others like it."""
        return self.slow or self.failing


class Writer:
    """Records and stores sweeps on a thread of its own, so storage never holds up polling."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self._queue: queue.SimpleQueue[list[PollResult] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="collector-writer", daemon=True)
        self._thread.start()

    def submit(self, results: list[PollResult]) -> None:
        self._queue.put(results)

    def _run(self) -> None:
        delivery = self.recorder.delivery
        while True:
            try:
                item = self._queue.get(timeout=1.0 if delivery.backlog else None)
            except queue.Empty:
                delivery.retry()
                continue
            if item is None:
                return
            try:
                self.recorder.add_all(item)
                self.recorder.flush()
                delivery.retry()
            except Exception:  # a bug here must not stop storage for good; it is logged
                logger.exception("recording a sweep failed")

    def close(self, timeout: float | None = None) -> None:
        """Store everything submitted so far, then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)


class Poller:
    """Polls a set of agents; :meth:`poll_once` for ``--once``, :meth:`run` until stopped."""

    def __init__(
        self,
        connections: Sequence[AgentConnection],
        recorder: Recorder | None,
        *,
        poll_interval: float,
        max_workers: int,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        stamp: Stamper | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        follow_up: FollowUp | None = None,
        membership: Membership | None = None,
    ) -> None:
        self.recorder = recorder
        self.membership = membership  # --shard auto: which agents are this collector's now
        self.interval = poll_interval
        self.max_workers = max_workers
        self.backoff_max = max(backoff_max, poll_interval)
        self.restricted_limit = max(1, max_workers // 4)
        self._monotonic = monotonic
        self._slots = {c.name: _Slot(c, position) for position, c in enumerate(connections)}
        self._order = [c.name for c in connections]
        self._engine = Engine(stamp, follow_up)
        self._stop = threading.Event()
        self._context: ssl.SSLContext | None = None  # a client context waiting to be taken up (use_context)
        self._context_lock = threading.Lock()
        self._restricted_in_flight = 0
        self.sweeps = 0
        self.skipped = 0

    @property
    def states(self) -> dict[str, AgentState | None]:
        return {name: self._slots[name].state for name in self._order}

    def _startable(self, name: str) -> bool:
        slot = self._slots[name]
        if len(self._engine) >= self.max_workers:
            return False
        return not (slot.restricted and self._restricted_in_flight >= self.restricted_limit)

    def _start(self, name: str) -> None:
        slot = self._slots[name]
        if slot.restricted:
            self._restricted_in_flight += 1
        self._engine.start(slot.connection)

    def use_context(self, context: ssl.SSLContext) -> None:
        """Poll with ``context`` from the next call of each agent on (safe from another thread: the renewal's)."""
        with self._context_lock:
            self._context = context

    def _take_context(self) -> None:
        with self._context_lock:
            context, self._context = self._context, None
        if context is not None:
            for slot in self._slots.values():
                slot.connection.use_context(context)
            logger.info("client certificate renewed: every agent's next call connects with it")

    # -- --once --------------------------------------------------------------------------------
    def poll_once(self) -> list[PollResult]:
        """Poll every agent once (``max_workers`` at a time), record and store; results in config order."""
        if self.membership is not None:
            self.membership.refresh()
        waiting = [name for name in self._order if self.membership is None or self.membership.owns(name)]
        results: dict[str, PollResult] = {}
        while waiting or len(self._engine):
            while waiting and len(self._engine) < self.max_workers:
                name = waiting.pop(0)
                self._engine.start(self._slots[name].connection)
            for result in self._engine.poll(None):
                results[result.agent] = result
                self._slots[result.agent].state = result.state
        ordered = [results[name] for name in self._order if name in results]
        if self.recorder is not None:  # None: a probe beside the running service records nothing
            self.recorder.add_all(ordered)
            self.recorder.flush()
        self.sweeps += 1
        return ordered

    # -- long-running ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler or another thread)."""
        self._stop.set()
        self._engine.wake()

    def run(self, *, max_sweeps: int | None = None) -> None:
        """Poll on the tick grid until :meth:`stop` (or until ``max_sweeps`` ticks are done); store as it goes.

        On return every finished poll has been stored or spooled; polls still in flight are abandoned
        (they would end within ``timeout``).
        """
        start = self._monotonic()
        heap = [(start, slot.position, name) for name, slot in self._slots.items()]
        heapq.heapify(heap)
        ready: list[str] = []
        counted: dict[str, bool] = {}
        batch: list[PollResult] = []
        batch_since = 0.0
        if self.recorder is None:
            raise ValueError("a poller without a recorder can only poll_once")
        writer = Writer(self.recorder)
        renew_at = start
        try:
            while not self._stop.is_set():
                self._take_context()
                now = self._monotonic()
                self.sweeps = int((now - start) / self.interval + 1e-9) + 1
                if self.membership is not None and now >= renew_at:
                    self.membership.refresh()  # once a poll interval: the lease, and which agents are ours
                    renew_at = now + self.interval
                while heap and heap[0][0] <= now:
                    if max_sweeps is not None and self._tick_of(heap[0][0], start) >= max_sweeps:
                        break
                    due, position, name = heapq.heappop(heap)
                    if self.membership is not None and not self.membership.owns(name):
                        heapq.heappush(heap, (due + self.interval, position, name))  # another collector's now
                        continue
                    ready.append(name)
                waiting: list[str] = []
                for name in ready:
                    if self._startable(name):
                        counted[name] = self._slots[name].restricted
                        self._start(name)
                    else:
                        waiting.append(name)
                ready = waiting
                for result in self._engine.poll(self._wait_time(heap, batch, batch_since)):
                    self._account(result, counted.pop(result.agent, False), heap, start)
                    if not batch:
                        batch_since = self._monotonic()
                    batch.append(result)
                idle = not len(self._engine) and not ready
                if batch and (idle or self._monotonic() - batch_since >= MAX_BATCH_DELAY or len(batch) >= BATCH_LIMIT):
                    writer.submit(batch)
                    batch = []
                if idle and max_sweeps is not None and (not heap or self._tick_of(heap[0][0], start) >= max_sweeps):
                    break
        finally:
            if batch:
                writer.submit(batch)
            writer.close()

    def _account(
        self, result: PollResult, counted: bool, heap: list[tuple[float, int, str]], start: float
    ) -> None:
        """Update the agent's state and put it back on the grid: the next tick, or later when failing."""
        if counted:
            self._restricted_in_flight -= 1
        slot = self._slots[result.agent]
        slot.state = result.state
        slow = result.state == "up" and result.latency_ms > slot.connection.timeout * SLOW_SHARE * 1000
        if slow != slot.slow:
            slot.slow = slow
            if slow:
                logger.info(
                    "%s: slow (%.0f ms, more than half of timeout); it now shares a quarter of the workers",
                    result.agent,
                    result.latency_ms,
                )
            else:
                logger.info("%s: no longer slow", result.agent)
        now = self._monotonic()
        if result.state == "up":
            if slot.failures:
                logger.info("%s: up again after %d failed polls", result.agent, slot.failures)
            slot.failures = 0
            delay = 0.0
        else:
            slot.failures += 1
            delay = min(self.interval * 2 ** min(slot.failures - 1, 30), self.backoff_max)
            if result.retry_after is not None:
                delay = max(delay, min(result.retry_after, self.backoff_max))
            logger.info("%s: %s (%s); next try in %.1f s", result.agent, result.state, escape(result.detail), delay)
        missed = int((now - slot.due) / self.interval + 1e-9) - 1 if slot.due else 0
        if missed > 0:
            self.skipped += missed
            logger.info("%s: a poll outlasted %d ticks; they were skipped for it", result.agent, missed)
        ticks = int((now + delay - start) / self.interval + 1e-9) + 1
        slot.due = start + ticks * self.interval
        heapq.heappush(heap, (slot.due, slot.position, result.agent))

    def _tick_of(self, due: float, start: float) -> int:
        return round((due - start) / self.interval)

    def _wait_time(self, heap: list[tuple[float, int, str]], batch: list[PollResult], batch_since: float) -> float:
        now = self._monotonic()
        wait = self.interval
        if heap:
            wait = min(wait, heap[0][0] - now)
        if batch:
            wait = min(wait, batch_since + MAX_BATCH_DELAY - now)
        return max(0.0, wait)

    def close(self) -> None:
        self._engine.close()
        for slot in self._slots.values():
            slot.connection.close()
