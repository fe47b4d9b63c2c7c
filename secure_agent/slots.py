"""Connection budgets and connection threads of the agent's listener.

:class:`Slots` keeps connections in two budgets, *unfinished* (handshake not done) and *established*
(client identified), so that sockets which never finish a handshake cannot keep an honest client out:
a newcomer displaces the oldest unfinished connection of its address instead of being refused.
:class:`Workers` reuses connection threads, so a new connection does not pay for starting one.
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

MAX_IDLE_WORKERS = 4  # connection threads kept waiting for the next connection...
WORKER_IDLE_TIME = 60.0  # ...for this many seconds (more than a 30 s poll interval), then they end
HELLO_GRACE = 0.5  # seconds an unfinished connection whose ClientHello arrived whole is not displaced


class Slotted(Hashable, Protocol):
    """What :class:`Slots` reads of a connection."""

    @property
    def host(self) -> str: ...

    @property
    def arrived(self) -> float: ...  # time.monotonic() when accepted

    @property
    def started(self) -> bool: ...  # its whole ClientHello arrived


C = TypeVar("C", bound=Slotted)


class Slots(Generic[C]):
    """Cs in two budgets, each ``total`` in all and ``per_address`` per address; never blocks.

    *Unfinished* connections (accepted, handshake not done) cost a thread and prove nothing, so they
    never hold back the others: one that arrives when its address (or the whole budget) is full takes
    the place of the oldest unfinished one whose ClientHello has not arrived whole (idle, or trickling
    it), else of the oldest one past :data:`HELLO_GRACE` since it arrived; if there is none it is refused
    (:meth:`admit`). An honest client sends its ClientHello at once and finishes its handshake well
    within the grace, so idle and trickling sockets from its own address cannot keep it out, nor can a
    chain of them reconnecting as they are displaced. *Established* connections (identity verified) are
    never displaced; beyond their budget the connection is refused (:meth:`establish`).
    """

    def __init__(self, total: int, per_address: int) -> None:
        self._total = total
        self._per_address = per_address
        self._unfinished: dict[C, None] = {}  # oldest first
        self._established: set[C] = set()
        self._per_host: Counter[str] = Counter()  # unfinished connections per address
        self._established_per_host: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return len(self._unfinished) + len(self._established)

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)

    def admit(self, connection: C) -> tuple[bool, C | None]:
        """Count ``connection`` as unfinished: (admitted, the one it displaces, which the caller cuts)."""
        host = connection.host
        with self._lock:
            victim = None
            if self._per_host[host] >= self._per_address:
                victim = self._victim(connection.arrived, lambda other: other.host == host)
                if victim is None:
                    return False, None
            elif len(self._unfinished) >= self._total:
                victim = self._victim(connection.arrived, lambda other: True)
                if victim is None:
                    return False, None
            if victim is not None:
                self._forget(victim)
            self._unfinished[connection] = None
            self._per_host[host] += 1
            return True, victim

    def _victim(self, now: float, candidate: Callable[[C], bool]) -> C | None:
        """The oldest candidate without a whole ClientHello, else the oldest one past the grace."""
        waiting = next((c for c in self._unfinished if candidate(c) and not c.started), None)
        if waiting is not None:
            return waiting
        return next((c for c in self._unfinished if candidate(c) and now - c.arrived >= HELLO_GRACE), None)

    def establish(self, connection: C) -> bool:
        """Move ``connection`` to the established budget; False (it stays unfinished) when that is full."""
        host = connection.host
        with self._lock:
            if connection not in self._unfinished:
                return False  # displaced meanwhile
            if len(self._established) >= self._total or self._established_per_host[host] >= self._per_address:
                return False
            self._forget(connection)
            self._established.add(connection)
            self._established_per_host[host] += 1
            return True

    def release(self, connection: C) -> None:
        with self._lock:
            if connection in self._established:
                self._established.discard(connection)
                self._established_per_host[connection.host] -= 1
                if self._established_per_host[connection.host] <= 0:
                    del self._established_per_host[connection.host]
            else:
                self._forget(connection)

    def _forget(self, connection: C) -> None:
        if self._unfinished.pop(connection, False) is None:
            self._per_host[connection.host] -= 1
            if self._per_host[connection.host] <= 0:
                del self._per_host[connection.host]


Job = TypeVar("Job")


class Workers(Generic[Job]):
    """Connection threads, reused: a connection goes to a waiting worker, or to a new thread if none waits.

    At most :data:`MAX_IDLE_WORKERS` wait at once, each for :data:`WORKER_IDLE_TIME` seconds, so a
    burst leaves no lasting threads behind and an idle agent holds a few sleeping ones (no wake-ups:
    they block on the queue). How many run at once is bounded by the server's connection slots.

    ``_waiting`` counts workers blocked on the queue minus connections queued for them; it changes
    only under the lock, together with the queue, so a connection is never queued for a worker that
    is leaving.
    """

    def __init__(self, run: Callable[[Job, Any], None]) -> None:
        self._run = run
        self._queue: queue.SimpleQueue[tuple[Job, Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._closed = False

    def submit(self, request: Job, client_address: Any) -> None:
        """Run ``run(request, client_address)`` in a worker; RuntimeError if no thread can be had."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            if self._waiting > 0:
                self._waiting -= 1
                self._queue.put((request, client_address))
                return
        worker = threading.Thread(
            target=self._work, args=((request, client_address),), name="agent-connection", daemon=True
        )
        worker.start()

    def _work(self, job: tuple[Job, Any] | None) -> None:
        while job is not None:
            self._run(*job)
            job = self._next()

    def _next(self) -> tuple[Job, Any] | None:
        """The next connection for this worker, or None when it should end."""
        with self._lock:
            if self._closed or self._waiting >= MAX_IDLE_WORKERS:
                return None
            self._waiting += 1
        try:
            return self._queue.get(timeout=WORKER_IDLE_TIME)
        except queue.Empty:
            with self._lock:
                try:  # queued for us just as the wait ended: take it rather than strand it
                    return self._queue.get_nowait()
                except queue.Empty:
                    self._waiting -= 1
                    return None

    def close(self) -> None:
        """Make every waiting worker end now; later submits are refused."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = self._waiting, 0
            for _ in range(waiting):
                self._queue.put(None)

    @property
    def waiting(self) -> int:
        return self._waiting
