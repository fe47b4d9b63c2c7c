"""Every numeric metric, declared once: what it is, its bounds, its threshold, and how it is shown.

The collector's validation of an answer, the stored :class:`~storage.models.Sample` and its MySQL column,
the frames viz reads, the alerts and their thresholds, the plots, the dashboard's table and the exporter's
gauges are all built from :data:`METRICS`. Adding a numeric metric is one :class:`Metric` here plus the
agent's probe that measures it (``secure_agent/probes``, registered under the same name); CONTRIBUTING.md
walks through it and ``tests/test_add_a_metric.py`` does it end to end.

It lives in ``storage`` because the collector and viz both read storage and nothing else they share; the
agent never needs it (it answers whatever its probes measure, and the collector judges the answer).
Programs build their models from the catalog when they are imported: :func:`declare` is for a process
that adds a metric before importing them (the add-a-metric test), not for changing a running program.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Critical = Literal["halfway", "double", "hardware"]
"""Where a threshold's critical level is: halfway between it and the metric's upper bound, at twice the
threshold, or at the hardware's own critical limit the agent reports (temperature)."""


@dataclass(frozen=True)
class Threshold:
    """A ``thresholds.<key>`` setting of the collector's configuration, and what crossing it means."""

    key: str  # the configuration key (the predecessor's names: system_load for load_1)
    default: float | None  # None: decided per agent (temperature: the hardware's own limit)
    critical: Critical = "halfway"
    ge: float = 0.0
    le: float | None = None


@dataclass(frozen=True)
class Plot:
    """A plot of its own in viz (``--plot NAME``), for a metric that needs nothing special."""

    name: str
    title: str


@dataclass(frozen=True)
class Column:
    """A column of the dashboard's agents table: the latest reading."""

    heading: str
    format: str
    missing: str = "–"  # shown when the agent sent no value
    position: int = 100  # left to right; ties in the catalog's order


@dataclass(frozen=True)
class Metric:
    """One numeric metric of a sample."""

    name: str  # the sample field, the MySQL column, the exporter's secure_monitor_<name>
    title: str  # for people: plot axes, exporter help
    unit: str = ""  # as shown after a value: "%", "°C", "" for plain numbers and counts
    integer: bool = False
    ge: float | None = None
    le: float | None = None
    nullable: bool = True  # None: not measured (no sensor, disabled, unreadable)
    default: float | None = None
    source: tuple[str, ...] = ()
    """Where the collector finds it in a ``get_metrics`` answer: ``()`` for the top-level member of the same
    name (what an agent's probe adds), else a path into the answer's detail sections."""
    contract: bool = False  # one of the fields docs/protocol.md has always had at the top of a sample
    threshold: Threshold | None = None
    plot: Plot | None = None
    column: Column | None = None
    sums: bool = False  # counts of events: rollups and viz take the max of a bin, not the mean
    by_collector: bool = False  # measured by the collector itself (never taken from the agent's answer)

    @property
    def path(self) -> tuple[str, ...]:
        return self.source or (self.name,)


INT32_MAX = 2**31 - 1

METRICS: list[Metric] = [
    Metric(
        "cpu_usage", "CPU usage", unit="%", ge=0.0, le=100.0, contract=True,
        threshold=Threshold("cpu_usage", 80.0, le=100.0), plot=Plot("cpu", "CPU usage"),
        column=Column("CPU", "{:.0f} %", position=0),
    ),
    Metric(
        "cpu_temperature", "CPU temperature", unit="°C", ge=-100.0, le=250.0, contract=True,
        threshold=Threshold("cpu_temperature", None, "hardware", le=150.0),
        column=Column("Temp.", "{:.0f} °C", "no sensor", position=5),
    ),
    Metric(
        "load_1", "Load (1 min)", ge=0.0, le=1e6, contract=True,
        threshold=Threshold("system_load", 2.0, "double"), column=Column("Load 1 min", "{:.2f}", position=4),
    ),
    Metric("load_5", "Load (5 min)", ge=0.0, le=1e6, contract=True),
    Metric("load_15", "Load (15 min)", ge=0.0, le=1e6, contract=True),
    Metric(
        "memory_usage", "Memory usage", unit="%", ge=0.0, le=100.0, contract=True,
        threshold=Threshold("memory_usage", 85.0, le=100.0), plot=Plot("memory", "Memory usage"),
        column=Column("Memory", "{:.0f} %", position=1),
    ),
    Metric(
        "disk_usage", "Disk usage (fullest mounted disk)", unit="%", ge=0.0, le=100.0, contract=True,
        threshold=Threshold("disk_usage", 90.0, le=100.0), plot=Plot("disk", "Disk usage (fullest disk)"),
        column=Column("Disk", "{:.0f} %", position=3),
    ),
    Metric(
        "security_issues", "Security issues", integer=True, ge=0, le=INT32_MAX, nullable=False, default=0,
        contract=True, sums=True,
    ),
    Metric(
        "temperature_high", "Hardware high temperature", unit="°C", ge=-100.0, le=250.0,
        source=("temperature", "high"),
    ),
    Metric(
        "temperature_critical", "Hardware critical temperature", unit="°C", ge=-100.0, le=250.0,
        source=("temperature", "critical"),
    ),
    Metric(
        "swap_usage", "Swap usage", unit="%", ge=0.0, le=100.0, source=("memory", "swap_percent"),
        plot=Plot("swap", "Swap usage"), column=Column("Swap", "{:.0f} %", position=2),
    ),
    Metric("cpu_count", "CPU cores", integer=True, ge=1, le=1_000_000, source=("cpu", "count")),
    Metric(
        "ssh_failures", "SSH failures", integer=True, ge=0, le=INT32_MAX, default=0,
        source=("security", "ssh_failures"),
        column=Column("SSH failures", "{:.0f}", "not monitored", position=6), sums=True,
    ),
    Metric("security_age", "Age of the security scan (s)", unit="s", ge=0.0, source=("security", "age")),
    Metric(
        "cert_days_left", "Days until the agent's certificate expires", unit="d", ge=-36500.0, le=36500.0,
        by_collector=True, column=Column("Cert. days", "{:.0f}", "–", position=7),
    ),
    Metric(
        "cert_lifetime_days", "Lifetime of the agent's certificate (days)", unit="d", ge=0.0, le=36500.0,
        by_collector=True,
    ),
]
"""In the order of a stored sample (the contract's fields first); viz and the dashboard keep it."""


def declare(metric: Metric) -> None:
    """Add ``metric`` (before the programs are imported: they build their models from the catalog then)."""
    if any(known.name == metric.name for known in METRICS):
        raise ValueError(f"metric {metric.name} is declared already")
    METRICS.append(metric)


def by_name() -> dict[str, Metric]:
    return {metric.name: metric for metric in METRICS}


def columns() -> list[Metric]:
    """The metrics the dashboard's agents table shows, left to right."""
    shown = [metric for metric in METRICS if metric.column is not None]
    return sorted(shown, key=lambda metric: metric.column.position if metric.column is not None else 0)


def with_thresholds() -> list[Metric]:
    return [metric for metric in METRICS if metric.threshold is not None]
