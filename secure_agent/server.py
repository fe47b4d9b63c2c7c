"""The agent's listener: its socket and an accept loop that does only cheap things.

In the accept loop (one thread): ``accept()``, the source address against ``security.allowed_ips``
on the raw socket, and a slot among the unfinished connections (:class:`~secure_agent.slots.Slots`: a new connection
displaces the oldest unfinished one of its address rather than being refused, so sockets that never
finish a handshake cannot keep a collector out). Each admitted connection is then handed to a worker
thread of its own, where the TLS handshake and everything after it happen
(:mod:`secure_agent.connection`); once its client is identified it moves to the established budget.
Each connection gets the state they all share (:class:`~secure_agent.context.Shared`), never the listener.

The contract's methods are a ``SimpleXMLRPCDispatcher``'s registry (:mod:`secure_agent.dispatch`): the
stdlib gives the method table and its marshalling conventions; its HTTP server and request handler are
not used (:mod:`secure_agent.httpframe` frames requests strictly).

The accept loop (:meth:`AgentServer.serve`) sleeps in one ``select`` on the listening socket and a
socketpair, with no periodic tick: an idle agent's accept thread does not wake at all. It wakes for a
connection, for :meth:`AgentServer.stop` (a byte on the socketpair), while audit records wait for
their ``fdatasync`` when that sync is due (:meth:`secure_agent.audit.AuditLog.sync_due`), and while
refusals are counted when their summary is due (:meth:`secure_agent.refusals.RefusalRecorder.due`).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from typing import Any
from xmlrpc.server import SimpleXMLRPCDispatcher

from pki.tokens import Verifier
from secure_agent.audit import AuditLog
from secure_agent.audit_reader import AuditReader
from secure_agent.config import ServerLimits
from secure_agent.connection import Connection, format_peer
from secure_agent.context import Shared
from secure_agent.dispatch import MetricsSource, register_contract
from secure_agent.guard import Policy, address_allowed
from secure_agent.ratelimit import RateLimiter
from secure_agent.refusals import RefusalRecorder, source_of
from secure_agent.slots import Slots, Workers

logger = logging.getLogger(__name__)

LISTEN_BACKLOG = 128


def _earliest(*delays: float | None) -> float | None:
    """The shortest of the delays given, None when none is (select then waits for a socket)."""
    known = [delay for delay in delays if delay is not None]
    return min(known) if known else None


class AgentServer:
    """The listening socket, its accept loop and the state every connection shares (:class:`Shared`)."""

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
        self.name = name
        self._address = address
        self._family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(self._family, socket.SOCK_STREAM)
        self.server_address: tuple[Any, ...] = address
        self.slots: Slots[Connection] = Slots(limits.max_connections, limits.max_connections_per_ip)
        methods = SimpleXMLRPCDispatcher(allow_none=True, encoding="utf-8")
        register_contract(methods, metrics, AuditReader(audit))
        self.shared = Shared(
            policy=policy,
            limits=limits,
            audit=audit,
            refusals=refusals or RefusalRecorder(audit),
            verifier=verifier,
            limiter=limiter,
            methods=methods,
            slots=self.slots,
        )
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
        self.shared.refusals.set_waker(self.wake)

    # the shared state, by name (lifecycle replaces the policy on reload; tests look at the others)
    @property
    def policy(self) -> Policy:
        return self.shared.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self.shared.policy = policy

    @property
    def verifier(self) -> Verifier:
        return self.shared.verifier

    @property
    def audit(self) -> AuditLog:
        return self.shared.audit

    @property
    def refusals(self) -> RefusalRecorder:
        return self.shared.refusals

    @property
    def stopping(self) -> bool:
        return self.shared.stopping

    def open(self) -> None:
        """Bind and listen; raises OSError (the caller names the address)."""
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(self._address)
            self.socket.listen(LISTEN_BACKLOG)
            self.server_address = self.socket.getsockname()
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
        """Accept one connection, judge it on the raw socket, hand it to a worker; never raises."""
        try:
            request, client_address = self.socket.accept()
        except OSError:  # the peer went away between select and accept
            return
        try:
            if self._admitted(client_address):
                self._hand_off(request, client_address)
            else:
                _close(request)
        except Exception:  # log it, close this connection, keep accepting
            logger.exception("error while accepting %s", format_peer(client_address))
            _close(request)

    def shutdown(self) -> None:
        """Stop the accept loop and wait until it has returned."""
        self.shared.stopping = True
        self.wake()
        self._served.wait()

    def _admitted(self, client_address: Any) -> bool:
        """The allowlist, on the raw socket, before any TLS byte is read."""
        if not address_allowed(self.shared.policy.networks, str(client_address[0])):
            self._deny(client_address, "address_not_allowed")
            return False
        if self.shared.stopping:
            self._deny(client_address, "stopping")
            return False
        return True

    def _deny(self, client_address: Any, reason: str) -> None:
        host = str(client_address[0])
        self.refusals.refuse(source_of(host), "connection_denied", reason, {"peer": format_peer(client_address)})

    def _hand_off(self, request: socket.socket, client_address: Any) -> None:
        """A slot among the unfinished connections (displacing the oldest unfinished one if need be), a thread."""
        connection = Connection(self.shared, request, client_address)
        admitted, displaced = self.slots.admit(connection)
        if displaced is not None:
            displaced.displace()
        if not admitted:  # every unfinished slot is held by a handshake in progress, younger than the grace
            self._deny(client_address, "too_many_connections")
            _close(request)
            return
        try:
            self.workers.submit(connection, client_address)
        except RuntimeError:  # no thread to be had (or stopping): close rather than queue
            logger.error("cannot start a connection thread; closing %s", format_peer(client_address))
            self.slots.release(connection)
            _close(request)

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

    # -- stopping ----------------------------------------------------------------------------------

    def stop(self, timeout: float) -> None:
        """Stop accepting, close idle connections, give busy ones until ``timeout``, then cut them."""
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
        self.socket.close()
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


def _close(request: socket.socket) -> None:
    """Close an accepted socket we will not serve (as socketserver's ``shutdown_request`` does)."""
    with contextlib.suppress(OSError):
        request.shutdown(socket.SHUT_WR)
    request.close()
