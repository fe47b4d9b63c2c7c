"""The clients the benchmarks time: one HTTP(S) request per call, kept alive or on a new connection.

All three servers are reached the same way, by one minimal HTTP/1.1 client (:class:`HTTPConnection`
below) with our collector's TLS context (``pki.tls.client_context``: mutual TLS, our CA only) where the
server speaks TLS:

* ours: ``POST /RPC2`` ``get_metrics()`` with a fresh ``SMON1-HMAC-SHA256`` token per call (``pki.tokens.sign``);
* Glances: ``POST /RPC2`` ``getAll()`` (plain HTTP; its server answers HTTP/1.0 and closes every connection);
* node_exporter: ``GET /metrics``.

A call is timed from just before the token is signed (or the connection opened, for a new
connection) until the last byte of the response body has been read; the response is not parsed.

Why not ``http.client``: it parses every response head through the ``email`` package and costs about
0.25 ms of client CPU per call on this machine, against ~0.08 ms here. That is the measuring
instrument's own time, added alike to every server's latency, and it squeezed the ratios between
them toward 1. This client writes a request in one ``send`` and reads the response by its framing
(``Content-Length``, chunked, or until close), the same code for all three servers.
"""

from __future__ import annotations

import socket
import ssl
import time
import xmlrpc.client
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.measure import NO_CPU, CpuTime, cpu_times
from bench.peers import AGENT_NAME, Pki, Server
from pki.tls import client_context
from pki.tokens import load_key, sign

CALL_TIMEOUT = 30.0  # seconds; a Glances refresh of every plugin takes well under this
MAX_ERRORS = 5

Request = tuple[str, str, bytes | None, dict[str, str]]  # method, path, body, headers
RequestFactory = Callable[[], Request]


class CallFailed(Exception):
    """A server answered a benchmark call with something other than 200, or not at all."""


def ours_request(pki: Pki, agent: str = AGENT_NAME) -> RequestFactory:
    """``get_metrics()`` with a fresh token per call, as the collector sends it."""
    key = load_key(pki.hmac_key_file)
    body = xmlrpc.client.dumps((), "get_metrics").encode("utf-8")

    def build() -> Request:
        headers = {
            "Content-Type": "text/xml",
            "Authorization": sign(pki.hmac_key_id, key, agent, body),
        }
        return "POST", "/RPC2", body, headers

    return build


def glances_request() -> RequestFactory:
    body = xmlrpc.client.dumps((), "getAll").encode("utf-8")
    request: Request = ("POST", "/RPC2", body, {"Content-Type": "text/xml"})
    return lambda: request


def node_exporter_request() -> RequestFactory:
    request: Request = ("GET", "/metrics", None, {})
    return lambda: request


def tls_context(pki: Pki) -> ssl.SSLContext:
    return client_context(pki.client_cert, pki.client_key, pki.ca)


@dataclass
class Series:
    """One server, one connection mode: the latencies of every timed call and the server's CPU."""

    server: str
    mode: str  # "kept-alive" or "new connection"
    samples_ns: list[int] = field(default_factory=list)
    server_cpu: CpuTime = NO_CPU
    wall_s: float = 0.0
    response_bytes: int = 0
    connections: int = 0
    retries: int = 0
    errors: int = 0
    first_error: str = ""

    def extend(self, other: Series) -> None:
        self.samples_ns.extend(other.samples_ns)
        self.server_cpu = self.server_cpu.plus(other.server_cpu)
        self.wall_s += other.wall_s
        self.response_bytes = max(self.response_bytes, other.response_bytes)
        self.connections += other.connections
        self.retries += other.retries
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error


MAX_HEAD_BYTES = 65_536
_RECV_BYTES = 262_144

