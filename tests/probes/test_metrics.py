"""MetricsService: the get_metrics/get_info structs, the background thread, and thread safety."""

from __future__ import annotations

import os
import shutil
import statistics
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from secure_agent.config import AgentConfig
from secure_agent.metrics import FAST_INTERVAL, METRICS, MetricsService

WAIT = 10.0
SYSLOG_NOW = datetime(2026, 3, 10, 3, 22).timestamp()
TOP_LEVEL: dict[str, type | tuple[type, ...]] = {
    "agent": str, "timestamp": float, "version": str, "cpu_usage": (float, type(None)),
    "cpu_temperature": (float, type(None)), "load_1": (float, type(None)), "load_5": (float, type(None)),
    "load_15": (float, type(None)), "memory_usage": (float, type(None)), "disk_usage": (float, type(None)),
    "security_issues": int, "threat_level": str, "temperature": dict, "cpu": dict, "load": dict,
    "memory": (dict, type(None)), "disks": list, "security": dict, "unavailable": dict, "sample_seq": int,
}
SECURITY_KEYS = {"threat_level", "issues", "scanned_at", "age", "ssh_failures", "unknown_processes", "findings"}

ConfigFactory = Callable[..., AgentConfig]


def check_wire(value: Any, path: str = "$") -> None:
    """Only what XML-RPC carries: str (<= 512), 32-bit int, float, bool, None, list, str-keyed dict."""
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, str), path
            check_wire(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_wire(item, f"{path}[{index}]")
    elif isinstance(value, bool) or value is None or isinstance(value, float):
        pass
    elif isinstance(value, int):
        assert -(2**31) <= value < 2**31, path
    else:
        assert isinstance(value, str) and len(value) <= 512, path


def check_struct(snapshot: dict[str, Any]) -> None:
    assert set(snapshot) == set(TOP_LEVEL)
    for key, kind in TOP_LEVEL.items():
        assert isinstance(snapshot[key], kind), key
    assert set(snapshot["security"]) == SECURITY_KEYS
    assert set(snapshot["temperature"]) == {"celsius", "reason", "sensor", "high", "critical"}
    assert set(snapshot["cpu"]) == {"percent", "per_core", "count"}
    assert set(snapshot["load"]) == {"load_1", "load_5", "load_15", "per_core_1"}
    assert snapshot["threat_level"] in {"none", "low", "medium", "high"}
    assert snapshot["security_issues"] == snapshot["security"]["issues"]
    assert set(snapshot["unavailable"]) <= set(METRICS)
    check_wire(snapshot)
    xmlrpc.client.loads(xmlrpc.client.dumps((snapshot,), allow_none=True))


@pytest.fixture
def fixture_proc(copy_tree: Callable[[str], Path], fixtures: Path) -> Path:
    """The fixture process/socket table plus the fixture stat, loadavg, meminfo and mounts."""
    root = copy_tree("proc/host")
    for name in ("stat", "loadavg", "meminfo", "filesystems", "mounts"):
        shutil.copy(fixtures / "proc" / "basic" / name, root / name)
    return root


def test_everything_from_fixture_trees(
    fixture_proc: Path, fixtures: Path, tmp_path: Path, make_config: ConfigFactory
) -> None:
    log = tmp_path / "auth.log"
    shutil.copy(fixtures / "auth" / "auth.log", log)
    config = make_config(auth_log_paths=[str(log)])
    service = MetricsService(
        config, proc_root=fixture_proc, sys_root=fixtures / "sys" / "coretemp", clock=lambda: SYSLOG_NOW
    )
    service.refresh()
    snapshot = service.snapshot()
    check_struct(snapshot)
    assert snapshot["cpu_temperature"] == 64.0
    assert snapshot["temperature"] == {
        "celsius": 64.0, "reason": None, "sensor": "coretemp/Core 1", "high": 84.0, "critical": 100.0,
    }
    assert (snapshot["load_1"], snapshot["load_5"], snapshot["load_15"]) == (0.52, 0.38, 0.21)
    assert snapshot["load"]["per_core_1"] == 0.26  # two CPUs in the fixture /proc/stat
    assert snapshot["memory"]["total"] == 16315412 * 1024.0
    assert snapshot["disks"][0]["mount"] == "/" and snapshot["disk_usage"] is not None
    security = snapshot["security"]
    kinds = {finding["kind"] for finding in security["findings"]}
    assert kinds == {
        "ssh_bruteforce", "exec_from_tmp", "deleted_executable", "suspicious_port_listener",
        "suspicious_port_connection",
    }
    assert snapshot["threat_level"] == "high" and security["ssh_failures"] == 45
    assert security["unknown_processes"] == 3 and security["age"] == 0.0 and security["scanned_at"] == SYSLOG_NOW
    assert security["findings"][0]["severity"] == "high"  # most severe first
    assert list(snapshot["unavailable"]) == ["cpu_usage"]  # less than a CPU window since refresh()
    assert snapshot["unavailable"]["cpu_usage"].startswith("measuring")
    info = service.info()
    assert info["metrics"] == dict.fromkeys(METRICS, True) and info["unavailable"] == {}


def test_this_machine(make_config: ConfigFactory) -> None:
    service = MetricsService(make_config())
    service.refresh()
    snapshot = service.snapshot()
    check_struct(snapshot)
    assert snapshot["cpu"]["count"] == os.cpu_count()
    assert snapshot["memory_usage"] is not None and snapshot["disk_usage"] is not None
    assert snapshot["security"]["scanned_at"] is not None
    if snapshot["cpu_temperature"] is None:  # this VM: no sensor, and a reason for it
        assert snapshot["unavailable"]["cpu_temperature"] == snapshot["temperature"]["reason"]
        assert service.info()["metrics"]["cpu_temperature"] is False
    # the configured auth log does not exist: a lasting reason, reported by get_info too
    assert "ssh_auth_log" in service.info()["unavailable"]


def test_disabled_metrics_are_none_with_a_reason(make_config: ConfigFactory) -> None:
    off = dict.fromkeys(("enable_temperature", "enable_cpu", "enable_memory", "enable_disk", "enable_security"), False)
    service = MetricsService(make_config(metrics=off))
    service.refresh()
    snapshot = service.snapshot()
    check_struct(snapshot)
    for key in ("cpu_usage", "cpu_temperature", "load_1", "memory_usage", "disk_usage", "memory"):
        assert snapshot[key] is None, key
    assert snapshot["unavailable"] == dict.fromkeys(METRICS, "disabled by configuration")
    assert snapshot["security"]["findings"] == [] and snapshot["threat_level"] == "none"
    info = service.info()
    assert info["metrics"] == dict.fromkeys(METRICS, False)
    assert info["name"] == "probe-test" and info["platform"] == "linux" and info["python"].count(".") == 2


def test_before_the_first_scan_security_is_pending_not_unavailable(make_config: ConfigFactory) -> None:
    service = MetricsService(make_config())
    snapshot = service.snapshot()
    check_struct(snapshot)
    assert snapshot["security"]["scanned_at"] is None and snapshot["security"]["age"] is None
    assert snapshot["unavailable"]["processes"] == "first security scan not finished yet"
    assert snapshot["unavailable"]["cpu_temperature"] == "not measured yet"
    info = service.info()
    assert info["metrics"]["processes"] and info["metrics"]["cpu_usage"]  # pending is not a host limit


def test_an_empty_root_degrades_without_raising(tmp_path: Path, make_config: ConfigFactory) -> None:
    service = MetricsService(make_config(), proc_root=tmp_path, sys_root=tmp_path)
    service.refresh()
    snapshot = service.snapshot()
    check_struct(snapshot)
    assert set(snapshot["unavailable"]) == set(METRICS)
    assert snapshot["unavailable"]["load"] == f"{tmp_path / 'loadavg'} unreadable: FileNotFoundError"
    assert service.info()["metrics"] == dict.fromkeys(METRICS, False)


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_other_platforms_degrade(platform: str, make_config: ConfigFactory) -> None:
    """The macOS/Windows code paths, run here: psutil serves what it can, the rest is None with a reason."""
    service = MetricsService(make_config(), platform=platform)
    service.refresh()
    snapshot = service.snapshot()
    check_struct(snapshot)
    assert platform in snapshot["unavailable"]["cpu_temperature"]
    assert snapshot["memory_usage"] is not None and snapshot["disk_usage"] is not None
    assert (snapshot["load_1"] is None) == (platform == "win32")
    assert service.info()["platform"] == platform


def test_findings_are_capped_most_severe_first(tmp_path: Path, make_config: ConfigFactory) -> None:
    for pid in range(1000, 1300):
        (tmp_path / str(pid)).mkdir()
        os.symlink(f"/tmp/drop-{pid}", tmp_path / str(pid) / "exe")
    (tmp_path / "1300").mkdir()
    os.symlink("/dev/shm/x (deleted)", tmp_path / "1300" / "exe")
    service = MetricsService(make_config(), proc_root=tmp_path)
    service.refresh()
    security = service.snapshot()["security"]
    assert security["issues"] == 302 and len(security["findings"]) == 256
    assert [f["severity"] for f in security["findings"][:2]] == ["high", "high"]


def test_background_thread_scans_at_once_and_stops_promptly(make_config: ConfigFactory) -> None:
    service = MetricsService(make_config(check_interval=3600))
    before = threading.active_count()
    service.start()
    service.start()  # idempotent
    try:
        assert threading.active_count() == before + 1
        assert service.wait_for_scan(WAIT)
        snapshot = service.snapshot()
        assert snapshot["security"]["scanned_at"] is not None
        assert snapshot["temperature"]["reason"] != "not measured yet"  # start() read it before returning
        deadline = time.monotonic() + WAIT
        while service.snapshot()["cpu_usage"] is None:  # the first CPU window is one second
            assert time.monotonic() < deadline
            threading.Event().wait(0.05)
        assert 0.0 <= service.snapshot()["cpu_usage"] <= 100.0
    finally:
        started = time.monotonic()
        assert service.stop(WAIT)
        assert time.monotonic() - started < FAST_INTERVAL  # an Event wakes it: a sleep would last a whole tick
    assert threading.active_count() == before


def test_snapshot_does_not_wait_for_a_scan_in_progress(make_config: ConfigFactory) -> None:
    service = MetricsService(make_config())
    service.refresh()
    with service._scan_lock:  # stands for a long scan holding the scanner
        scanner = threading.Thread(target=service.refresh)
        scanner.start()
        started = time.perf_counter()
        snapshot = service.snapshot()
        elapsed = time.perf_counter() - started
        assert scanner.is_alive()
    scanner.join(WAIT)
    assert snapshot["security"]["scanned_at"] is not None and elapsed < 0.05


def test_concurrent_callers(make_config: ConfigFactory) -> None:
    service = MetricsService(make_config(check_interval=1))
    service.start()
    errors: list[BaseException] = []
    timings: list[float] = []

    def call() -> None:
        try:
            for _ in range(100):
                started = time.perf_counter()
                snapshot = service.snapshot()
                timings.append(time.perf_counter() - started)
                assert snapshot["agent"] == "probe-test"
                service.info()
        except BaseException as exc:  # collected and re-raised in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=call) for _ in range(8)]
    try:
        for worker in workers:
            worker.start()
        service.refresh()  # a scan from this thread too, while they call
        for worker in workers:
            worker.join(WAIT * 3)
    finally:
        assert service.stop(WAIT)
    assert not errors and len(timings) == 800
    assert statistics.median(timings) < 0.01  # generous: the bench measures the real cost


def test_a_failing_clock_still_gets_an_answer(make_config: ConfigFactory, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever goes wrong inside, get_metrics() answers with the right shape and says why."""

    def broken_clock() -> float:
        raise RuntimeError("clock source gone")

    service = MetricsService(make_config(), clock=broken_clock)
    snapshot = service.snapshot()
    check_struct(snapshot)
    assert snapshot["unavailable"] == dict.fromkeys(METRICS, "internal error while reading metrics")
    assert service.info()["metrics"] == dict.fromkeys(METRICS, False)
    assert "building the metrics snapshot failed" in caplog.text
