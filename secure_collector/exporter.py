"""The collector's OpenMetrics endpoint (``exporter.listen``): what it last saw of each agent, for Prometheus.

The recording thread only drops each poll's outcome into a dict (:meth:`FleetView.observe`); a scrape turns
that snapshot into series on the HTTP thread, so scrapes never wait for polling nor polling for scrapes.
Every metric of :mod:`storage.catalog` becomes a gauge by itself: a new metric needs no change here.
The encoding, content negotiation and compression are ``prometheus_client``'s; the listener
is ours, so that the endpoint gets the same TLS floor as the agents, a bounded number of connections and
no per-request log lines.
"""

from __future__ import annotations

import gzip
import logging
import socket
import ssl
import threading
import time
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from pki.tls import server_context
from secure_collector.listen import ListenAddress, parse_listen
from storage.catalog import METRICS
from storage.models import AgentState, Sample, ThreatLevel

logger = logging.getLogger(__name__)

PREFIX = "secure_monitor_"
MAX_CONNECTIONS = 16
"""Scrapes served at once; a connection beyond them is closed at once (Prometheus retries next interval)."""
IO_TIMEOUT = 10.0
"""Seconds a peer may take for its TLS handshake and for each read or write of its request."""
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES: tuple[str, ...] = typing.get_args(AgentState)
LEVELS: tuple[str, ...] = typing.get_args(ThreatLevel)


GAUGE_FIELDS: tuple[str, ...] = tuple(metric.name for metric in METRICS)
"""Every numeric metric (storage.catalog), in its order: each is exported as ``secure_monitor_<name>{agent}``."""


class Seen(NamedTuple):
    """What the collector last saw of one agent."""

    polled: float  # when the last poll ended (Unix seconds)
    state: str
    sample: Sample | None  # the last good sample, kept across failed polls
    firing: int  # how many alerts are firing now


class FleetView:
    """The latest outcome per agent, written by the recording thread, read by scrapes.

    One dict assignment per poll: a reader sees, for each agent, either the previous outcome or the new one.
    """

    def __init__(self, spool_bytes: Callable[[], int] | None = None) -> None:
        self._seen: dict[str, Seen] = {}
        self._spool_bytes = spool_bytes
        self.version = 0  # changes with every outcome told: a scrape may reuse its encoding while it stays
        self.registry = CollectorRegistry(auto_describe=False)
        self.poll_duration = Histogram(
            f"{PREFIX}poll_duration_seconds",
            "How long polls took, by their outcome",
            ["state"],
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Spool(self))  # the fleet's own series are encoded by encode_fleet
        self._durations = {state: self.poll_duration.labels(state) for state in STATES}

    def observe(
        self, agent: str, polled: float, state: str, latency_ms: float, sample: Sample | None, firing: Mapping[str, str]
    ) -> None:
        if sample is None:
            previous = self._seen.get(agent)
            sample = previous.sample if previous is not None else None
        self._seen[agent] = Seen(polled, state, sample, len(firing))
        duration = self._durations.get(state)
        if duration is not None:
            duration.observe(max(latency_ms, 0.0) / 1000.0)
        self.version += 1

    def snapshot(self) -> list[tuple[str, Seen]]:
        return list(self._seen.items())

    def spool_bytes(self) -> int | None:
        if self._spool_bytes is None:
            return None
        try:
            return self._spool_bytes()
        except OSError:
            return None


class Family(NamedTuple):
    name: str
    documentation: str
    labels: tuple[str, ...]


GAUGES = tuple(Family(f"{PREFIX}{name}", f"The agent's last {name} sample", ("agent",)) for name in GAUGE_FIELDS)
THREAT = Family(f"{PREFIX}threat_level", "The agent's current threat level (its one series is 1)", ("agent", "level"))
STATE = Family(f"{PREFIX}agent_state", "The outcome of the agent's last poll (its one series is 1)", ("agent", "state"))
POLLED = Family(f"{PREFIX}last_poll_timestamp_seconds", "When the agent's last poll ended", ("agent",))
SAMPLED = Family(f"{PREFIX}last_sample_timestamp_seconds", "The time of the agent's last good sample", ("agent",))
FIRING = Family(f"{PREFIX}alerts_firing", "Alerts firing now", ("agent",))
BROKEN = Family(f"{PREFIX}audit_chain_broken", "1 while the agent's audit trail is held broken", ("agent",))
FLEET_FAMILIES = (*GAUGES, THREAT, STATE, POLLED, SAMPLED, FIRING, BROKEN)


