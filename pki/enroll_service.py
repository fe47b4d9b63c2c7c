"""The enrollment service on the CA machine (``make-certs --out DIR --serve HOST:PORT``): HTTPS, two endpoints.

``POST /v1/enroll``  ``{"token": TOKEN, "csr": PEM}``: a new host trades a single-use token
    (:mod:`pki.enroll_tokens`) for a certificate of exactly the name, addresses and role the operator issued
    the token for; the CSR must ask for exactly that (:func:`pki.csr.check_request`).
``POST /v1/renew``   ``{"csr": PEM}`` over mutual TLS with the host's current certificate: a certificate for
    exactly the name, addresses and purpose of the certificate presented, for a new key. The presented
    certificate must be unexpired (OpenSSL), unrevoked (``DIR/crl.pem``) and the one the CA holds for that name
    now (``DIR/agents/NAME.crt`` or ``DIR/collectors/NAME.crt``): a stolen key renewed once locks out the
    other holder, and the refusal says so in the audit log.

Both answer ``{"certificate": PEM, "ca": PEM, "crl": PEM}``. The service is an attack surface like the agent:
TLS 1.3 only with a certificate of our CA; at most :data:`MAX_BODY_BYTES` of body and
:data:`MAX_CONNECTIONS` connections, each with timeouts; a token bucket per source network (/24, /64)
answering 429 with ``Retry-After``; generic statuses on the wire (400, 403, 404, 405, 411, 413, 429, 503) and
the reason of every refusal, with every issuance, in its own hash-chained audit log (:mod:`pki.enroll_audit`),
written before the certificate leaves. The signing decisions live in :mod:`pki.enroll_issuer`, apart from HTTP.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import ipaddress
import json
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pki.enroll_audit import AuditUnavailable
from pki.enroll_issuer import ENROLL_LIFETIME, Issuer, Refused, enroll_dir, ensure_service_certificate
from pki.errors import PKIError
from pki.tls import service_context

__all__ = ["ENROLL_LIFETIME", "EnrollmentService", "Issuer", "RateLimiter", "enroll_dir", "open_service"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024  # a CSR of ours is under 1 KiB, a token under 2 KiB
MAX_HEADER_BYTES = 8 * 1024  # request line and headers
DRAIN_BYTES = 64 * 1024  # a body up to this size is read and dropped before a 413; a larger one is cut off
MAX_CONNECTIONS = 32
HANDSHAKE_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
RATE_PER_SECOND = 0.5  # per source address: a host enrolls once and renews every few weeks
RATE_BURST = 10
MAX_SOURCES = 10_000  # rate-limit buckets kept; the fullest are forgotten first
REFUSAL_SUMMARY = 60.0  # seconds: rate-limited requests are audited once per source per this, with a count


def source_network(address: str) -> str:
    """The network a request is accounted to: /24 for IPv4, /64 for IPv6 (one host can hold a whole /64, so a
    bucket per address would give it millions of bursts)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class RateLimiter:
    """A token bucket per source network (:func:`source_network`); :meth:`take` is 0 when a request may go,
    else seconds to wait."""

    def __init__(self, per_second: float = RATE_PER_SECOND, burst: int = RATE_BURST) -> None:
        self.per_second = per_second
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, source: str, now: float) -> float:
        with self._lock:
            level, last = self._buckets.get(source, (float(self.burst), now))
            level = min(float(self.burst), level + (now - last) * self.per_second)
            if level < 1.0:
                self._buckets[source] = (level, now)
                return (1.0 - level) / self.per_second
            self._buckets[source] = (level - 1.0, now)
            if len(self._buckets) > MAX_SOURCES:  # forget the sources with the most left: they lose nothing
                for key, _ in sorted(self._buckets.items(), key=lambda item: -item[1][0])[: MAX_SOURCES // 10]:
                    del self._buckets[key]
            return 0.0


class _Handler(BaseHTTPRequestHandler):
    server: EnrollmentService
    protocol_version = "HTTP/1.1"
    server_version = "enroll"
    sys_version = ""
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.client_address[0], *args)

    def _send(self, status: int, body: bytes, content_type: str = "text/plain", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _refuse(self, status: int, **headers: str) -> None:
        self._drain()
        self._send(status, f"{status} {self.responses[status][0]}\n".encode("ascii"), **headers)

    _unread: int | None = None  # body bytes not read yet (None: not known yet)

    def setup(self) -> None:
        super().setup()
        # one request per connection: its head and body together are bounded, the stdlib's own limits are not
        self.rfile = io.BufferedReader(_Capped(self.rfile, MAX_HEADER_BYTES + DRAIN_BYTES), 8192)

    def _drain(self) -> None:
        """Read a small unread body before refusing, so the client reads our answer rather than a reset."""
        if self._unread is None:
            text = self.headers.get("Content-Length", "") if self.headers is not None else ""
            self._unread = int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0
        if 0 < self._unread <= DRAIN_BYTES:
            with contextlib.suppress(OSError):
                self.rfile.read(self._unread)
        self._unread = 0

    def do_GET(self) -> None:
        self._refuse(405, Allow="POST")

    do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def do_POST(self) -> None:
        source = self.client_address[0]
        if self.path not in ("/v1/enroll", "/v1/renew"):
            self._refuse(404)
            return
        wait = self.server.limiter.take(source_network(source), time.monotonic())
        if wait > 0:
            self.server.note_rate_limited(source_network(source))
            self._refuse(429, Retry_After=str(max(1, int(wait + 0.999))))
            return
        length_text = self.headers.get("Content-Length", "")
        if not (length_text.isascii() and length_text.isdigit()):
            self._refuse(411)
            return
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self._refuse(413)
            return
        try:
            self._unread = 0
            data = json.loads(self.rfile.read(length))
        except (ValueError, OSError):
            self._refuse(400)
            return
        if not isinstance(data, dict) or not isinstance(data.get("csr"), str):
            self._refuse(400)
            return
        csr_pem = data["csr"].encode("utf-8", "replace")
        try:
            if self.path == "/v1/enroll":
                token = data.get("token")
                if not isinstance(token, str):
                    self._refuse(400)
                    return
                answer = self.server.issuer.enroll(token, csr_pem, source)
            else:
                presented = self.connection.getpeercert(binary_form=True)
                answer = self.server.issuer.renew(presented, csr_pem, source)
        except Refused as exc:
            self._refuse(exc.status)
            return
        except (AuditUnavailable, PKIError, OSError, ValueError) as exc:  # ValueError: a CA file we cannot read
            logger.error("cannot serve %s for %s: %s", self.path, source, exc)
            self._refuse(503)
            return
        self._send(200, json.dumps(answer).encode("ascii"), "application/json")


class _Deadline:
    """The socket a watchdog shuts at a connection's deadline; never one released (and its number reused)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def hold(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock

    def release(self) -> None:
        with self._lock:
            self._sock = None

    def shut(self) -> None:
        with self._lock:
            if self._sock is not None:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)


class _Capped(io.RawIOBase):
    """A connection's input, cut off after ``cap`` bytes: request line, headers and body together."""

    def __init__(self, inner: Any, cap: int) -> None:
        super().__init__()
        self._inner = inner
        self._left = cap

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._inner.close()
        super().close()

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            raise ConnectionAbortedError("request larger than the service reads")
        data = self._inner.read1(min(len(buffer), self._left))  # what has arrived, without waiting for more
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


class EnrollmentService(ThreadingHTTPServer):
    """The service: ``EnrollmentService(ca_dir, (host, port), context)``, then :meth:`serve_forever` (a thread)."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        issuer: Issuer,
        address: tuple[str, int],
        context: ssl.SSLContext,
        *,
        limiter: RateLimiter | None = None,
        max_connections: int = MAX_CONNECTIONS,
        deadline: float = HANDSHAKE_TIMEOUT + REQUEST_TIMEOUT,
    ) -> None:
        self.issuer = issuer
        self.deadline = deadline  # seconds a connection may last, handshake and request together
        self.context = context
        self.limiter = limiter or RateLimiter()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._limited: dict[str, tuple[float, int]] = {}
        self._limited_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # full: this connection is closed unanswered
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        # the whole exchange within its deadline, however slowly a client trickles bytes: then the socket is shut
        connection = _Deadline()
        watchdog = threading.Timer(self.deadline, connection.shut)
        watchdog.daemon = True
        watchdog.start()
        try:
            tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError):
            watchdog.cancel()
            return
        try:
            connection.hold(tls)
            tls.do_handshake()
            tls.settimeout(REQUEST_TIMEOUT)
            _Handler(tls, client_address, self)
        except (ssl.SSLError, OSError) as exc:
            logger.info("connection with %s ended: %s", client_address[0], exc)
        finally:
            watchdog.cancel()
            connection.release()
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("unexpected error serving %s", client_address[0])

    def note_rate_limited(self, source: str) -> None:
        """Audit rate-limited requests: the first of a source, then one summary per source per minute."""
        now = time.monotonic()
        with self._limited_lock:
            since, count = self._limited.get(source, (0.0, 0))
            if since and now - since < REFUSAL_SUMMARY:
                self._limited[source] = (since, count + 1)
                return
            self._limited[source] = (now, 0)
            if len(self._limited) > MAX_SOURCES:
                self._limited.clear()
        try:
            self.issuer.audit.record("request", "refused", reason="rate_limited", source=source, count=count + 1)
        except AuditUnavailable as exc:
            logger.error("%s", exc)


def open_service(
    ca_dir: Path,
    host: str,
    port: int,
    *,
    lifetime: dt.timedelta = ENROLL_LIFETIME,
    limiter: RateLimiter | None = None,
    deadline: float = HANDSHAKE_TIMEOUT + REQUEST_TIMEOUT,
) -> EnrollmentService:
    """The service for the CA in ``ca_dir`` listening on ``host:port`` (0: a free port), its certificate made."""
    issuer = Issuer(ca_dir, lifetime=lifetime)
    cert, key = ensure_service_certificate(ca_dir, issuer.authority, host)
    context = service_context(cert, key, ca_dir / "ca.crt")
    return EnrollmentService(issuer, (host, port), context, limiter=limiter, deadline=deadline)
