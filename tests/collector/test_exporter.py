"""The collector's ``/metrics`` endpoint (``exporter.listen``), scraped from a running collector.

What it serves must be what the collector stored (the same sample), every numeric sample field must appear
without the exporter naming it, plain HTTP is served on loopback only, and with ``exporter.tls`` a scraper
without a certificate of ``exporter.tls.ca`` gets no answer at all.
"""

from __future__ import annotations

import gzip
import http.client
import queue
import re
import signal
import ssl
import subprocess
import threading
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pki import tls
from secure_collector.exporter import GAUGE_FIELDS, FleetView, MetricsApp
from secure_collector.listen import is_loopback, parse_listen
from storage.models import Sample
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.collector.test_cli import RUN_TIMEOUT, _program, _run
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI

LISTENING = re.compile(r"exporter: serving /metrics on (https?)://([0-9.]+|\[[0-9a-f:]+\]):(\d+)")
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _series(text: str) -> Scrape:
    """Every series of an exposition: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _get(port: int, context: ssl.SSLContext | None = None, path: str = "/metrics") -> tuple[int, str]:
    connection: http.client.HTTPConnection
    if context is None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@contextmanager
def running_collector(config: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A collector service; yields it and the port its exporter logged, once it logged it.

    Its stderr is read to the end on a thread of its own, so that a chatty collector never blocks on the pipe.
    """
    service = subprocess.Popen([*_program(), "--config", str(config)], stderr=subprocess.PIPE, text=True)
    lines: queue.SimpleQueue[str] = queue.SimpleQueue()
    stderr = service.stderr
    assert stderr is not None

    def read() -> None:
        for line in stderr:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        port = None
        deadline = time.monotonic() + RUN_TIMEOUT
        while port is None and time.monotonic() < deadline:
            try:
                found = LISTENING.search(lines.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
            if found:
                port = int(found.group(3))
        assert port is not None, f"no exporter line (exit {service.poll()})"
        yield service, port
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=RUN_TIMEOUT)
        assert service.returncode == 0
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        reader.join(timeout=RUN_TIMEOUT)
        stderr.close()


