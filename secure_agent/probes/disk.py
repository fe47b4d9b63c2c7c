"""Usage of each mounted local filesystem: mounts from ``<proc_root>/mounts``, sizes from statvfs.

Only filesystems backed by a device count: the types ``<proc_root>/filesystems`` marks ``nodev``
(proc, tmpfs, cgroup, overlay, NFS, CIFS, FUSE...) are skipped, as psutil's ``disk_partitions()`` does,
which also keeps a hung network mount from blocking the probe. A device mounted twice (bind mounts) is
reported once. Mount points are resolved under ``fs_root`` so tests can point them into a temporary tree.
``percent`` is what ``df`` shows: used / (used + space available to unprivileged users).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

import psutil

from secure_agent.probes._fs import LARGE_FILE, read_text
from secure_agent.probes._text import clean_text

MAX_DISKS = 256
# types that have a device but hold no user data worth a percentage
IGNORED_TYPES = frozenset({"squashfs", "iso9660", "udf"})


class DiskReading(NamedTuple):
    mount: str
    device: str
    fstype: str
    total: float
    used: float
    free: float
    percent: float


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash in paths as octal escapes (``\\040``)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    index = 0
    while index < len(field):
        chunk = field[index : index + 4]
        if len(chunk) == 4 and chunk[0] == "\\" and all(c in "01234567" for c in chunk[1:]):
            out.append(chr(int(chunk[1:], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def nodev_types(text: str) -> frozenset[str]:
    """The filesystem types /proc/filesystems marks ``nodev``: not backed by a block device."""
    return frozenset(
        fields[1] for line in text.splitlines() if len(fields := line.split()) > 1 and fields[0] == "nodev"
    )


def _usage(mount: str, device: str, fstype: str, target: Path) -> DiskReading | None:
    try:
        stat = os.statvfs(target)
    except OSError:
        return None
    total = float(stat.f_blocks * stat.f_frsize)
    if total <= 0:
        return None
    used = float((stat.f_blocks - stat.f_bfree) * stat.f_frsize)
    free = float(stat.f_bavail * stat.f_frsize)
    percent = round(100.0 * used / (used + free), 2) if used + free > 0 else 0.0
    return DiskReading(clean_text(mount), clean_text(device), clean_text(fstype, 64), total, used, free, percent)


def _read_linux(proc_root: Path, fs_root: Path) -> tuple[DiskReading, ...] | str:
    try:
        mounts = read_text(proc_root / "mounts", LARGE_FILE)
    except OSError as exc:
        return f"{proc_root / 'mounts'} unreadable: {type(exc).__name__}"
    try:
        virtual = nodev_types(read_text(proc_root / "filesystems"))
    except OSError:
        virtual = frozenset({"proc", "sysfs", "tmpfs", "devtmpfs", "cgroup", "cgroup2", "overlay", "nfs"})
    disks: list[DiskReading] = []
    seen: set[str] = set()
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, mount, fstype = _unescape(fields[0]), _unescape(fields[1]), fields[2]
        if fstype in virtual or fstype in IGNORED_TYPES or device in seen or not mount.startswith("/"):
            continue
        reading = _usage(mount, device, fstype, fs_root / mount.lstrip("/"))
        if reading is not None:
            seen.add(device)
            disks.append(reading)
            if len(disks) >= MAX_DISKS:
                break
    return tuple(disks) if disks else "no mounted local filesystem found"


def _read_psutil() -> tuple[DiskReading, ...] | str:
    """macOS, Windows, BSD: psutil's partition list and usage (no statvfs on Windows)."""
    try:
        partitions = psutil.disk_partitions(all=False)
    except (OSError, psutil.Error) as exc:
        return f"mount table unreadable: {type(exc).__name__}"
    disks: list[DiskReading] = []
    for part in partitions[:MAX_DISKS]:
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except (OSError, psutil.Error):
            continue  # an empty card reader, a vanished mount
        if usage.total > 0:
            disks.append(
                DiskReading(
                    clean_text(part.mountpoint), clean_text(part.device), clean_text(part.fstype, 64),
                    float(usage.total), float(usage.used), float(usage.free), round(float(usage.percent), 2),
                )
            )
    return tuple(disks) if disks else "no mounted local filesystem found"


def read_disks(
    proc_root: Path = Path("/proc"), fs_root: Path = Path("/"), *, platform: str = sys.platform
) -> tuple[DiskReading, ...] | str:
    """Every local filesystem's usage, or the reason there is none."""
    if platform.startswith("linux"):
        return _read_linux(proc_root, fs_root)
    return _read_psutil()


def fullest(disks: tuple[DiskReading, ...]) -> DiskReading:
    return max(disks, key=lambda disk: disk.percent)
