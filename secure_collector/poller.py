"""Polling: every agent every ``poll_interval``, at most ``max_workers`` polls in flight, failing agents backed off.

One sweep starts at every tick of a fixed grid (``start + k * poll_interval``); a sweep's results are
stored as one batch. Each agent has at most one poll in flight: if it is still busy at its next tick
(a slow agent), that tick is skipped for it alone. An agent whose poll fails waits
``min(poll_interval * 2**(failures - 1), backoff_max)`` (and at least an agent's ``Retry-After``) before
it is tried again, rounded up to a tick; its first good poll brings it back to every tick.

A slow or dead agent never delays the others: every call ends by ``timeout``, failing agents are backed
off, and agents whose last poll failed may hold at most a quarter of the workers, so the healthy ones
always find one free.

``--shard I/N`` keeps the agents that rendezvous (highest-random-weight) hashing assigns to shard I: each
collector computes the same split from the agent names alone, and growing N to N+1 moves only about
1/(N+1) of the agents.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from secure_collector.config import AgentEntry
from secure_collector.errors import AgentBadResponse, PollError
from secure_collector.sink import PollResult, Recorder
from secure_collector.transport import AgentConnection
from secure_collector.validate import AnswerInvalid, to_sample, validate_answer
from storage.models import AgentState

logger = logging.getLogger(__name__)

DEFAULT_BACKOFF_MAX = 300.0
MAX_BATCH_DELAY = 1.0
"""A sweep's batch is written when its last poll is in, or this many seconds after its first result."""
BATCH_LIMIT = 5000


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


# -- one poll ------------------------------------------------------------------------------------
class Stamper:
    """Collector-clock timestamps, rounded to the millisecond and strictly increasing per agent.

    (agent, timestamp) identifies a sample in storage, so two polls of one agent must never share one,
    even if the wall clock steps back.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def __call__(self, agent: str) -> float:
        now = round(self._clock(), 3)
        with self._lock:
            last = self._last.get(agent)
            if last is not None and now <= last:
                now = round(last + 0.001, 3)
            self._last[agent] = now
        return now


def poll_agent(connection: AgentConnection, stamp: Stamper) -> PollResult:
    """Call ``get_metrics`` on one agent and validate the answer; never raises for the agent's faults."""
    started = time.monotonic()
    try:
        value = connection.call("get_metrics")
        timestamp = stamp(connection.name)
        try:
            sample = to_sample(validate_answer(value, connection.name), timestamp)
        except AnswerInvalid as exc:
            raise AgentBadResponse(connection.name, str(exc)) from None
    except PollError as exc:
        latency = (time.monotonic() - started) * 1000
        retry_after = getattr(exc, "retry_after", None)
        return PollResult(connection.name, stamp(connection.name), exc.state, exc.detail, latency, None, retry_after)
    latency = (time.monotonic() - started) * 1000
    return PollResult(connection.name, timestamp, "up", "", latency, sample)


# -- scheduling ----------------------------------------------------------------------------------
@dataclass
class _Slot:
    connection: AgentConnection
    due: float = 0.0
    busy: bool = False
    failures: int = 0
    state: AgentState | None = None

    @property
    def failing(self) -> bool:
        return self.state is not None and self.state != "up"


