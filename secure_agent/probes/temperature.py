"""CPU temperature from hwmon devices and thermal zones under a sysfs root.

The reading is the hottest CPU package/core sensor. Hardware limits (hwmon ``tempN_max``/``tempN_crit``,
thermal-zone ``hot``/``passive`` and ``critical`` trip points) are reported with it so that alert
thresholds can default to them. When the host has no sensor (most VMs, macOS, Windows) the reading is
``None`` with a reason: never an exception.

Which sensors count as CPU sensors, in order of preference:

1. hwmon chips that measure the CPU die (``coretemp``, ``k10temp``, ``zenpower``, ...) and thermal zones
   of type ``x86_pkg_temp`` or naming the CPU/SoC;
2. only when there are none: the ACPI thermal zone (``acpitz``), which firmware usually ties to the CPU.

Other sensors (NVMe, GPU, battery, Wi-Fi) never stand in for the CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

from secure_agent.probes._fs import read_optional
from secure_agent.probes._text import clean_text

CPU_HWMON_CHIPS = frozenset(
    {"coretemp", "k10temp", "k8temp", "zenpower", "via_cputemp", "cpu_thermal", "cpu-thermal", "soc_thermal"}
)
FALLBACK_ZONE_TYPES = frozenset({"acpitz"})
# readings outside this range are a sensor reporting "no value" (e.g. -273.15 or 255), not a temperature
PLAUSIBLE_CELSIUS = (-40.0, 150.0)
MAX_SENSOR_DIRS = 256
MAX_NAMES_IN_REASON = 8


class TemperatureReading(NamedTuple):
    celsius: float | None
    reason: str | None
    sensor: str | None
    high: float | None
    critical: float | None


class _Sensor(NamedTuple):
    celsius: float
    name: str
    high: float | None
    critical: float | None


def _millidegrees(path: Path) -> float | None:
    text = read_optional(path)
    if text is None:
        return None
    try:
        value = int(text) / 1000.0
    except ValueError:
        return None
    low, high = PLAUSIBLE_CELSIUS
    return value if low <= value <= high else None


def _limit(path: Path) -> float | None:
    """A hardware limit in degrees C; limits of 0 or beyond the plausible range mean "not reported"."""
    value = _millidegrees(path)
    return value if value is not None and value > 0 else None


def _entries(directory: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [directory / name for name in names[:MAX_SENSOR_DIRS]]


def _is_cpu_zone(zone_type: str) -> bool:
    lowered = zone_type.lower()
    return lowered == "x86_pkg_temp" or "cpu" in lowered or lowered.startswith("soc")


def _hwmon_sensors(device: Path, chip: str) -> list[_Sensor]:
    """Every ``tempN_input`` of one hwmon device, with its label and limits."""
    sensors: list[_Sensor] = []
    # older kernels keep the attributes under device/
    for base in (device, device / "device"):
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        labels: dict[str, str] = {}
        for name in names:
            if name.startswith("temp") and name.endswith("_input"):
                prefix = name[: -len("_input")]
                labels[prefix] = read_optional(base / f"{prefix}_label") or prefix
        if chip == "k10temp" and "Tdie" in labels.values():
            # on some AMD parts Tctl is Tdie plus a fan-control offset: it is not a temperature
            labels = {prefix: label for prefix, label in labels.items() if label != "Tctl"}
        for prefix, label in labels.items():
            celsius = _millidegrees(base / f"{prefix}_input")
            if celsius is None:
                continue
            sensors.append(
                _Sensor(celsius, f"{chip}/{label}", _limit(base / f"{prefix}_max"), _limit(base / f"{prefix}_crit"))
            )
        if sensors:
            break
    return sensors


def _zone_sensor(zone: Path, zone_type: str) -> _Sensor | None:
    celsius = _millidegrees(zone / "temp")
    if celsius is None:
        return None
    trips: dict[str, float] = {}
    for index in range(32):
        trip_type = read_optional(zone / f"trip_point_{index}_type")
        if trip_type is None:
            break
        value = _limit(zone / f"trip_point_{index}_temp")
        if value is not None and (trip_type not in trips or value < trips[trip_type]):
            trips[trip_type] = value
    high = trips.get("hot", trips.get("passive"))
    return _Sensor(celsius, f"{zone.name}/{zone_type}", high, trips.get("critical"))


def _collect(sys_root: Path) -> tuple[list[_Sensor], list[_Sensor], list[str], int]:
    """(CPU sensors, fallback sensors, names of the other sensors, number of sensors unreadable)."""
    cpu: list[_Sensor] = []
    fallback: list[_Sensor] = []
    others: list[str] = []
    unreadable = 0
    for device in _entries(sys_root / "class" / "hwmon"):
        chip = read_optional(device / "name") or read_optional(device / "device" / "name") or device.name
        found = _hwmon_sensors(device, chip)
        if chip in CPU_HWMON_CHIPS:
            cpu.extend(found)
            unreadable += not found
        elif found:
            others.append(chip)
    for zone in _entries(sys_root / "class" / "thermal"):
        if not zone.name.startswith("thermal_zone"):
            continue
        zone_type = read_optional(zone / "type") or "unknown"
        sensor = _zone_sensor(zone, zone_type)
        if _is_cpu_zone(zone_type):
            if sensor is None:
                unreadable += 1
            else:
                cpu.append(sensor)
        elif zone_type in FALLBACK_ZONE_TYPES and sensor is not None:
            fallback.append(sensor)
        elif sensor is not None:
            others.append(zone_type)
    return cpu, fallback, others, unreadable


def _unavailable(reason: str) -> TemperatureReading:
    return TemperatureReading(None, clean_text(reason, 256), None, None, None)


def read_temperature(sys_root: Path = Path("/sys"), *, platform: str = sys.platform) -> TemperatureReading:
    """The hottest CPU temperature under ``sys_root``, or ``None`` with the reason."""
    if not platform.startswith("linux"):
        return _unavailable(f"no CPU temperature source on {platform} (needs vendor tools)")
    cpu, fallback, others, unreadable = _collect(sys_root)
    sensors = cpu or fallback
    if not sensors:
        if unreadable:
            return _unavailable(f"{unreadable} CPU temperature sensor(s) present but unreadable")
        if others:
            names = ", ".join(sorted(set(others))[:MAX_NAMES_IN_REASON])
            return _unavailable(f"no CPU temperature sensor (other sensors: {names})")
        return _unavailable("no temperature sensor: no hwmon device or thermal zone reports a temperature")
    hottest = max(sensors, key=lambda sensor: sensor.celsius)
    # limits of the hottest sensor; when it reports none, the lowest limit any CPU sensor reports
    high = hottest.high or min((s.high for s in sensors if s.high is not None), default=None)
    critical = hottest.critical or min((s.critical for s in sensors if s.critical is not None), default=None)
    return TemperatureReading(hottest.celsius, None, clean_text(hottest.name, 128), high, critical)
