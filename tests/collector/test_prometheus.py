"""A real Prometheus scraping a real collector over mutual TLS, and promtool on our rules and exposition.

The test command installs Debian's ``prometheus`` package (``prometheus`` and ``promtool``); Prometheus runs
on loopback with its data in the test's directory and is stopped at the end.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pki import tls
from secure_collector.config import Thresholds
from secure_collector.exporter import GAUGE_FIELDS
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.collector.test_exporter import _get, running_collector
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "secure-monitor-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "secure-monitor.json"
PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
_DAYS_NOTE = re.compile(r'secure_monitor_cert_(days_left|lifetime_days) use base unit "seconds" instead of "days"')
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None or PROMTOOL is None,
    reason="prometheus/promtool not installed (scripts/test.sh installs Debian's prometheus package)",
)
WAIT = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _api(port: int, path: str, **query: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@contextmanager
def prometheus(folder: Path, config: dict[str, Any]) -> Iterator[int]:
    """Prometheus on a free loopback port (tried again on another if it lost the port to someone else)."""
    assert PROMETHEUS is not None
    folder.mkdir()
    (folder / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    with (folder / "prometheus.log").open("w") as log:
        for _ in range(3):
            port = _free_port()
            process = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={folder / 'prometheus.yml'}",
                    f"--storage.tsdb.path={folder / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
            try:
                if _ready(process, port):
                    yield port
                    return
            finally:
                if process.poll() is None:
                    process.terminate()
                    process.wait(timeout=WAIT)
    raise AssertionError(f"prometheus did not start: {(folder / 'prometheus.log').read_text()[-2000:]}")


def _ready(process: subprocess.Popen[bytes], port: int) -> bool:
    deadline = time.monotonic() + WAIT
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as ready:
                if ready.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)  # polling an observable condition, bounded by the deadline
    return False


def _query(port: int, expr: str) -> list[dict[str, Any]]:
    answer = _api(port, "/api/v1/query", query=expr)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def _wait_for(port: int, expr: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        result = _query(port, expr)
        if result:
            return result
        time.sleep(0.2)  # polling an observable condition, bounded by the deadline
    raise AssertionError(f"prometheus never had {expr}")


@needs_prometheus
def test_prometheus_scrapes_the_collector_over_mutual_tls(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki)
    server_cert, server_key = test_pki.issue("exporter", "server", hosts=["127.0.0.1"], folder="prometheus")
    scraper_cert, scraper_key = test_pki.issue("prometheus", "client", folder="prometheus")
    data = collector_data(
        test_pki,
        tmp_path,
        [("localhost", agent.host, agent.port), ("gone", "127.0.0.1", 9)],
        poll_interval=3600,  # one sweep: the value Prometheus holds is the one stored
        exporter={
            "listen": "127.0.0.1:0",
            "tls": {"cert": str(server_cert), "key": str(server_key), "ca": str(test_pki.ca)},
        },
    )
    with running_collector(write_config(tmp_path, data)) as (_, exporter_port):
        scraper = tls.client_context(scraper_cert, scraper_key, test_pki.ca)
        status, exposition = _get(exporter_port, scraper)
        assert status == 200
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": "secure-monitor",
                    "scheme": "https",
                    "tls_config": {
                        "ca_file": str(test_pki.ca),
                        "cert_file": str(scraper_cert),
                        "key_file": str(scraper_key),
                    },
                    "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"]}],
                }
            ],
        }
        with prometheus(tmp_path / "prometheus", config) as port:
            [up] = _wait_for(port, 'up{job="secure-monitor"} == 1')
            [memory] = _wait_for(port, 'secure_monitor_memory_usage{agent="localhost"}')
            [state] = _wait_for(port, 'secure_monitor_agent_state{agent="gone",state="unreachable"}')
            firing = _wait_for(port, 'ALERTS{alertname="SecureMonitorAgentDown",alertstate="firing"}')
            answered = {expr: _query(port, expr) for expr in _dashboard_queries()}  # each one valid PromQL
    frame = read_store(load(data)).query_samples(*WIDE, agent="localhost")
    assert float(memory["value"][1]) == pytest.approx(float(frame.iloc[0]["memory_usage"]))
    assert state["value"][1] == "1"
    assert [a["metric"]["agent"] for a in firing] == ["gone"]
    assert up["metric"]["instance"] == f"127.0.0.1:{exporter_port}"
    # the dashboard's panels draw the agent that answered
    with_data = {
        expr for expr, result in answered.items() if any(r["metric"].get("agent") == "localhost" for r in result)
    }
    for expected in ("memory_usage", "disk_usage", "load_1", "agent_state", "threat_level", "alerts_firing"):
        assert any(f"secure_monitor_{expected}" in expr for expr in with_data), expected
    # the exposition passes promtool's lint
    assert PROMTOOL is not None
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True, check=False)
    problems = [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]
    # CONTRACT.md names every gauge after its sample field: the certificate's days keep their unit in the
    # name (secure_monitor_cert_days_left), which promtool's base-unit convention (seconds) flags whenever
    # the exposition holds a value of them; that one note is expected, anything else is a problem
    unexpected = [line for line in problems if not _DAYS_NOTE.fullmatch(line.strip())]
    assert not unexpected, "\n".join(problems)
    assert lint.returncode in (0, 3) and (lint.returncode == 0) == (not problems), lint.returncode


def _dashboard_queries() -> list[str]:
    """Every query of the Grafana dashboard, with its variables as Grafana would fill them for all agents."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"].replace("$agent", ".*").replace("$__rate_interval", "1m")
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def test_the_dashboard_asks_only_for_series_the_exporter_serves() -> None:
    served = {f"secure_monitor_{name}" for name in GAUGE_FIELDS} | {
        f"secure_monitor_{name}"
        for name in (
            "threat_level",
            "agent_state",
            "last_poll_timestamp_seconds",
            "last_sample_timestamp_seconds",
            "alerts_firing",
            "audit_chain_broken",
            "spool_bytes",
            "poll_duration_seconds_bucket",
        )
    }
    asked = {name for expr in _dashboard_queries() for name in re.findall(r"secure_monitor_[a-z0-9_]+", expr)}
    assert asked and asked <= served, asked - served
    rules = set(re.findall(r"secure_monitor_[a-z0-9_]+", RULES.read_text()))
    assert rules <= served, rules - served


