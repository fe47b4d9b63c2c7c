"""The clients the benchmarks time: one HTTP(S) request per call, kept alive or on a new connection.

All three servers are reached the same way, through ``http.client`` with our collector's TLS context
(``pki.tls.client_context``: mutual TLS, our CA only) where the server speaks TLS:

* ours: ``POST /RPC2`` ``get_metrics()`` with a fresh ``SMON1-HMAC-SHA256`` token per call (``pki.tokens.sign``);
* Glances: ``POST /RPC2`` ``getAll()`` (plain HTTP; its server answers HTTP/1.0 and closes every connection);
* node_exporter: ``GET /metrics``.

A call is timed from just before the token is signed (or the connection opened, for a new
connection) until the last byte of the response body has been read; the response is not parsed.
"""

from __future__ import annotations

import http.client
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


# How a server's close of a kept-alive connection shows on the next request: no answer, a reset, or
# (TLS) an EOF without close_notify.
_CLOSED_UNDER_US = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    BrokenPipeError,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)


class _StaleConnection(Exception):
    """The server closed the connection before answering (a kept-alive connection it had ended)."""


class Caller:
    """Calls one server; ``keep_alive`` reuses one connection for as long as the server keeps it."""

    def __init__(
        self, server: Server, build: RequestFactory, context: ssl.SSLContext | None, *, keep_alive: bool
    ) -> None:
        self.server = server
        self.build = build
        self.context = context
        self.keep_alive = keep_alive
        self._connection: http.client.HTTPConnection | None = None
        self.connections = 0
        self.retries = 0
        self.last_body = b""

    def _connect(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self.server.tls:
            connection = http.client.HTTPSConnection(
                self.server.server_hostname, self.server.port, timeout=CALL_TIMEOUT, context=self.context
            )
        else:
            connection = http.client.HTTPConnection(self.server.server_hostname, self.server.port, timeout=CALL_TIMEOUT)
        connection.connect()
        self.connections += 1
        return connection

    def call(self) -> int:
        """One call; returns the response body's length. Raises :class:`CallFailed` unless 200.

        Like ``xmlrpc.client.Transport``, a request on a reused connection that the server has
        closed meanwhile is sent once more on a new connection (counted in :attr:`retries`).
        """
        reused = self._connection is not None and self._connection.sock is not None
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
        if connection is None or connection.sock is None:
            if connection is not None:
                connection.close()
            connection = self._connect()
        self._connection = None
        method, path, body, headers = self.build()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        except _CLOSED_UNDER_US as exc:
            connection.close()
            raise _StaleConnection from exc
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise CallFailed(f"{self.server.name}: {type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            connection.close()
            raise CallFailed(f"{self.server.name}: HTTP {response.status} {payload[:200]!r}")
        if self.keep_alive and not response.will_close:
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
