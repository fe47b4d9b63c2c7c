"""The agent's listener: a stdlib ``SimpleXMLRPCServer`` whose accept loop does only cheap things.

In the accept loop (one thread): ``accept()``, the source address against ``security.allowed_ips``
on the raw socket, and a slot among the unfinished connections (:class:`Slots`: a new connection
displaces the oldest unfinished one of its address rather than being refused, so sockets that never
finish a handshake cannot keep a collector out). Each admitted connection is then handed to a worker
thread of its own, where the TLS handshake and everything after it happen
(:mod:`secure_agent.connection`); once its client is identified it moves to the established budget.
A worker whose connection ended waits a while for the next one (:class:`Workers`), so a new connection
does not pay for starting a thread.

The methods are registered on this server's ``SimpleXMLRPCDispatcher`` (:mod:`secure_agent.dispatch`);
the stdlib's HTTP request handler is not used: :mod:`secure_agent.httpframe` frames requests strictly.

The accept loop (:meth:`AgentServer.serve`) sleeps in one ``select`` on the listening socket and a
socketpair, with no periodic tick: an idle agent's accept thread does not wake at all. It wakes for a
connection, for :meth:`AgentServer.stop` (a byte on the socketpair), while audit records wait for
their ``fdatasync`` when that sync is due (:meth:`secure_agent.audit.AuditLog.sync_due`), and while
refusals are counted when their summary is due (:meth:`secure_agent.refusals.RefusalRecorder.due`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Generic, TypeVar
from xmlrpc.server import SimpleXMLRPCServer

from pki.tokens import Verifier
from secure_agent.audit import AuditLog
from secure_agent.audit_reader import AuditReader
from secure_agent.config import ServerLimits
from secure_agent.connection import Connection, format_peer
from secure_agent.dispatch import MetricsSource, register_contract
from secure_agent.guard import Policy, address_allowed
from secure_agent.ratelimit import RateLimiter
from secure_agent.refusals import RefusalRecorder, source_of

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 128
MAX_IDLE_WORKERS = 4  # connection threads kept waiting for the next connection...
WORKER_IDLE_TIME = 60.0  # ...for this many seconds (more than a 30 s poll interval), then they end
HELLO_GRACE = 0.5  # seconds an unfinished connection whose ClientHello arrived whole is not displaced


def _earliest(*delays: float | None) -> float | None:
    """The shortest of the delays given, None when none is (select then waits for a socket)."""
    known = [delay for delay in delays if delay is not None]
    return min(known) if known else None


class Slots:
    """Connections in two budgets, each ``total`` in all and ``per_address`` per address; never blocks.

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
        self._unfinished: dict[Connection, None] = {}  # oldest first
        self._established: set[Connection] = set()
        self._per_host: Counter[str] = Counter()  # unfinished connections per address
        self._established_per_host: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return len(self._unfinished) + len(self._established)

    @property
    def unfinished(self) -> int:
        return len(self._unfinished)

    def admit(self, connection: Connection) -> tuple[bool, Connection | None]:
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

    def _victim(self, now: float, candidate: Callable[[Connection], bool]) -> Connection | None:
        """The oldest candidate without a whole ClientHello, else the oldest one past the grace."""
        waiting = next((c for c in self._unfinished if candidate(c) and not c.started), None)
        if waiting is not None:
            return waiting
        return next((c for c in self._unfinished if candidate(c) and now - c.arrived >= HELLO_GRACE), None)

    def establish(self, connection: Connection) -> bool:
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

    def release(self, connection: Connection) -> None:
        with self._lock:
            if connection in self._established:
                self._established.discard(connection)
                self._established_per_host[connection.host] -= 1
                if self._established_per_host[connection.host] <= 0:
                    del self._established_per_host[connection.host]
            else:
                self._forget(connection)

    def _forget(self, connection: Connection) -> None:
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