@needs_prometheus
def test_the_rules_pass_promtool_and_fire_at_the_collectors_default_thresholds(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    checked = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    t = Thresholds()
    cases: list[tuple[str, str, str, float, float]] = [  # alert, metric, words, threshold, critical (as alerts.py)
        ("SecureMonitorCpuUsage", "cpu_usage", "CPU at {:g} %", t.cpu_usage, t.cpu_usage + (100 - t.cpu_usage) / 2),
        (
            "SecureMonitorMemoryUsage",
            "memory_usage",
            "memory at {:g} %",
            t.memory_usage,
            t.memory_usage + (100 - t.memory_usage) / 2,
        ),
        (
            "SecureMonitorDiskUsage",
            "disk_usage",
            "disk at {:g} %",
            t.disk_usage,
            t.disk_usage + (100 - t.disk_usage) / 2,
        ),
        ("SecureMonitorSystemLoad", "load_1", "1-minute load {:g}", t.system_load, 2 * t.system_load),
    ]
    tests = []
    for alert, metric, words, threshold, critical in cases:
        unit = " %" if "%" in words else ""
        below, warning = f"a{metric}below", f"a{metric}warning"
        series = [
            {"series": f'secure_monitor_{metric}{{agent="{below}"}}', "values": f"{threshold - 0.01}x2"},
            {"series": f'secure_monitor_{metric}{{agent="{warning}"}}', "values": f"{threshold}x2"},
            {"series": f'secure_monitor_{metric}{{agent="critical"}}', "values": f"{critical}x2"},
        ]
        expected = [  # the agent just below its threshold raises nothing
            {
                "exp_labels": {"severity": "warning", "agent": warning},
                "exp_annotations": {"summary": f"{warning}: {words.format(threshold)} (threshold {threshold:g}{unit})"},
            },
            {
                "exp_labels": {"severity": "critical", "agent": "critical"},
                "exp_annotations": {
                    "summary": f"critical: {words.format(critical)} (critical from {critical:g}{unit})"
                },
            },
        ]
        tests.append(
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [{"eval_time": "1m", "alertname": alert, "exp_alerts": expected}],
            }
        )
    unit_test = tmp_path / "rules-test.yml"
    unit_test.write_text(json.dumps({"rule_files": [str(RULES)], "evaluation_interval": "1m", "tests": tests}))
    result = subprocess.run([PROMTOOL, "test", "rules", str(unit_test)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