# How a server's close of a kept-alive connection shows on the next request: nothing read back, a
# reset, or (TLS) an EOF without close_notify.
_CLOSED_UNDER_US = (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class _StaleConnection(Exception):
    """The server closed the connection before answering (a kept-alive connection it had ended)."""


class HTTPConnection:
    """One connection: a request written with one ``sendall``, the response read by its framing."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None) -> None:
        raw = socket.create_connection((host, port), timeout=CALL_TIMEOUT)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as http.client does
        try:
            self.sock = raw if context is None else context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        self._host = f"Host: {host}:{port}\r\nAccept-Encoding: identity\r\n".encode("ascii")
        self._buffer = bytearray()

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> None:
        lines = [f"{method} {path} HTTP/1.1\r\n".encode("ascii"), self._host]
        lines += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items()]
        if body is not None:
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines += [b"\r\n", body or b""]
        self.sock.sendall(b"".join(lines))

    def _fill(self) -> bool:
        data = self.sock.recv(_RECV_BYTES)
        self._buffer += data
        return bool(data)

    def _take(self, size: int) -> bytes:
        while len(self._buffer) < size:
            if not self._fill():
                raise CallFailed("the server closed the connection inside a response")
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def _line(self) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD_BYTES or not self._fill():
                raise CallFailed("no line end in a chunked response")
        return self._take(end + 2)[:-2]

    def response(self) -> tuple[int, bytes, bool]:
        """``(status, body, will_close)``; raises :class:`_StaleConnection` if closed before any byte."""
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise CallFailed("response head too large")
            if not self._fill():
                if not self._buffer:
                    raise _StaleConnection
                raise CallFailed("the server closed the connection inside a response head")
        lines = self._take(end + 4)[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        status = int(rest[:3])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        connection = headers.get("connection", "")
        will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while size := int(self._line().split(b";")[0], 16):
                parts.append(self._take(size + 2)[:-2])
            while self._line():  # trailers, up to the blank line
                pass
            return status, b"".join(parts), will_close
        if "content-length" in headers:
            return status, self._take(int(headers["content-length"])), will_close
        while self._fill():  # framed by the close
            pass
        body, self._buffer = bytes(self._buffer), bytearray()
        return status, body, True

    def close(self) -> None:
        self.sock.close()


class Caller:
    """Calls one server; ``keep_alive`` reuses one connection for as long as the server keeps it."""

    def __init__(
        self, server: Server, build: RequestFactory, context: ssl.SSLContext | None, *, keep_alive: bool
    ) -> None:
        self.server = server
        self.build = build
        self.context = context
        self.keep_alive = keep_alive
        self._connection: HTTPConnection | None = None
        self.connections = 0
        self.retries = 0
        self.last_body = b""

    def _connect(self) -> HTTPConnection:
        context = self.context if self.server.tls else None
        connection = HTTPConnection(self.server.server_hostname, self.server.port, context)
        self.connections += 1
        return connection

    def call(self) -> int:
        """One call; returns the response body's length. Raises :class:`CallFailed` unless 200.

        Like ``xmlrpc.client.Transport``, a request on a reused connection that the server has
        closed meanwhile is sent once more on a new connection (counted in :attr:`retries`).
        """
        reused = self._connection is not None
        try:
            return self._call_once()
        except _StaleConnection:
            if not reused:
                raise CallFailed(f"{self.server.name}: the server closed a new connection without answering") from None
            self.retries += 1
            try:
                return self._call_once()
            except _StaleConnection as exc:
                raise CallFailed(f"{self.server.name}: closed without answering, twice") from exc

    def _call_once(self) -> int:
        connection = self._connection
        self._connection = None
        if connection is None:
            connection = self._connect()
        method, path, body, headers = self.build()
        try:
            connection.request(method, path, body, headers)
            status, payload, will_close = connection.response()
        except _CLOSED_UNDER_US as exc:
            connection.close()
            raise _StaleConnection from exc
        except _StaleConnection:
            connection.close()
            raise
        except (OSError, ValueError, CallFailed) as exc:
            connection.close()
            raise CallFailed(f"{self.server.name}: {type(exc).__name__}: {exc}") from exc
        if status != 200:
            connection.close()
            raise CallFailed(f"{self.server.name}: HTTP {status} {payload[:200]!r}")
        if self.keep_alive and not will_close:
            self._connection = connection
        else:
            connection.close()
        self.last_body = payload
        return len(payload)

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def run_series(caller: Caller, mode: str, *, calls: int, seconds: float, warmup: int = 3) -> Series:
    """Warm up, then time up to ``calls`` calls for up to ``seconds``; server CPU measured around the timed part."""
    for _ in range(warmup):
        caller.call()
    series = Series(caller.server.name, mode)
    connections_before, retries_before = caller.connections, caller.retries
    cpu_before = cpu_times(caller.server.pid)
    started = time.perf_counter()
    deadline = started + seconds
    while len(series.samples_ns) < calls and time.perf_counter() < deadline:
        begin = time.perf_counter_ns()
        try:
            size = caller.call()
        except CallFailed as exc:
            series.first_error = series.first_error or str(exc)
            series.errors += 1
            if series.errors >= MAX_ERRORS:
                raise
            continue
        series.samples_ns.append(time.perf_counter_ns() - begin)
        series.response_bytes = max(series.response_bytes, size)
    series.wall_s = time.perf_counter() - started
    series.server_cpu = cpu_times(caller.server.pid).minus(cpu_before)
    series.connections = caller.connections - connections_before
    series.retries = caller.retries - retries_before
    return series
