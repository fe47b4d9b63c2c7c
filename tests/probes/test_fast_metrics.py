"""CPU, load, memory and disk probes against fixture procfs trees, and against this machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from secure_agent.probes.cpu import CpuSampler, parse_proc_stat, utilisation
from secure_agent.probes.disk import fullest, read_disks
from secure_agent.probes.load import parse_loadavg, read_load
from secure_agent.probes.memory import read_memory


class FakeMonotonic:
    """A clock the test moves by hand, so windows are exact without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_stat(root: Path, user: int, idle: int, core_user: tuple[int, int], core_idle: tuple[int, int]) -> None:
    (root / "stat").write_text(
        f"cpu  {user} 0 0 {idle} 0 0 0 0 0 0\n"
        f"cpu0 {core_user[0]} 0 0 {core_idle[0]} 0 0 0 0 0 0\n"
        f"cpu1 {core_user[1]} 0 0 {core_idle[1]} 0 0 0 0 0 0\nintr 1\n"
    )


def test_proc_stat_busy_excludes_idle_iowait_and_double_counted_guest(fixtures: Path) -> None:
    times = parse_proc_stat((fixtures / "proc" / "basic" / "stat").read_text())
    # cpu  4371 0 1668 54377 180 0 24 33 (guest 0 0): busy = 4371+1668+24+33, total adds idle+iowait
    assert times.busy[0] == 6096 and times.total[0] == 6096 + 54377 + 180
    assert len(times.total) == 3


def test_sampler_measures_between_calls_over_at_least_a_window(tmp_path: Path) -> None:
    clock = FakeMonotonic()
    sampler = CpuSampler(tmp_path, platform="linux", min_window=1.0, monotonic=clock)  # no counters yet
    write_stat(tmp_path, 0, 0, (0, 0), (0, 0))
    first = sampler.sample()  # the start reading failed: this one is the baseline
    assert first.percent is None and first.cores == 2 and first.reason is not None

    clock.now += 0.5  # past the first window (0.25 s): measured from the baseline
    write_stat(tmp_path, 50, 50, (50, 0), (0, 50))
    assert sampler.sample().percent == 50.0

    clock.now += 0.5
    write_stat(tmp_path, 100, 100, (100, 0), (0, 100))
    reading = sampler.sample()
    assert reading.percent == 50.0 and reading.per_core == (100.0, 0.0) and reading.reason is None

    clock.now += 0.1  # soon after: measured against the older baseline, still a full window
    write_stat(tmp_path, 110, 130, (110, 0), (0, 130))
    assert sampler.sample().percent == pytest.approx(100 * 110 / 240, abs=0.01)

    clock.now += 1.0
    write_stat(tmp_path, 110, 230, (110, 0), (0, 230))
    # measured from the third reading (100 busy, 100 idle), which became the baseline at 1001.0
    assert sampler.sample().percent == pytest.approx(100 * 10 / 140, abs=0.01)


def test_the_first_answer_after_start_is_complete(tmp_path: Path) -> None:
    """Issue 15: the first get_metrics after an agent started had cpu_usage null. The baseline is taken at
    start, and a call sooner than 0.25 s after it waits the rest (the CPU keeps running meanwhile)."""
    clock = FakeMonotonic()
    write_stat(tmp_path, 0, 0, (0, 0), (0, 0))
    waited: list[float] = []

    def sleep(seconds: float) -> None:  # time passes and the counters move, as they would
        waited.append(seconds)
        clock.now += seconds
        write_stat(tmp_path, 30, 70, (30, 0), (0, 70))

    sampler = CpuSampler(tmp_path, platform="linux", monotonic=clock, sleep=sleep)
    clock.now += 0.1  # polled 0.1 s after the start
    reading = sampler.sample()
    assert waited == [pytest.approx(0.15)]  # only the rest of the first window
    assert reading.percent == 30.0 and reading.per_core == (100.0, 0.0) and reading.reason is None
    clock.now += 0.1
    write_stat(tmp_path, 40, 80, (40, 0), (0, 80))
    assert sampler.sample().percent == pytest.approx(100 * 40 / 120, abs=0.01)  # from the start baseline, no wait
    assert len(waited) == 1


def test_sampler_reports_unreadable_counters(tmp_path: Path) -> None:
    reading = CpuSampler(tmp_path / "missing", platform="linux").sample()
    assert reading.percent is None and reading.reason == "CPU counters unreadable: FileNotFoundError"


def test_hotplugged_cpu_keeps_overall_and_drops_per_core() -> None:
    before = parse_proc_stat("cpu 1 0 0 1\ncpu0 1 0 0 1\n")
    after = parse_proc_stat("cpu 3 0 0 3\ncpu0 2 0 0 2\ncpu1 1 0 0 1\n")
    assert utilisation(before, after) == (50.0, ())


def test_sampler_on_this_machine_and_through_psutil() -> None:
    for platform in ("linux", "darwin"):  # "darwin" takes the psutil path, which works here too
        clock = FakeMonotonic()
        sampler = CpuSampler(platform=platform, monotonic=clock)
        sampler.sample()
        clock.now += 2.0
        reading = sampler.sample()
        assert reading.cores == os.cpu_count()
        # the counters may not have moved in the real microseconds between the calls
        assert reading.percent is None or 0.0 <= reading.percent <= 100.0


