"""One kept-alive mutual-TLS HTTP/1.1 connection per agent, every call signed, every call under a deadline.

:class:`AgentConnection` is a non-blocking state machine (connect, TLS handshake, send, receive) so that one
thread can drive hundreds of agents at once through a selector (:mod:`secure_collector.engine`); its
:meth:`AgentConnection.call` drives one call to the end on its own, for ``--once`` tools and tests.

HTTP/1.1 is h11's, through :class:`secure_collector.exchange.Exchange` (one per TCP connection): each
request carries a fresh SMON1 token bound to the body and the agent's name, and the answer must carry a
``Content-Length`` of at most :data:`MAX_RESPONSE_BYTES` with no content or transfer coding. The whole call
(connect, handshake, request, answer) has one deadline, ``timeout`` seconds after it began, so an agent
that trickles bytes cannot hold a call longer. A kept-alive connection that the agent has closed in the
meantime is re-established once, with a new token. Failures raise the
:class:`secure_collector.errors.PollError` of the matching agent state.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import selectors
import socket
import ssl
import time
from typing import Any

from pki import tls, tokens
from secure_collector import wire
from secure_collector.errors import (
    AgentAuthRefused,
    AgentBadResponse,
    AgentTimeout,
    AgentTLSFailure,
    AgentUnreachable,
    PollError,
)
from secure_collector.exchange import MAX_RESPONSE_BYTES, Exchange
from storage.escape import escape

DEFAULT_TIMEOUT = 10.0
READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
_RECV_SIZE = 65536
_STALE_ERRNOS = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)
Address = tuple[int, tuple[Any, ...]]
"""An address family and a socket address, as ``getaddrinfo`` gives them."""

# states
_IDLE, _CONNECTING, _HANDSHAKE, _SENDING, _RECEIVING = range(5)
_STAGE = {_CONNECTING: "connect", _HANDSHAKE: "TLS handshake", _SENDING: "request", _RECEIVING: "answer"}


def is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def resolve(host: str, port: int) -> list[Address]:
    """The addresses to try for ``host`` (blocking for names; immediate for IP literals)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise OSError(errno.EHOSTUNREACH, f"cannot resolve {escape(host, 80)}") from exc
    return [(int(family), tuple(address)) for family, _, _, _, address in infos]


