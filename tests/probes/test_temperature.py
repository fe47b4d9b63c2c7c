"""CPU temperature from hwmon and thermal-zone trees, and the no-sensor path on this very machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from secure_agent.probes.temperature import read_temperature


def test_coretemp_hottest_core_with_its_limits_and_the_hotter_nvme_ignored(fixtures: Path) -> None:
    reading = read_temperature(fixtures / "sys" / "coretemp", platform="linux")
    assert reading.celsius == 64.0  # Core 1; the NVMe at 80.85 C is not the CPU
    assert reading.sensor == "coretemp/Core 1"
    assert (reading.high, reading.critical) == (84.0, 100.0)
    assert reading.reason is None


def test_k10temp_skips_tctl_when_tdie_is_reported(fixtures: Path) -> None:
    reading = read_temperature(fixtures / "sys" / "k10temp", platform="linux")
    assert reading.celsius == 57.25
    assert reading.sensor == "k10temp/Tccd1"
    assert reading.high is None and reading.critical is None


def test_cpu_thermal_zone_with_trip_points(fixtures: Path) -> None:
    reading = read_temperature(fixtures / "sys" / "thermal-only", platform="linux")
    assert reading.celsius == pytest.approx(48.312)
    assert reading.sensor == "thermal_zone0/cpu-thermal"
    assert (reading.high, reading.critical) == (95.0, 110.0)  # "hot" preferred to "passive"


def test_acpi_zone_is_the_fallback_when_nothing_names_the_cpu(fixtures: Path) -> None:
    reading = read_temperature(fixtures / "sys" / "acpitz-only", platform="linux")
    assert (reading.celsius, reading.sensor, reading.critical) == (40.0, "thermal_zone0/acpitz", 105.0)


def test_old_kernel_layout_under_device(fixtures: Path) -> None:
    reading = read_temperature(fixtures / "sys" / "old-layout", platform="linux")
    assert (reading.celsius, reading.critical) == (51.0, 95.0)


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        ("none", "no temperature sensor"),
        ("other-only", "no CPU temperature sensor (other sensors: iwlwifi_1, nvme)"),
        ("broken", "1 CPU temperature sensor(s) present but unreadable"),
        ("does-not-exist", "no temperature sensor"),
    ],
)
def test_no_reading_gives_none_and_a_reason(fixtures: Path, tree: str, expected: str) -> None:
    reading = read_temperature(fixtures / "sys" / tree, platform="linux")
    assert reading.celsius is None and reading.sensor is None
    assert reading.reason is not None and reading.reason.startswith(expected)


def test_this_machine_has_no_sensor_and_says_so() -> None:
    """The real /sys of the test machine (a VM without hwmon or thermal zones)."""
    if any(Path("/sys/class/hwmon").glob("hwmon*")) or any(Path("/sys/class/thermal").glob("thermal_zone*")):
        pytest.skip("this host has temperature sensors; the fixture tests cover the no-sensor path")
    reading = read_temperature()
    assert reading.celsius is None
    assert reading.reason == "no temperature sensor: no hwmon device or thermal zone reports a temperature"


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_other_platforms_degrade(platform: str, fixtures: Path) -> None:
    reading = read_temperature(fixtures / "sys" / "coretemp", platform=platform)
    assert reading.celsius is None
    assert reading.reason is not None and platform in reading.reason