def test_load(fixtures: Path) -> None:
    assert read_load(fixtures / "proc" / "basic", platform="linux")[:3] == (0.52, 0.38, 0.21)
    broken = read_load(fixtures / "proc" / "old-kernel", platform="linux")
    assert broken.load_1 is None and broken.reason is not None and "loadavg" in broken.reason
    assert read_load(platform="win32").reason == "Windows has no load average"
    real = read_load()
    assert real.reason is None and real.load_1 is not None and real.load_1 >= 0
    assert read_load(platform="darwin").load_1 is not None  # os.getloadavg


@pytest.mark.parametrize("text", ["", "1 2", "nan 1 1", "-1 0 0", "1e12 0 0"])
def test_loadavg_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_loadavg(text)


def test_memory_from_meminfo(fixtures: Path) -> None:
    memory = read_memory(fixtures / "proc" / "basic", platform="linux")
    assert not isinstance(memory, str)
    assert memory.total == 16315412 * 1024
    assert memory.available == 12236560 * 1024
    assert memory.percent == pytest.approx(100 * (16315412 - 12236560) / 16315412, abs=0.01)
    assert memory.swap_used == (2097148 - 1572860) * 1024
    assert memory.swap_percent == 25.0


def test_memory_before_memavailable_and_missing(fixtures: Path, tmp_path: Path) -> None:
    memory = read_memory(fixtures / "proc" / "old-kernel", platform="linux")
    assert not isinstance(memory, str)
    assert memory.available == (512000 + 128000 + 256000) * 1024 and memory.swap_percent == 0.0
    assert read_memory(tmp_path, platform="linux") == f"{tmp_path / 'meminfo'} unreadable: FileNotFoundError"


def test_memory_of_this_machine_both_ways() -> None:
    linux, other = read_memory(), read_memory(platform="darwin")
    assert not isinstance(linux, str) and not isinstance(other, str)
    assert linux.total == other.total and 0 < linux.percent < 100


def test_disks_skip_virtual_duplicate_and_unreachable_mounts(fixtures: Path, tmp_path: Path) -> None:
    for mount in ("boot/efi", "mnt/my data", "mnt/nfs", "srv/bind"):
        (tmp_path / mount).mkdir(parents=True)
    disks = read_disks(fixtures / "proc" / "basic", tmp_path, platform="linux")
    assert not isinstance(disks, str)
    # tmpfs, proc, sysfs, nfs4 are nodev; squashfs is skipped; /srv/bind repeats /dev/sda2; /mnt/gone is absent
    assert [(d.mount, d.device, d.fstype) for d in disks] == [
        ("/", "/dev/sda2", "ext4"),
        ("/boot/efi", "/dev/sda1", "vfat"),
        ("/mnt/my data", "/dev/sdb1", "xfs"),  # \040 decoded
    ]
    for disk in disks:
        assert disk.total > 0 and 0.0 <= disk.percent <= 100.0 and disk.used + disk.free <= disk.total
    assert fullest(disks).percent == max(d.percent for d in disks)


def test_disks_of_this_machine_both_ways(tmp_path: Path) -> None:
    for platform in ("linux", "darwin"):
        disks = read_disks(platform=platform)
        assert not isinstance(disks, str) and any(d.mount == "/" for d in disks)
    assert read_disks(tmp_path, platform="linux") == f"{tmp_path / 'mounts'} unreadable: FileNotFoundError"


def test_procfs_files_read_on_every_call_are_kept_open_and_fresh() -> None:
    from secure_agent.probes import _fs

    first = _fs.read_kernel_text("/proc/self/stat")  # changes as this process runs
    assert "/proc/self/stat" in _fs._kept
    fd = _fs._kept["/proc/self/stat"]
    burn = sum(range(200_000))  # some CPU time, so utime moves
    second = _fs.read_kernel_text("/proc/self/stat")
    assert burn and _fs._kept["/proc/self/stat"] == fd  # the same descriptor, read again from the start
    assert second.split()[0] == first.split()[0] == str(os.getpid())
    assert int(second.split()[13]) + int(second.split()[14]) >= int(first.split()[13]) + int(first.split()[14])
    names = ["loadavg", "uptime", "version", "meminfo", "stat", "self/status", "self/statm", "self/limits", "cpuinfo"]
    assert len(names) > _fs.MAX_KEPT
    for name in names:
        assert _fs.read_kernel_text(f"/proc/{name}")
    assert len(_fs._kept) == _fs.MAX_KEPT  # never more descriptors held; the least recently used went
    assert "/proc/self/stat" not in _fs._kept and "/proc/cpuinfo" in _fs._kept


def test_files_outside_procfs_are_read_afresh(tmp_path: Path) -> None:
    from secure_agent.probes import _fs

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\nMemAvailable: 250 kB\n")
    assert read_memory(tmp_path).percent == 75.0  # type: ignore[union-attr]
    replacement = tmp_path / "meminfo.new"
    replacement.write_text("MemTotal: 1000 kB\nMemAvailable: 500 kB\n")
    replacement.replace(meminfo)  # a new file in its place: a kept descriptor would still read the old one
    descriptors = len(os.listdir("/proc/self/fd"))
    assert read_memory(tmp_path).percent == 50.0  # type: ignore[union-attr]
    assert str(meminfo) not in _fs._kept
    assert len(os.listdir("/proc/self/fd")) == descriptors  # read and closed, none left open