def fleet_rows(seen: Iterable[tuple[str, Seen]]) -> dict[Family, list[tuple[tuple[str, ...], float]]]:
    """Each fleet family's series (label values, value), agent by agent: what both encodings below serve."""
    rows: dict[Family, list[tuple[tuple[str, ...], float]]] = {family: [] for family in FLEET_FAMILIES}
    gauges = [(name, rows[family]) for name, family in zip(GAUGE_FIELDS, GAUGES, strict=True)]
    for agent, last in seen:
        rows[POLLED].append(((agent,), last.polled))
        rows[STATE].append(((agent, last.state), 1.0))
        rows[BROKEN].append(((agent,), 1.0 if last.state == "audit_broken" else 0.0))
        rows[FIRING].append(((agent,), float(last.firing)))
        sample = last.sample
        if sample is None:
            continue
        rows[SAMPLED].append(((agent,), sample.timestamp))
        rows[THREAT].append(((agent, sample.threat_level), 1.0))
        for name, series in gauges:
            value = getattr(sample, name)
            if value is not None:
                series.append(((agent,), float(value)))
    return rows


class FleetFamilies(Collector):
    """The fleet's series as ``prometheus_client`` metric families: the reference :func:`encode_fleet` equals."""

    def __init__(self, view: FleetView) -> None:
        self._view = view

    def describe(self) -> Iterable[Metric]:
        return []  # names are ours alone in this registry: no collision check needed at registration

    def collect(self) -> Iterator[Metric]:
        for family, series in fleet_rows(self._view.snapshot()).items():
            metric = GaugeMetricFamily(family.name, family.documentation, labels=list(family.labels))
            for labels, value in series:
                metric.add_metric(list(labels), value)
            yield metric


_library_float = typing.cast(Callable[[float], str], floatToGoString)


def _go_float(value: float) -> str:
    """``floatToGoString``: Python's ``repr`` except for large positive numbers and non-finite ones."""
    text = repr(value)
    if (value > 0 and text.find(".") > 6) or text[-1] in "fn":  # 1234567.0, inf, nan
        return _library_float(value)
    return text


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_GAUGE_PREFIXES = tuple(f"{family.name}{{agent=" for family in GAUGES)
_HEADERS = tuple(f"# HELP {f.name} {f.documentation}\n# TYPE {f.name} gauge\n" for f in FLEET_FAMILIES)


def _agent_lines(agent: str, last: Seen) -> tuple[str, ...]:
    """One agent's line for each of :data:`FLEET_FAMILIES`, in their order ("" where it has none)."""
    label = f'"{_label_value(agent)}"'
    sample = last.sample
    tail = (
        f"{POLLED.name}{{agent={label}}} {_go_float(last.polled)}\n",
        f"{SAMPLED.name}{{agent={label}}} {_go_float(sample.timestamp)}\n" if sample is not None else "",
        f"{FIRING.name}{{agent={label}}} {_go_float(float(last.firing))}\n",
        f"{BROKEN.name}{{agent={label}}} {'1.0' if last.state == 'audit_broken' else '0.0'}\n",
    )
    state = f'{STATE.name}{{agent={label},state="{_label_value(last.state)}"}} 1.0\n'
    if sample is None:
        return ("",) * (len(GAUGES) + 1) + (state, *tail)
    gauges = []
    for name, prefix in zip(GAUGE_FIELDS, _GAUGE_PREFIXES, strict=True):
        value = getattr(sample, name)
        gauges.append("" if value is None else f"{prefix}{label}}} {_go_float(float(value))}\n")
    threat = f'{THREAT.name}{{agent={label},level="{_label_value(sample.threat_level)}"}} 1.0\n'
    return (*gauges, threat, state, *tail)


class FleetEncoder:
    """The fleet's series in the Prometheus text format, as ``generate_latest`` writes :class:`FleetFamilies`.

    A fleet of 1,000 agents has about 20,000 series, and ``prometheus_client``'s per-series cost adds up:
    this writes the same text faster (docs/fast-paths.md, docs/benchmarks.md) and re-encodes only the
    agents polled since the last scrape. Tests hold it equal to the library for any view. Not thread-safe.
    """

    def __init__(self) -> None:
        self._lines: dict[str, tuple[Seen, tuple[str, ...]]] = {}

    def encode(self, seen: Iterable[tuple[str, Seen]]) -> str:
        columns: tuple[list[str], ...] = tuple([] for _ in FLEET_FAMILIES)
        kept: dict[str, tuple[Seen, tuple[str, ...]]] = {}
        for agent, last in seen:
            cached = self._lines.get(agent)
            lines = cached[1] if cached is not None and cached[0] is last else _agent_lines(agent, last)
            kept[agent] = (last, lines)
            for column, line in zip(columns, lines, strict=True):
                column.append(line)
        self._lines = kept
        return "".join(header + "".join(column) for header, column in zip(_HEADERS, columns, strict=True))