class AgentConnection:
    """The collector's link to one agent. Not thread-safe: one caller drives it at a time."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        context: ssl.SSLContext,
        key_id: str,
        key: bytes,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.timeout = timeout
        self._context = context
        self._retire = False  # a new client context: the kept-alive connection goes before the next call
        self._key_id = key_id
        self._key = key
        self._max_response = max_response_bytes
        self._server_hostname = host.strip("[]")
        host_header = f"[{self._server_hostname}]" if ":" in self._server_hostname else self._server_hostname
        self._host_header = f"{host_header}:{port}".encode("ascii")
        self._exchange = Exchange(name, self._host_header, max_response=max_response_bytes)
        self._bodies: dict[str, bytes] = {}
        self._sock: socket.socket | None = None
        self.not_after: float | None = None  # the agent certificate's notAfter (Unix seconds), from the handshake
        self.lifetime_days: float | None = None  # its notAfter - notBefore
        self._state = _IDLE
        self._want = WRITE
        self._fresh = True
        self._addresses: list[Address] = []
        self._resolved: list[Address] = []
        self._method = ""
        self._params: tuple[Any, ...] = ()
        self._out = b""
        self.deadline = 0.0

    def use_context(self, context: ssl.SSLContext) -> None:
        """Connect with ``context`` from now on (a renewed client certificate); call from the driving thread."""
        self._context = context
        self._retire = True

    # -- the driver's interface ------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._sock is not None and self._state in (_IDLE, _SENDING, _RECEIVING)

    @property
    def busy(self) -> bool:
        return self._state != _IDLE

    @property
    def addresses(self) -> list[Address] | None:
        """The addresses the last connection was made to (None before the first): a follow-up call on an
        agent that closed the connection after its answer connects again without resolving again."""
        return list(self._resolved) if self._resolved else None

    def fileno(self) -> int:
        return -1 if self._sock is None else self._sock.fileno()

    @property
    def interest(self) -> int:
        """The selector event the call waits for now."""
        return self._want

    def begin(
        self,
        method: str,
        addresses: list[Address] | None = None,
        now: float | None = None,
        *,
        params: tuple[Any, ...] = (),
    ) -> None:
        """Start a call of ``method(*params)``; ``addresses`` (from :func:`resolve`) are needed only to connect."""
        self.deadline = (time.monotonic() if now is None else now) + self.timeout
        self._method = method
        self._params = params
        if self._retire:  # the old connection still shows the old certificate: a new one shows the new
            self._retire = False
            self.close()
        self._fresh = self._sock is None
        try:
            if self._sock is None:
                self._resolved = list(addresses) if addresses is not None else resolve(self.host, self.port)
                self._addresses = list(self._resolved)
                self._connect_next()
            else:
                self._prepare_send()
        except PollError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise AgentUnreachable(self.name, os_detail(exc, "connect")) from None

    def step(self) -> bytes | None:
        """Advance on a selector event; the answer body when the call is complete, else None."""
        try:
            if self._state == _CONNECTING:
                self._connected()
            elif self._state == _HANDSHAKE:
                self._handshake()
            elif self._state == _SENDING:
                self._send()
            elif self._state == _RECEIVING:
                return self._receive()
        except PollError:
            self.close()
            raise
        return None

    def expire(self, now: float) -> None:
        """Raise :class:`AgentTimeout` (closing the connection) if the call's deadline has passed."""
        if self._state != _IDLE and now >= self.deadline:
            stage = _STAGE.get(self._state, "call")
            self.close()
            raise AgentTimeout(self.name, f"no {stage} within {self.timeout:g} s")

    def finish(self, body: bytes) -> object:
        """Parse a complete answer: the method's value, or :class:`AgentBadResponse` (a fault included)."""
        try:
            answer = wire.parse_response(body)
        except wire.WireError as exc:
            self.close()  # what else this peer sends on the connection is suspect too
            raise AgentBadResponse(self.name, str(exc)) from None
        if answer.fault:
            code = answer.value.get("faultCode")
            raise AgentBadResponse(self.name, f"XML-RPC fault {code if type(code) is int else '?'}")
        return answer.value

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._state = _IDLE
        if sock is not None:
            with contextlib.suppress(OSError):  # closing a broken socket: nothing left to do
                sock.close()

    def call(self, method: str, *params: Any) -> object:
        """Make one call from start to end on this thread (for ``--once`` tools and tests)."""
        self.begin(method, params=params)
        with selectors.DefaultSelector() as selector:
            while True:
                fd = self.fileno()
                selector.register(fd, self.interest)
                try:
                    ready = selector.select(max(0.0, self.deadline - time.monotonic()))
                finally:
                    selector.unregister(fd)
                if not ready:
                    self.expire(time.monotonic())
                    continue
                body = self.step()
                if body is not None:
                    return self.finish(body)

    # -- connecting ------------------------------------------------------------------------------
    def _connect_next(self, previous: OSError | None = None) -> None:
        if not self._addresses:
            exc = previous or OSError(errno.EHOSTUNREACH, "no address")
            raise AgentUnreachable(self.name, os_detail(exc, "connect"))
        family, address = self._addresses.pop(0)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._exchange = Exchange(self.name, self._host_header, max_response=self._max_response)
        self._state = _CONNECTING
        self._want = WRITE
        code = sock.connect_ex(address)
        if code not in (0, errno.EINPROGRESS):
            self.close()
            self._connect_next(OSError(code, errno.errorcode.get(code, str(code))))
        elif code == 0:
            self._start_tls()

    def _socket(self) -> socket.socket:
        if self._sock is None:  # a state that needs a socket always has one; never trust that blindly
            raise AgentUnreachable(self.name, "connection lost")
        return self._sock

    def _connected(self) -> None:
        code = self._socket().getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self.close()
            self._state = _CONNECTING
            self._connect_next(OSError(code, errno.errorcode.get(code, str(code))))
            return
        self._start_tls()

    def _start_tls(self) -> None:
        try:
            self._sock = self._context.wrap_socket(
                self._socket(), server_hostname=self._server_hostname, do_handshake_on_connect=False
            )
        except (ssl.SSLError, OSError) as exc:
            raise AgentTLSFailure(self.name, f"cannot start TLS: {escape(str(exc), 80)}") from None
        self._state = _HANDSHAKE
        self._handshake()

    def _handshake(self) -> None:
        sock = self._socket()
        if not isinstance(sock, ssl.SSLSocket):
            raise AgentTLSFailure(self.name, "no TLS on the connection")
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want = READ
            return
        except ssl.SSLWantWriteError:
            self._want = WRITE
            return
        except ssl.SSLCertVerificationError as exc:
            reason = escape(exc.verify_message or "", 80)
            raise AgentTLSFailure(self.name, f"agent certificate rejected: {reason}") from None
        except ssl.SSLError as exc:
            raise AgentTLSFailure(self.name, f"handshake failed: {ssl_reason(exc)}") from None
        except OSError as exc:
            raise AgentTLSFailure(self.name, f"handshake failed: {os_detail(exc, 'handshake')}") from None
        self.not_after, self.lifetime_days = _validity(sock)
        self._prepare_send()

    # -- the exchange ----------------------------------------------------------------------------
    def _prepare_send(self) -> None:
        body = None if self._params else self._bodies.get(self._method)
        if body is None:
            body = wire.request_body(self._method, *self._params)
            if not self._params:  # a call without parameters: the same body every time
                self._bodies[self._method] = body
        token = tokens.sign(self._key_id, self._key, self.name, body)
        self._out = self._exchange.request(body, token.encode("ascii"))
        self._state = _SENDING
        self._want = WRITE
        self._send()

    def _send(self) -> None:
        sock = self._socket()
        try:
            # TLS writes are all or nothing (no partial writes): a retry passes the same bytes
            sent = sock.send(self._out)
        except ssl.SSLWantWriteError:
            self._want = WRITE
            return
        except ssl.SSLWantReadError:
            self._want = READ
            return
        except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
            self._stale_or(AgentTLSFailure(self.name, "agent closed the connection"))
            return
        except ssl.SSLError as exc:
            raise AgentTLSFailure(self.name, f"TLS error: {ssl_reason(exc)}") from None
        except OSError as exc:
            if exc.errno in _STALE_ERRNOS:
                self._stale_or(AgentUnreachable(self.name, os_detail(exc, "request")))
                return
            raise AgentUnreachable(self.name, os_detail(exc, "request")) from None
        self._out = self._out[sent:]
        if not self._out:
            self._state = _RECEIVING
            self._want = READ

    def _stale_or(self, error: PollError) -> None:
        """A reused connection the agent had closed: reconnect once (new token); else ``error``."""
        if self._fresh:
            raise error
        self.close()
        self._fresh = True
        self._addresses = list(self._resolved)
        self._connect_next()

    def _receive(self) -> bytes | None:
        sock = self._socket()
        exchange = self._exchange
        while True:
            try:
                chunk = sock.recv(_RECV_SIZE)
            except ssl.SSLWantReadError:
                return None
            except ssl.SSLWantWriteError:
                self._want = WRITE
                return None
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                chunk = b""
            except ssl.SSLError as exc:
                # With TLS 1.3 the agent judges our certificate after our side of the handshake is done:
                # its refusal arrives as an alert on the first read.
                raise AgentTLSFailure(self.name, f"TLS error: {ssl_reason(exc)}") from None
            except OSError as exc:
                if exc.errno in _STALE_ERRNOS and not exchange.received:
                    self._stale_or(AgentUnreachable(self.name, os_detail(exc, "answer")))
                    return None
                raise AgentUnreachable(self.name, os_detail(exc, "answer")) from None
            self._want = READ
            if not chunk and not exchange.received:
                self._stale_or(AgentTLSFailure(self.name, "agent closed the connection without answering"))
                return None
            try:
                body = exchange.receive(chunk)
            except AgentAuthRefused:
                presented = _common_name(self._sock) if exchange.status == 401 else None
                if presented is not None and presented != self.name:
                    # another agent behind this port refuses a token signed for ours: say that, not "token refused"
                    raise AgentAuthRefused(
                        self.name,
                        f"HTTP 401: name mismatch: the agent at {self._server_hostname}:{self.port} is "
                        f"{escape(presented, 80)!r}, not {self.name!r} (check agents[].port)",
                    ) from None
                raise
            if body is not None:
                self._state = _IDLE
                if not exchange.reusable:
                    self.close()
                return body


def _validity(sock: ssl.SSLSocket) -> tuple[float | None, float | None]:
    """When the certificate the agent presented (and we verified) expires, and its lifetime in days."""
    peer = sock.getpeercert() or {}
    after, before = peer.get("notAfter"), peer.get("notBefore")
    try:
        not_after = float(ssl.cert_time_to_seconds(after)) if isinstance(after, str) else None
        not_before = float(ssl.cert_time_to_seconds(before)) if isinstance(before, str) else None
    except ValueError:
        return None, None
    lifetime = (not_after - not_before) / 86_400.0 if not_after is not None and not_before is not None else None
    return not_after, lifetime


def _common_name(sock: socket.socket | None) -> str | None:
    """The common name of the agent certificate this TLS connection verified, if any."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    return tls.peer_identity(der).common_name if der else None


def ssl_reason(exc: ssl.SSLError) -> str:
    reason = exc.reason or type(exc).__name__
    return escape(str(reason), 80).lower().replace("_", " ")


def os_detail(exc: OSError, stage: str) -> str:
    if exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{stage}: {name} ({escape(exc.strerror or '', 80)})"
    return f"{stage}: {escape(str(exc), 80)}"