class Poller:
    """Polls a set of agents; :meth:`poll_once` for ``--once``, :meth:`run` until stopped."""

    def __init__(
        self,
        connections: Sequence[AgentConnection],
        recorder: Recorder,
        *,
        poll_interval: float,
        max_workers: int,
        backoff_max: float = DEFAULT_BACKOFF_MAX,
        stamp: Stamper | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recorder = recorder
        self.interval = poll_interval
        self.max_workers = max_workers
        self.backoff_max = max(backoff_max, poll_interval)
        self.failing_limit = max(1, max_workers // 4)
        self._stamp = stamp or Stamper()
        self._monotonic = monotonic
        self._slots = {c.name: _Slot(c) for c in connections}
        self._order = [c.name for c in connections]
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="poll")
        self._results: queue.Queue[PollResult] = queue.Queue()
        self._lock = threading.Condition()
        self._in_flight = 0
        self._failing_in_flight = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.sweeps = 0
        self.skipped = 0

    @property
    def states(self) -> dict[str, AgentState | None]:
        with self._lock:
            return {name: self._slots[name].state for name in self._order}

    # -- --once --------------------------------------------------------------------------------
    def poll_once(self) -> list[PollResult]:
        """Poll every agent once (``max_workers`` at a time), record and flush; results in config order."""
        futures = [self._executor.submit(poll_agent, self._slots[name].connection, self._stamp) for name in self._order]
        results = [future.result() for future in futures]
        for result in results:
            self._slots[result.agent].state = result.state
        self.recorder.add_all(results)
        self.recorder.flush()
        self.sweeps += 1
        return results

    # -- long-running ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask :meth:`run` to return (safe from a signal handler or another thread)."""
        self._stop.set()
        self._wake.set()

    def run(self, *, max_sweeps: int | None = None) -> None:
        """Poll on the tick grid until :meth:`stop` (or until ``max_sweeps`` ticks are done); flush at the end."""
        start = self._monotonic()
        heap: list[tuple[float, int, str]] = []
        for position, name in enumerate(self._order):
            self._slots[name].due = start
            heap.append((start, position, name))
        heapq.heapify(heap)
        ready: list[str] = []
        pending_since: float | None = None
        try:
            while not self._stop.is_set():
                self._wake.clear()
                now = self._monotonic()
                self.sweeps = int((now - start) / self.interval + 1e-9) + 1
                with self._lock:
                    while heap and heap[0][0] <= now:
                        if max_sweeps is not None and self._tick_of(heap[0][0], start) >= max_sweeps:
                            break
                        ready.append(heapq.heappop(heap)[2])
                    ready = self._dispatch(ready)
                pending_since = self._drain(heap, start, pending_since)
                with self._lock:
                    idle = self._in_flight == 0 and not ready
                if pending_since is not None and (
                    idle or now - pending_since >= MAX_BATCH_DELAY or len(self.recorder) >= BATCH_LIMIT
                ):
                    self.recorder.flush()
                    pending_since = None
                self.recorder.delivery.retry()
                if idle and max_sweeps is not None and (not heap or self._tick_of(heap[0][0], start) >= max_sweeps):
                    break
                self._wake.wait(self._wait_time(heap, pending_since))
        finally:
            self._drain(heap, start, None)
            self.recorder.flush()

    def _tick_of(self, due: float, start: float) -> int:
        return round((due - start) / self.interval)

    def _dispatch(self, ready: list[str]) -> list[str]:
        """Start polls for ready agents while workers are free; return those that must wait."""
        waiting: list[str] = []
        for name in ready:
            slot = self._slots[name]
            if self._in_flight >= self.max_workers or (slot.failing and self._failing_in_flight >= self.failing_limit):
                waiting.append(name)
                continue
            slot.busy = True
            self._in_flight += 1
            if slot.failing:
                self._failing_in_flight += 1
            future = self._executor.submit(poll_agent, slot.connection, self._stamp)
            future.add_done_callback(self._done_callback(name, slot.failing))
        return waiting

    def _done_callback(self, name: str, counted_failing: bool) -> Callable[[Future[PollResult]], None]:
        def done(future: Future[PollResult]) -> None:
            with self._lock:
                self._in_flight -= 1
                if counted_failing:
                    self._failing_in_flight -= 1
            error = future.exception()
            if error is not None:
                logger.error("%s: poll crashed", name, exc_info=error)
                result = PollResult(name, self._stamp(name), "bad_response", "collector error", 0.0)
            else:
                result = future.result()
            self._results.put(result)
            self._wake.set()

        return done

    def _drain(self, heap: list[tuple[float, int, str]], start: float, pending_since: float | None) -> float | None:
        """Record every finished poll and schedule its agent's next one."""
        while True:
            try:
                result = self._results.get_nowait()
            except queue.Empty:
                return pending_since
            now = self._monotonic()
            with self._lock:
                slot = self._slots[result.agent]
                slot.busy = False
                slot.state = result.state
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
                    logger.info("%s: %s (%s); next try in %.1f s", result.agent, result.state, result.detail, delay)
                self._reschedule(heap, result.agent, start, now, delay)
            self.recorder.add(result)
            if pending_since is None:
                pending_since = now

    def _reschedule(
        self, heap: list[tuple[float, int, str]], name: str, start: float, now: float, delay: float
    ) -> None:
        """Put ``name`` on the first tick after ``now + delay`` (at least the next tick)."""
        earliest = now + delay
        ticks = int((earliest - start) / self.interval + 1e-9) + 1
        due = start + ticks * self.interval
        self._slots[name].due = due
        heapq.heappush(heap, (due, self._order.index(name), name))

    def _wait_time(self, heap: list[tuple[float, int, str]], pending_since: float | None) -> float:
        now = self._monotonic()
        wait = self.interval
        if heap:
            wait = min(wait, heap[0][0] - now)
        if pending_since is not None:
            wait = min(wait, pending_since + MAX_BATCH_DELAY - now)
        if self.recorder.delivery.backlog:
            wait = min(wait, 1.0)
        return max(0.0, wait)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
        for slot in self._slots.values():
            slot.connection.close()
