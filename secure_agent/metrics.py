"""The agent's metrics: cheap readings on every call, expensive scans in the background.

:class:`MetricsService` answers ``get_metrics()`` (:meth:`~MetricsService.snapshot`) and ``get_info()``
(:meth:`~MetricsService.info`) with the structs of docs/protocol.md. A call reads only what is cheap
(CPU counters, load, memory: a few small procfs files) and serves the latest background results for the
rest, with their age, so it never waits on a scan. The background thread, started by
:meth:`~MetricsService.start`:

- every ``min(FAST_INTERVAL, check_interval)`` seconds reads the temperature and disks (sysfs hwmon
  reads and statvfs can each take milliseconds on real hardware) and ticks the CPU baseline;
- every ``check_interval`` seconds, the first time right away, runs the security scan (processes,
  sockets, auth logs).

:meth:`~MetricsService.snapshot_response` is the same struct as the XML-RPC method response the agent
sends, built without marshalling the parts only the background thread changes: the findings, disks
and temperature are rendered to XML once when they are read (:mod:`secure_agent.xmlwire`) and spliced.

Everything returned is XML-RPC-marshallable (str, 32-bit int, float, bool, None, list, dict with str keys)
and freshly built, so callers may share nothing; all methods are thread-safe and ``snapshot()`` and
``info()`` never raise. A metric this host cannot provide, or that ``metrics.enable_*`` turns off, is
``None`` with its reason under ``unavailable``.
"""

from __future__ import annotations

import logging
import os
import platform as platform_module
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from secure_agent import __version__, xmlwire
from secure_agent.buffer import SampleBuffer
from secure_agent.config import AgentConfig
from secure_agent.probes import registry
from secure_agent.probes._text import INT32_MAX
from secure_agent.probes.cpu import CpuReading, CpuSampler
from secure_agent.probes.disk import DiskReading, fullest, read_disks
from secure_agent.probes.load import LoadReading, read_load
from secure_agent.probes.memory import read_memory
from secure_agent.probes.security import SECURITY_METRICS, SecurityReport, SecurityScanner
from secure_agent.probes.temperature import TemperatureReading, read_temperature
from secure_agent.xmlwire import Fragment

logger = logging.getLogger(__name__)

FAST_INTERVAL = 5.0
DEFAULT_STOP_TIMEOUT = 5.0
MAX_PER_CORE = 1024
METRICS = ("cpu_temperature", "cpu_usage", "load", "memory_usage", "disk_usage", *SECURITY_METRICS)
DISABLED = "disabled by configuration"
NOT_YET = "not measured yet"
SCAN_PENDING = "first security scan not finished yet"
INTERNAL_ERROR = "internal error while reading metrics"


class _Slow(NamedTuple):
    """What the background thread last read, and when."""

    temperature: TemperatureReading
    disks: tuple[DiskReading, ...] | str
    read_at: float
    temperature_xml: Fragment  # the wire struct of each, rendered once (snapshot_response splices them)
    disks_xml: Fragment
    numbers: tuple[tuple[str, float | int | str], ...] = ()  # registered probes: a number or why not


def _temperature_struct(temperature: TemperatureReading) -> dict[str, Any]:
    return temperature._asdict()


def _disks_struct(disks: tuple[DiskReading, ...] | str) -> list[dict[str, Any]]:
    return [] if isinstance(disks, str) else [disk._asdict() for disk in disks]


class _Unavailable:
    """metric -> reason, remembering which reasons are transient (not a limit of the host)."""

    def __init__(self) -> None:
        self.reasons: dict[str, str] = {}
        self.transient: set[str] = set()

    def add(self, metric: str, reason: str, *, transient: bool = False) -> None:
        self.reasons[metric] = reason
        if transient:
            self.transient.add(metric)


def _no_security() -> dict[str, Any]:
    """The security struct before the first scan, or with security disabled."""
    return {
        "threat_level": "none", "issues": 0, "scanned_at": None, "age": None, "ssh_failures": None,
        "unknown_processes": 0, "findings": [],
    }


def buffered(struct: dict[str, Any]) -> dict[str, Any]:
    """A ``get_metrics`` struct for the sample buffer: what a stored sample keeps, the bulky details left out
    (per-core values, disks, findings, byte counts, the load section that repeats the top-level loads)."""
    sample = {key: value for key, value in struct.items() if key not in ("disks", "sample_seq", "load")}
    cpu, memory, security = struct.get("cpu"), struct.get("memory"), struct.get("security")
    if isinstance(cpu, dict):
        sample["cpu"] = {"count": cpu.get("count")}
    if isinstance(memory, dict):
        sample["memory"] = {"percent": memory.get("percent"), "swap_percent": memory.get("swap_percent")}
    if isinstance(security, dict):
        sample["security"] = {key: security.get(key) for key in ("threat_level", "issues", "age", "ssh_failures")}
    return sample