class AgentServer(SimpleXMLRPCServer):
    """Listener, dispatcher registry and the state every connection shares.

    ``policy`` is replaced whole on reload; ``verifier`` and ``limiter`` are kept (replay cache
    and rate-limit state survive a reload).
    """

    request_queue_size = LISTEN_BACKLOG
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        name: str,
        policy: Policy,
        verifier: Verifier,
        limiter: RateLimiter,
        audit: AuditLog,
        limits: ServerLimits,
        metrics: MetricsSource,
        refusals: RefusalRecorder | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, logRequests=False, allow_none=True, bind_and_activate=False)
        self.name = name
        self.policy = policy
        self.verifier = verifier
        self.limiter = limiter
        self.audit = audit
        self.limits = limits
        self.stopping = False
        self.slots = Slots(limits.max_connections, limits.max_connections_per_ip)
        self.refusals = refusals or RefusalRecorder(audit)  # refusal records, within their budget
        self._connections: set[Connection] = set()
        self._idle = threading.Condition()
        # wakes the accept loop: a byte from stop(), or from the audit log when a sync becomes pending
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._served = threading.Event()
        self._served.set()
        self.workers: Workers[Connection] = Workers(self._work)
        audit.set_waker(self.wake)
        self.refusals.set_waker(self.wake)
        register_contract(self, metrics, AuditReader(audit))

    def open(self) -> None:
        """Bind and listen; raises OSError (the caller names the address)."""
        try:
            self.server_bind()
            self.server_activate()
        except OSError:
            self.server_close()
            raise

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    # -- the accept loop -------------------------------------------------------------------------

    def wake(self) -> None:
        """Make the accept loop look at its state (stop flag, pending audit sync) now; any thread."""
        with contextlib.suppress(OSError):  # full (a wake-up is pending anyway) or closed (stopped)
            self._wake_w.send(b"\0")

    def serve(self) -> None:
        """The accept loop, until :meth:`stop`: blocks in select, with a timeout only while a sync is due."""
        if self.stopping:
            return
        self._served.clear()
        try:
            with selectors.DefaultSelector() as selector:
                try:
                    selector.register(self.socket, selectors.EVENT_READ, "accept")
                    selector.register(self._wake_r, selectors.EVENT_READ, "wake")
                except (OSError, ValueError):  # closed by a stop that came before the loop began
                    if self.stopping:
                        return
                    raise
                while not self.stopping:
                    for key, _ in selector.select(_earliest(self.audit.sync_due(), self.refusals.due())):
                        if key.data == "wake":
                            with contextlib.suppress(OSError):
                                self._wake_r.recv(4096)
                        elif not self.stopping:
                            self._accept_one()
                    self.audit.sync_if_due()
                    self.refusals.flush_if_due()
        finally:
            self._served.set()

    def _accept_one(self) -> None:
        """socketserver's ``_handle_request_noblock``: accept, judge on the raw socket, hand off."""
        try:
            request, client_address = self.get_request()
        except OSError:  # the peer went away between select and accept
            return
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:  # as socketserver does: log it, close this connection, keep accepting
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        """socketserver's entry point, kept working: the same loop as :meth:`serve` (no polling)."""
        self.serve()

    def shutdown(self) -> None:
        """Stop the accept loop and wait until it has returned (as socketserver's shutdown does)."""
        self.stopping = True
        self.wake()
        self._served.wait()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """The allowlist, on the raw socket, before any TLS byte is read."""
        if not address_allowed(self.policy.networks, str(client_address[0])):
            self._deny(client_address, "address_not_allowed")
            return False
        if self.stopping:
            self._deny(client_address, "stopping")
            return False
        return True

    def _deny(self, client_address: Any, reason: str) -> None:
        host = str(client_address[0])
        self.refusals.refuse(source_of(host), "connection_denied", reason, {"peer": format_peer(client_address)})

    def process_request(self, request: Any, client_address: Any) -> None:
        """A slot among the unfinished connections (displacing the oldest unfinished one if need be), a thread."""
        connection = Connection(self, request, client_address)
        admitted, displaced = self.slots.admit(connection)
        if displaced is not None:
            displaced.displace()
        if not admitted:  # every unfinished slot is held by a handshake in progress, younger than the grace
            self._deny(client_address, "too_many_connections")
            self.shutdown_request(request)
            return
        try:
            self.workers.submit(connection, client_address)
        except RuntimeError:  # no thread to be had (or stopping): close rather than queue
            logger.error("cannot start a connection thread; closing %s", format_peer(client_address))
            self.slots.release(connection)
            self.shutdown_request(request)

    def _work(self, connection: Connection, client_address: Any) -> None:
        with self._idle:
            self._connections.add(connection)
        try:
            connection.run()
        except Exception:  # last resort: a bug in one connection must not leak its slot or be silent
            logger.exception("connection from %s failed", format_peer(client_address))
        finally:
            connection.close()
            self.slots.release(connection)
            with self._idle:
                self._connections.discard(connection)
                self._idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("error while accepting %s", format_peer(client_address))

    # -- stopping ----------------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Stop accepting, close idle connections, give busy ones until ``timeout``, then cut them."""
        self.stopping = True
        self.shutdown()
        deadline = time.monotonic() + timeout
        with self._idle:
            for connection in list(self._connections):
                if connection.idle:
                    connection.cut()
            while self._connections and time.monotonic() < deadline:
                self._idle.wait(max(0.0, min(0.1, deadline - time.monotonic())))
            for connection in list(self._connections):
                connection.cut()
        self.workers.close()
        self.server_close()
        self.refusals.close()

    def server_close(self) -> None:
        super().server_close()
        self.audit.set_waker(None)
        self._wake_r.close()
        self._wake_w.close()

    def connection_count(self) -> int:
        with self._idle:
            return len(self._connections)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection is open (each has written its audit records); False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._connections, timeout)