def _wait_for_poll(port: int, agent: str, context: ssl.SSLContext | None = None) -> Scrape:
    """Scrape until ``agent`` has been polled (bounded)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status, text = _get(port, context)
        assert status == 200
        series = _series(text)
        if ("secure_monitor_last_poll_timestamp_seconds", (("agent", agent),)) in series:
            return series
        time.sleep(0.05)  # polling an observable condition, bounded by the deadline
    raise AssertionError(f"{agent} never appeared in /metrics")


def test_every_numeric_sample_field_is_a_gauge_without_being_named() -> None:
    def kinds(annotation: object) -> set[object]:
        return set(typing.get_args(annotation) or (annotation,)) - {type(None)}

    numeric = {
        name
        for name, field in Sample.model_fields.items()
        if name != "timestamp" and kinds(field.annotation) <= {int, float}
    }
    assert set(GAUGE_FIELDS) == numeric
    assert {"cpu_usage", "load_1", "memory_usage", "disk_usage", "security_issues", "swap_usage"} <= numeric


def test_the_scrape_serves_what_was_stored(test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path) -> None:
    agent = start_agent(test_pki)
    data = collector_data(
        test_pki,
        tmp_path,
        [("localhost", agent.host, agent.port), ("gone", "127.0.0.1", 9)],
        poll_interval=3600,  # one sweep: the stored sample is the one served
        exporter={"listen": "127.0.0.1:0"},
        thresholds={"cpu_usage": 0},  # one alert fires
    )
    path = write_config(tmp_path, data)
    with running_collector(path) as (_, port):
        series = _wait_for_poll(port, "gone")
        series = _wait_for_poll(port, "localhost")
        status, body = _get(port, path="/")
        assert status == 404 and "secure_monitor" not in body
    frame = read_store(load(data)).query_samples(*WIDE, agent="localhost")
    assert len(frame) == 1
    sample = frame.iloc[0]
    localhost = (("agent", "localhost"),)
    for name in GAUGE_FIELDS:
        value = sample[name]
        key = (f"secure_monitor_{name}", localhost)
        if pd.isna(value):
            assert key not in series
        else:
            assert series[key] == pytest.approx(float(value)), name
    assert series[("secure_monitor_last_sample_timestamp_seconds", localhost)] == pytest.approx(sample["timestamp"])
    # an enum is one series, 1, for its current value (a change makes the old series stale in Prometheus)
    assert [labels for (name, labels) in series if name == "secure_monitor_threat_level"] == [
        (("agent", "localhost"), ("level", sample["threat_level"]))
    ]
    assert series[("secure_monitor_threat_level", (("agent", "localhost"), ("level", sample["threat_level"])))] == 1
    states = {labels: value for (name, labels), value in series.items() if name == "secure_monitor_agent_state"}
    assert states == {
        (("agent", "gone"), ("state", "unreachable")): 1.0,
        (("agent", "localhost"), ("state", "up")): 1.0,
    }
    assert ("secure_monitor_cpu_usage", (("agent", "gone"),)) not in series  # never answered: no value made up
    assert series[("secure_monitor_alerts_firing", localhost)] >= 1  # cpu_usage at or above 0
    assert series[("secure_monitor_alerts_firing", (("agent", "gone"),))] == 1  # its agent_state alert
    count = series[("secure_monitor_poll_duration_seconds_count", (("state", "up"),))]
    assert count == 1.0
    assert ("secure_monitor_spool_bytes", ()) in series


def _exporter_pki(test_pki: TestPKI) -> tuple[Path, Path]:
    return test_pki.issue("exporter", "server", hosts=["127.0.0.1"], folder="exporter")


def test_with_tls_only_scrapers_holding_a_certificate_of_its_ca_are_answered(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki)
    cert, key = _exporter_pki(test_pki)
    data = collector_data(
        test_pki,
        tmp_path,
        [("localhost", agent.host, agent.port)],
        poll_interval=3600,
        exporter={"listen": "127.0.0.1:0", "tls": {"cert": str(cert), "key": str(key), "ca": str(test_pki.ca)}},
    )
    client_cert, client_key, _ = test_pki.collector_files()
    scraper = tls.client_context(client_cert, client_key, test_pki.ca)
    anonymous = ssl.create_default_context(cafile=str(test_pki.ca))
    with running_collector(write_config(tmp_path, data)) as (service, port):
        series = _wait_for_poll(port, "localhost", scraper)
        assert series[("secure_monitor_agent_state", (("agent", "localhost"), ("state", "up")))] == 1.0
        with pytest.raises((ssl.SSLError, ConnectionError)):
            _get(port, anonymous)  # no client certificate: the handshake fails, nothing is served
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            _get(port)  # plain HTTP to a TLS listener
        assert _get(port, scraper)[0] == 200  # and the exporter still serves
        assert service.poll() is None


@pytest.mark.parametrize("listen", ["0.0.0.0:9108", "[::]:0", "192.0.2.7:9108", "example.org:9108"])
def test_plain_http_off_loopback_is_refused_at_start(test_pki: TestPKI, tmp_path: Path, listen: str) -> None:
    data = collector_data(test_pki, tmp_path, [("a", "127.0.0.1", 9)], exporter={"listen": listen})
    result = _run("--config", str(write_config(tmp_path, data)), "--once")
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "exporter" in line and "loopback" in line and "exporter.tls" in line, line
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("listen", "problem"),
    [("9108", "HOST:PORT"), ("::1:9108", "brackets"), ("127.0.0.1:99999", "port"), ("127.0.0.1:９１", "port")],
)
def test_a_malformed_listen_address_says_what_is_wrong(
    test_pki: TestPKI, tmp_path: Path, listen: str, problem: str
) -> None:
    data = collector_data(test_pki, tmp_path, [("a", "127.0.0.1", 9)], exporter={"listen": listen})
    result = _run("--config", str(write_config(tmp_path, data)), "--once")
    assert result.returncode == 2
    assert "exporter.listen" in result.stderr and problem in result.stderr, result.stderr


def test_loopback_is_judged_on_the_address() -> None:
    assert is_loopback(parse_listen("127.0.0.2:1").host)
    assert is_loopback(parse_listen("[::1]:1").host)
    assert is_loopback(parse_listen("localhost:0").host)
    assert not is_loopback(parse_listen("10.0.0.1:1").host)


def test_a_port_in_use_is_a_start_error(test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path) -> None:
    agent = start_agent(test_pki)
    data: dict[str, Any] = collector_data(
        test_pki, tmp_path, [("localhost", agent.host, agent.port)], exporter={"listen": "127.0.0.1:0"}
    )
    with running_collector(write_config(tmp_path, data)) as (_, port):
        other = {**data, "spool_dir": str(tmp_path / "spool2"), "exporter": {"listen": f"127.0.0.1:{port}"}}
        other["storage"] = {**data["storage"], "json_file": str(tmp_path / "data2" / "m.json")}
        service = subprocess.run(
            [*_program(), "--config", str(write_config(tmp_path, other, "other.json"))],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        assert service.returncode == 2
        assert "exporter.listen: cannot listen on" in service.stderr and "Traceback" not in service.stderr


def test_a_scrape_reuses_its_encoding_until_something_was_polled_and_a_moment_passed() -> None:
    now = [1000.0]
    view = FleetView(spool_bytes=lambda: 0)
    app = MetricsApp(view, max_age=1.0, max_stale=15.0, clock=lambda: now[0])
    sample = Sample(agent="a1", timestamp=1.0, cpu_usage=5.0)
    view.observe("a1", 1.0, "up", 3.0, sample, {})
    first = app.body()[2]
    assert app.body()[2] is first and app.builds == 1  # nothing changed
    view.observe("a1", 2.0, "up", 3.0, sample.model_copy(update={"cpu_usage": 7.0}), {})
    assert app.body()[2] is first  # changed, but within max_age: at most one build per max_age
    now[0] += 1.0
    second = app.body()[2]
    assert app.builds == 2 and b'secure_monitor_cpu_usage{agent="a1"} 7.0' in second
    now[0] += 14.0
    assert app.body()[2] is second  # unchanged: kept up to max_stale
    now[0] += 1.0
    assert app.body()[2] is not second and app.builds == 3
    # compressed for scrapers that accept it, the same text
    kind, zipped, body = app.body("", "gzip")
    assert kind.startswith("text/plain; version=0.0.4") and zipped
    assert gzip.decompress(body) == app.body()[2]
    # OpenMetrics for a scraper that asks for it, as Prometheus does
    kind, _, body = app.body("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5")
    assert kind.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    assert body.startswith(app.body()[2][:200])
