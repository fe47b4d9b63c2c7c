"""The collector's OpenMetrics endpoint (``exporter.listen``): what it last saw of each agent, for Prometheus.

The recording thread only drops each poll's outcome into a dict (:meth:`FleetView.observe`); a scrape turns
that snapshot into series on the HTTP thread, so scrapes never wait for polling nor polling for scrapes.
Every numeric field of :class:`storage.models.Sample` becomes a gauge by itself: a new metric needs no
change here. The encoding, content negotiation and compression are ``prometheus_client``'s; the listener
is ours, so that the endpoint gets the same TLS floor as the agents, a bounded number of connections and
no per-request log lines.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, NamedTuple
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pki.tls import server_context
from secure_collector.listen import ListenAddress, parse_listen
from storage.models import AgentState, Sample, Severity, ThreatLevel

logger = logging.getLogger(__name__)

PREFIX = "secure_monitor_"
MAX_CONNECTIONS = 16
"""Scrapes served at once; a connection beyond them is closed at once (Prometheus retries next interval)."""
IO_TIMEOUT = 10.0
"""Seconds a peer may take for its TLS handshake and for each read or write of its request."""
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATES: tuple[str, ...] = typing.get_args(AgentState)
LEVELS: tuple[str, ...] = typing.get_args(ThreatLevel)
SEVERITIES: tuple[str, ...] = typing.get_args(Severity)


def _numeric(annotation: Any) -> bool:
    """``int``, ``float``, or either of them or None (bool is not a gauge)."""
    if annotation in (int, float):
        return True
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


GAUGE_FIELDS: tuple[str, ...] = tuple(
    name for name, field in Sample.model_fields.items() if name != "timestamp" and _numeric(field.annotation)
)
"""Every numeric sample field, in the model's order: each is exported as ``secure_monitor_<field>{agent}``."""


class Seen(NamedTuple):
    """What the collector last saw of one agent."""

    polled: float  # when the last poll ended (Unix seconds)
    state: str
    sample: Sample | None  # the last good sample, kept across failed polls
    firing: Mapping[str, str]  # metric -> severity of the alerts firing now


class FleetView:
    """The latest outcome per agent, written by the recording thread, read by scrapes.

    One dict assignment per poll: a reader sees, for each agent, either the previous outcome or the new one.
    """

    def __init__(self, spool_bytes: Callable[[], int] | None = None) -> None:
        self._seen: dict[str, Seen] = {}
        self._spool_bytes = spool_bytes
        self.registry = CollectorRegistry(auto_describe=False)
        self.poll_duration = Histogram(
            f"{PREFIX}poll_duration_seconds",
            "How long polls took, by their outcome",
            ["state"],
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_FleetCollector(self))

    def observe(
        self, agent: str, polled: float, state: str, latency_ms: float, sample: Sample | None, firing: Mapping[str, str]
    ) -> None:
        if sample is None:
            previous = self._seen.get(agent)
            sample = previous.sample if previous is not None else None
        self._seen[agent] = Seen(polled, state, sample, firing)
        self.poll_duration.labels(state).observe(max(latency_ms, 0.0) / 1000.0)

    def snapshot(self) -> list[tuple[str, Seen]]:
        return list(self._seen.items())

    def spool_bytes(self) -> int | None:
        if self._spool_bytes is None:
            return None
        try:
            return self._spool_bytes()
        except OSError:
            return None


class _FleetCollector(Collector):
    def __init__(self, view: FleetView) -> None:
        self._view = view

    def describe(self) -> Iterable[Metric]:
        return []  # names are ours alone in this registry: no collision check needed at registration

    def collect(self) -> Iterator[Metric]:
        seen = self._view.snapshot()
        gauges = {
            name: GaugeMetricFamily(f"{PREFIX}{name}", f"The agent's last {name} sample", labels=["agent"])
            for name in GAUGE_FIELDS
        }
        threat = GaugeMetricFamily(
            f"{PREFIX}threat_level", "1 for the agent's current threat level", labels=["agent", "level"]
        )
        state = GaugeMetricFamily(
            f"{PREFIX}agent_state", "1 for the outcome of the agent's last poll", labels=["agent", "state"]
        )
        polled = GaugeMetricFamily(
            f"{PREFIX}last_poll_timestamp_seconds", "When the agent's last poll ended", labels=["agent"]
        )
        sampled = GaugeMetricFamily(
            f"{PREFIX}last_sample_timestamp_seconds", "The time of the agent's last good sample", labels=["agent"]
        )
        firing = GaugeMetricFamily(
            f"{PREFIX}alerts_firing", "Alerts firing now, by severity", labels=["agent", "severity"]
        )
        broken = GaugeMetricFamily(
            f"{PREFIX}audit_chain_broken", "1 while the agent's audit trail is held broken", labels=["agent"]
        )
        for agent, last in seen:
            polled.add_metric([agent], last.polled)
            for name in STATES:
                state.add_metric([agent, name], 1.0 if last.state == name else 0.0)
            broken.add_metric([agent], 1.0 if last.state == "audit_broken" else 0.0)
            counts = dict.fromkeys(SEVERITIES, 0)
            for severity in last.firing.values():
                counts[severity] = counts.get(severity, 0) + 1
            for severity, count in counts.items():
                firing.add_metric([agent, severity], float(count))
            sample = last.sample
            if sample is None:
                continue
            sampled.add_metric([agent], sample.timestamp)
            for name, gauge in gauges.items():
                value = getattr(sample, name)
                if value is not None:
                    gauge.add_metric([agent], float(value))
            for level in LEVELS:
                threat.add_metric([agent, level], 1.0 if sample.threat_level == level else 0.0)
        yield from gauges.values()
        yield from (threat, state, polled, sampled, firing, broken)
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


def _only_metrics(app: Callable[..., Any]) -> Callable[..., Any]:
    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/metrics" or environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
            return [b"not found\n"]
        return app(environ, start_response)

    return serve


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
        self._server.set_app(_only_metrics(make_wsgi_app(view.registry)))
        bound = self._server.server_address
        self.address = ListenAddress(str(bound[0]), int(bound[1]))
        self._thread = threading.Thread(target=self._server.serve_forever, name="collector-exporter", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