def encode_fleet(seen: Iterable[tuple[str, Seen]]) -> str:
    """:meth:`FleetEncoder.encode` without a cache."""
    return FleetEncoder().encode(seen)


class _Spool(Collector):
    def __init__(self, view: FleetView) -> None:
        self._view = view

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        spooled = self._view.spool_bytes()
        if spooled is not None:
            yield GaugeMetricFamily(f"{PREFIX}spool_bytes", "Bytes waiting in the spool for storage", value=spooled)


# -- listening -----------------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: ListenAddress, context: ssl.SSLContext | None) -> None:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        self.address_family = infos[0][0]
        self._context = context
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        sockaddr = infos[0][4]
        super().__init__((str(sockaddr[0]), int(sockaddr[1])), _QuietHandler)

    def server_bind(self) -> None:
        # WSGIServer.server_bind resolves the host's name (getfqdn) to fill SERVER_NAME: not needed, can block
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = "secure-collector", self.server_address[1]
        self.setup_environ()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, peer = self.socket.accept()
        if not self._slots.acquire(blocking=False):
            sock.close()
            raise OSError("exporter: all connections busy")  # handle_request drops the connection quietly
        sock.settimeout(IO_TIMEOUT)
        if self._context is not None:
            sock = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, peer

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                try:
                    request.do_handshake()
                except (OSError, ssl.SSLError) as exc:  # no certificate of exporter.tls.ca, or a bad peer
                    logger.debug("exporter: handshake with %s refused: %s", client_address[0], exc)
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("exporter: a scrape from %s ended early", client_address[0])


class MetricsApp:
    """``GET /metrics`` in the format the scraper asks for: OpenMetrics (as Prometheus asks) or the text format.

    The fleet's gauges are :class:`FleetEncoder`'s (the same lines in both formats), the rest and the format's
    choice are ``prometheus_client``'s.

    An encoding is kept and served again while nothing was polled since, or for ``max_age`` seconds at most
    when polls go on (``max_stale`` when nothing changed, for the spool's depth): however many scrapers there
    are, a fleet's encoding costs the collector at most one build per ``max_age``.
    """

    def __init__(
        self,
        view: FleetView,
        *,
        max_age: float = 1.0,
        max_stale: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._max_age, self._max_stale, self._clock = max_age, max_stale, clock
        self._lock = threading.Lock()
        self._encoder = FleetEncoder()
        self._cache: dict[tuple[str, bool], tuple[int, float, bytes]] = {}  # (type, gzip) -> version, built, body
        self.builds = 0

    def body(self, accept: str = "", accept_encoding: str = "") -> tuple[str, bool, bytes]:
        encoder, content_type = choose_encoder(accept)
        zipped = gzip_accepted(accept_encoding)
        key = (content_type, zipped)
        with self._lock:
            now, version = self._clock(), self._view.version
            cached = self._cache.get(key)
            if cached is not None:
                built_version, built, body = cached
                age = now - built
                if age < self._max_age or (built_version == version and age < self._max_stale):
                    return content_type, zipped, body
            body = self._encoder.encode(self._view.snapshot()).encode() + encoder(self._view.registry)
            if zipped:
                body = gzip.compress(body, compresslevel=1)  # repetitive text: ~10x smaller even at the fastest level
            self._cache[key] = (version, now, body)
            self.builds += 1
            return content_type, zipped, body

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        method = environ.get("REQUEST_METHOD")
        if environ.get("PATH_INFO") != "/metrics" or method not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"not found\n"]
        content_type, zipped, body = self.body(environ.get("HTTP_ACCEPT", ""), environ.get("HTTP_ACCEPT_ENCODING", ""))
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if zipped:
            headers.append(("Content-Encoding", "gzip"))
        start_response("200 OK", headers)
        return [body] if method == "GET" else [b""]


class Exporter:
    """Serves ``/metrics`` for a :class:`FleetView` on a thread of its own until :meth:`close`."""

    def __init__(
        self,
        view: FleetView,
        listen: str,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        address = parse_listen(listen)
        context = server_context(*tls) if tls is not None else None
        self._server = _Server(address, context)
        self.app = MetricsApp(view)
        self._server.set_app(self.app)
        bound = self._server.server_address
        self.address = ListenAddress(str(bound[0]), int(bound[1]))
        self._thread = threading.Thread(target=self._server.serve_forever, name="collector-exporter", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