class MetricsService:
    def __init__(
        self,
        config: AgentConfig,
        *,
        proc_root: Path = Path("/proc"),
        sys_root: Path = Path("/sys"),
        clock: Callable[[], float] = time.time,
        platform: str = sys.platform,
    ) -> None:
        self._config = config
        self._proc_root = proc_root
        self._sys_root = sys_root
        self._clock = clock
        self._platform = platform
        self._cpu = CpuSampler(proc_root, platform=platform)
        self._scanner = SecurityScanner(config.security, proc_root=proc_root, platform=platform, clock=clock)
        self._lock = threading.Lock()  # guards the fields below
        self._slow: _Slow | None = None
        self._security: SecurityReport | None = None
        self._findings_xml: Fragment | None = None  # the wire list of self._security's findings
        self._scan_error: str | None = None
        self._thread: threading.Thread | None = None
        self._scan_lock = threading.Lock()  # one security scan at a time: it owns the log followers
        self._stop = threading.Event()
        self._scanned = threading.Event()
        self._logged_unavailable: dict[str, str] = {}
        self._buffer: SampleBuffer | None = None  # opened by start(): samples for get_samples
        self._probes: dict[str, registry.Probe] = {}
        self._metric_names: tuple[str, ...] = METRICS
        probes = registry.registered()  # plain numeric metrics (secure_agent.probes.registry)
        taken = sorted(set(probes) & set(self._fallback()))
        if taken:
            raise ValueError(f"a registered probe takes a member the answer has already: {', '.join(taken)}")
        self._probes = probes
        self._roots = registry.Roots(proc_root, sys_root)
        self._metric_names = (*METRICS, *probes)

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Read the fast-changing background metrics now and start the background thread."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            if self._buffer is None:
                buffer = self._config.buffer
                self._buffer = SampleBuffer(
                    self._config.buffer_path,
                    max_bytes=buffer.max_bytes,
                    max_age=buffer.max_age,
                    fsync_interval=buffer.fsync_interval,
                    clock=self._clock,
                )
            thread = threading.Thread(target=self._run, name="metrics-scan", daemon=True)
            self._thread = thread
        self._refresh_slow()
        thread.start()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> bool:
        """Stop the background thread; True when it has ended within ``timeout`` seconds."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                logger.warning("metrics thread still scanning after %.1f s; leaving it to finish", timeout)
                return False
        with self._scan_lock:
            self._scanner.close()
        if self._buffer is not None:
            self._buffer.close()
        return True

    def refresh(self) -> None:
        """Run every background reading and the security scan now, in the caller's thread."""
        self._refresh_slow()
        self._refresh_security()

    def wait_for_scan(self, timeout: float) -> bool:
        """Block until a security scan has completed (or ``timeout`` seconds pass)."""
        return self._scanned.wait(timeout)

    def _run(self) -> None:
        slow_every = min(FAST_INTERVAL, self._config.check_interval)
        scan_every = self._config.check_interval
        sample_every = self._config.sample_interval
        next_slow = time.monotonic() + slow_every
        next_scan = time.monotonic()
        next_sample = time.monotonic() + sample_every
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_scan:
                self._refresh_security()
                next_scan = max(now + scan_every, time.monotonic())
            if now >= next_slow:
                self._refresh_slow()
                next_slow = max(now + slow_every, time.monotonic())
            if now >= next_sample:
                self.take_sample()
                next_sample = max(now + sample_every, time.monotonic())
            self._stop.wait(max(0.0, min(next_slow, next_scan, next_sample) - time.monotonic()))

    def take_sample(self) -> int | None:
        """Put what ``get_metrics`` would answer now, without the bulky details, into the buffer; its seq."""
        if self._buffer is None:
            return None
        try:
            return self._buffer.append(buffered(self.snapshot()))
        except (OSError, ValueError) as exc:  # a full disk: this sample is lost, counted in the log
            logger.error("sample buffer: cannot store a sample: %s", exc)
            return None

    def samples(self, after: int, limit: int) -> dict[str, Any]:
        """The ``get_samples`` struct (docs/protocol.md)."""
        if self._buffer is None:
            return {"samples": [], "more": False, "gap": after > 0}
        page = self._buffer.page(after, limit)
        return {"samples": page.samples, "more": page.more, "gap": page.gap}

    def _refresh_slow(self) -> None:
        enabled = self._config.metrics
        try:
            if enabled.enable_cpu:
                self._cpu.sample()  # a background tick moves the CPU baseline when no one calls
            temperature = (
                read_temperature(self._sys_root, platform=self._platform)
                if enabled.enable_temperature
                else TemperatureReading(None, DISABLED, None, None, None)
            )
            disks = read_disks(self._proc_root, platform=self._platform) if enabled.enable_disk else DISABLED
            temperature_xml = xmlwire.fragment(_temperature_struct(temperature))
            disks_xml = xmlwire.fragment(_disks_struct(disks))
        except Exception:  # a probe bug must not kill the thread: logged with its traceback
            logger.exception("reading temperature/disks failed")
            return
        numbers = tuple((name, self._read_number(name, probe)) for name, probe in self._probes.items())
        with self._lock:
            self._slow = _Slow(temperature, disks, self._clock(), temperature_xml, disks_xml, numbers)

    def _read_number(self, name: str, probe: registry.Probe) -> float | int | str:
        try:
            return registry.wire_value(probe(self._roots))
        except Exception:  # a probe bug must not kill the thread: logged with its traceback
            logger.exception("reading %s failed", name)
            return INTERNAL_ERROR

    def _refresh_security(self) -> None:
        if not self._config.metrics.enable_security:
            self._scanned.set()
            return
        with self._scan_lock:
            try:
                report = self._scanner.scan()
                findings_xml = xmlwire.fragment([finding.as_wire() for finding in report.findings])
            except Exception:  # a probe bug must not kill the thread: logged with its traceback
                logger.exception("security scan failed")
                with self._lock:
                    self._scan_error = "the last security scan failed"
                return
        logger.debug("security scan: %d findings in %.3f s", report.issues, report.duration)
        with self._lock:
            self._security, self._findings_xml, self._scan_error = report, findings_xml, None
        self._scanned.set()

    # ---- the wire structs ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The ``get_metrics()`` struct; never raises."""
        try:
            return self._snapshot()[0]
        except Exception:  # the agent must keep answering; the bug is logged with its traceback
            logger.exception("building the metrics snapshot failed")
            return self._fallback()

    def snapshot_response(self) -> bytes:
        """The XML-RPC method response carrying :meth:`snapshot`'s struct, as ``xmlrpc.client.dumps``
        writes it (encoded as UTF-8); never raises for the metrics' sake (the fallback is sent)."""
        try:
            struct = self._snapshot(wire=True)[0]
        except Exception:  # as in snapshot()
            logger.exception("building the metrics snapshot failed")
            struct = self._fallback()
        return xmlwire.method_response(struct)

    def info(self) -> dict[str, Any]:
        """The ``get_info()`` struct: which metrics this host can provide; never raises."""
        try:
            unavailable = self._snapshot()[1]
        except Exception:  # as in snapshot()
            logger.exception("building the info struct failed")
            unavailable = _Unavailable()
            for metric in self._metric_names:
                unavailable.add(metric, INTERNAL_ERROR)
        lasting = {m: r for m, r in unavailable.reasons.items() if m not in unavailable.transient}
        return {
            "name": self._config.name,
            "version": __version__,
            "platform": self._platform,
            "python": platform_module.python_version(),
            "metrics": {metric: metric not in lasting for metric in self._metric_names},
            "unavailable": lasting,
        }

    def _snapshot(self, *, wire: bool = False) -> tuple[dict[str, Any], _Unavailable]:
        """The struct and what is unavailable; with ``wire``, the background parts are XML fragments."""
        enabled = self._config.metrics
        unavailable = _Unavailable()
        now = self._clock()
        with self._lock:
            slow, security, scan_error = self._slow, self._security, self._scan_error
            findings_xml = self._findings_xml if wire else None
        if enabled.enable_cpu:
            cpu = self._cpu.sample()
            load = read_load(self._proc_root, platform=self._platform)
        else:
            cpu = CpuReading(None, (), 0, DISABLED)
            load = LoadReading(None, None, None, DISABLED)
        memory = read_memory(self._proc_root, platform=self._platform) if enabled.enable_memory else DISABLED
        if cpu.reason is not None:
            unavailable.add("cpu_usage", cpu.reason, transient=cpu.reason.startswith("measuring"))
        if load.reason is not None:
            unavailable.add("load", load.reason)
        if isinstance(memory, str):
            unavailable.add("memory_usage", memory)
        if slow is None:
            temperature = TemperatureReading(None, NOT_YET, None, None, None)
            disks: tuple[DiskReading, ...] | str = NOT_YET
        else:
            temperature, disks = slow.temperature, slow.disks
        if temperature.reason is not None:
            unavailable.add("cpu_temperature", temperature.reason, transient=slow is None)
        if isinstance(disks, str):
            unavailable.add("disk_usage", disks, transient=slow is None)
        numbers: dict[str, float | int | None] = dict.fromkeys(self._probes)
        for name, number in slow.numbers if slow is not None else ():
            numbers[name] = None if isinstance(number, str) else number
            if isinstance(number, str):
                unavailable.add(name, number)
        if slow is None:
            for name in self._probes:
                unavailable.add(name, NOT_YET, transient=True)
        security_struct = self._security_struct(security, scan_error, now, unavailable, findings_xml)
        temperature_struct: dict[str, Any] | Fragment
        disks_struct: list[dict[str, Any]] | Fragment
        if wire and slow is not None:
            temperature_struct, disks_struct = slow.temperature_xml, slow.disks_xml
        else:
            temperature_struct, disks_struct = _temperature_struct(temperature), _disks_struct(disks)
        cores = cpu.cores or os.cpu_count() or 1
        struct: dict[str, Any] = {
            "agent": self._config.name,
            "timestamp": now,
            "version": __version__,
            "cpu_usage": cpu.percent,
            "cpu_temperature": temperature.celsius,
            "load_1": load.load_1,
            "load_5": load.load_5,
            "load_15": load.load_15,
            "memory_usage": None if isinstance(memory, str) else memory.percent,
            "disk_usage": None if isinstance(disks, str) else fullest(disks).percent,
            "security_issues": security_struct["issues"],
            "threat_level": security_struct["threat_level"],
            "temperature": temperature_struct,
            "cpu": {"percent": cpu.percent, "per_core": list(cpu.per_core[:MAX_PER_CORE]), "count": cores},
            "load": {
                "load_1": load.load_1, "load_5": load.load_5, "load_15": load.load_15,
                "per_core_1": None if load.load_1 is None else round(load.load_1 / cores, 3),
            },
            "memory": None if isinstance(memory, str) else memory._asdict(),
            "disks": disks_struct,
            "security": security_struct,
            "unavailable": dict(unavailable.reasons),
            "sample_seq": self._buffer.newest_seq if self._buffer is not None else 0,
            **numbers,
        }
        self._log_unavailable(unavailable)
        return struct, unavailable

    def _security_struct(
        self,
        report: SecurityReport | None,
        scan_error: str | None,
        now: float,
        unavailable: _Unavailable,
        findings_xml: Fragment | None = None,
    ) -> dict[str, Any]:
        if not self._config.metrics.enable_security:
            for metric in SECURITY_METRICS:
                unavailable.add(metric, DISABLED)
        elif report is None:
            for metric in SECURITY_METRICS:
                unavailable.add(metric, scan_error or SCAN_PENDING, transient=True)
        else:
            for metric, reason in report.unavailable:
                unavailable.add(metric, reason)
        if report is None or not self._config.metrics.enable_security:
            return _no_security()
        return {
            "threat_level": report.threat_level,
            "issues": report.issues,
            "scanned_at": report.scanned_at,
            "age": max(0.0, round(now - report.scanned_at, 3)),
            # "message repeated N times" adds up; None when no SSH log source is readable (not monitored)
            "ssh_failures": None if report.ssh_failures is None else min(report.ssh_failures, INT32_MAX),
            "unknown_processes": report.unknown_processes,
            "findings": findings_xml or [finding.as_wire() for finding in report.findings],
        }

    def _fallback(self) -> dict[str, Any]:
        """A struct of the right shape with every metric missing, for when building the real one failed."""
        try:
            now = float(self._clock())
        except Exception:  # the injected clock may be what failed
            now = time.time()
        nothing = dict.fromkeys(("cpu_usage", "cpu_temperature", "load_1", "load_5", "load_15"))
        return {
            "agent": self._config.name, "timestamp": now, "version": __version__, **nothing,
            "memory_usage": None, "disk_usage": None, "security_issues": 0, "threat_level": "none",
            "temperature": {"celsius": None, "reason": INTERNAL_ERROR, "sensor": None, "high": None, "critical": None},
            "cpu": {"percent": None, "per_core": [], "count": os.cpu_count() or 1},
            "load": {"load_1": None, "load_5": None, "load_15": None, "per_core_1": None},
            "memory": None, "disks": [], "security": _no_security(),
            "unavailable": dict.fromkeys(self._metric_names, INTERNAL_ERROR),
            "sample_seq": 0,
            **dict.fromkeys(self._probes),
        }

    def _log_unavailable(self, unavailable: _Unavailable) -> None:
        """Log each lasting reason once when it appears or changes (not on every call)."""
        lasting = {m: r for m, r in unavailable.reasons.items() if m not in unavailable.transient}
        if lasting == self._logged_unavailable:
            return
        with self._lock:
            for metric, reason in lasting.items():
                if self._logged_unavailable.get(metric) != reason:
                    logger.info("metric %s unavailable: %s", metric, reason)
            self._logged_unavailable = lasting
