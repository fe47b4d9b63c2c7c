"""Processes whose executable lives in a world-writable directory, or is deleted or missing.

Linux: every ``<proc_root>/<pid>/exe`` link is read directly. Each process ends up in one of:

- ``ok``: the link names an existing file;
- ``deleted``: the link ends in `` (deleted)`` and the file it opens has no links left (for a fixture
  tree, where the link cannot be opened, the suffix alone decides) -- memfd executables included;
- ``missing``: the link cannot be resolved although the process is alive and is neither a kernel thread
  nor a zombie;
- ``unknown``: we may not look (permission denied), or there is no executable to look at (kernel thread,
  zombie). Unknown processes are counted, never reported as findings: not being allowed to look is not
  evidence of anything.

Other platforms: psutil's ``exe()``; a path that no longer exists counts as ``missing``.

A finding's evidence carries the executable's ``sha256`` (read through ``<pid>/exe``, which opens even a
deleted or memfd file; cached per file version), so an operator can acknowledge one binary by its hash.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import sys
from collections import Counter
from pathlib import Path
from typing import Literal, NamedTuple

import psutil

from secure_agent.probes._fs import numeric_entries, read_optional
from secure_agent.probes.findings import (
    DELETED_EXECUTABLE,
    EXEC_FROM_TMP,
    Finding,
    Severity,
    make_finding,
)

# world-writable directories where dropped payloads run from (macOS resolves /tmp to /private/tmp);
# we only compare executable paths against them, we never create files there
SHM_DIR = "/dev/shm"  # noqa: S108 -- a path we inspect, not a file we create
POSIX_TMP_DIRS = ("/tmp", "/var/tmp", SHM_DIR, "/private/tmp", "/private/var/tmp")  # noqa: S108 -- as above
# a binary replaced by a package upgrade while it runs shows as deleted: expected, so low severity
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/opt", "/snap", "/nix/store")
DELETED_SUFFIX = " (deleted)"
PF_KTHREAD = 0x00200000
MAX_PROCESSES = 131072

ExeState = Literal["ok", "deleted", "missing", "unknown"]


class ProcessInfo(NamedTuple):
    pid: int
    name: str | None
    user: str | None
    exe: str | None
    state: ExeState
    reason: str | None  # why ``unknown``


class ProcessScan(NamedTuple):
    findings: tuple[Finding, ...]
    scanned: int
    unknown: int
    unknown_reasons: tuple[tuple[str, int], ...]
    reason: str | None  # why the scan could not run at all


def tmp_dirs_for(platform: str) -> tuple[str, ...]:
    if platform != "win32":
        return POSIX_TMP_DIRS
    found = [os.environ.get(name, "") for name in ("TEMP", "TMP")]
    found.append(os.path.join(os.environ.get("SYSTEMROOT", r"C:\Windows"), "Temp"))
    return tuple(sorted({path.rstrip("\\/").lower().replace("\\", "/") for path in found if path}))


def under(path: str, directories: tuple[str, ...]) -> str | None:
    """The directory of ``directories`` that contains ``path``, if any."""
    normal = path.replace("\\", "/").lower() if ":" in path[:3] else path
    for directory in directories:
        if normal == directory or normal.startswith(directory.rstrip("/") + "/"):
            return directory
    return None


def user_name(uid: int, cache: dict[int, str]) -> str:
    if uid not in cache:
        try:
            import pwd

            cache[uid] = pwd.getpwuid(uid).pw_name
        except (ImportError, KeyError, OverflowError):
            cache[uid] = str(uid)
    return cache[uid]


def _stat_fields(base: Path) -> tuple[str | None, str | None, int]:
    """(comm, state, flags) from ``<pid>/stat``; the comm may hold spaces and parentheses."""
    text = read_optional(base / "stat")
    if text is None or "(" not in text or ")" not in text:
        return None, None, 0
    comm = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 1 :].split()
    try:
        return comm, rest[0], int(rest[6])
    except (IndexError, ValueError):
        return comm, rest[0] if rest else None, 0


def _uid(base: Path) -> int | None:
    status = read_optional(base / "status")
    for line in (status or "").splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            return int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else None
    return None


def _really_deleted(exe_link: Path) -> bool:
    """Is the file behind a `` (deleted)`` link gone? (A file may be *named* "x (deleted)".)"""
    try:
        return os.stat(exe_link).st_nlink == 0
    except OSError:
        return True  # a fixture's dangling link, or a file we cannot open: trust the kernel's suffix


def inspect(proc_root: Path, pid: int, users: dict[int, str]) -> ProcessInfo | None:
    """What ``<proc_root>/<pid>/exe`` says, or ``None`` when the process is gone."""
    base = proc_root / str(pid)
    comm, state, flags = _stat_fields(base)
    name = comm if comm is not None else read_optional(base / "comm")
    uid = _uid(base)
    user = user_name(uid, users) if uid is not None else None
    try:
        target = os.readlink(base / "exe")
    except OSError as exc:
        if flags & PF_KTHREAD:
            return ProcessInfo(pid, name, user, None, "unknown", "kernel thread")
        if state in {"Z", "X", "x"}:
            return ProcessInfo(pid, name, user, None, "unknown", "zombie")
        if exc.errno in {errno.EACCES, errno.EPERM}:
            return ProcessInfo(pid, name, user, None, "unknown", "permission denied")
        if exc.errno == errno.ENOENT:
            if not base.is_dir():
                return None  # exited while we looked
            return ProcessInfo(pid, name, user, None, "missing", None)
        return ProcessInfo(pid, name, user, None, "unknown", f"unreadable ({errno.errorcode.get(exc.errno or 0, '?')})")
    if target.endswith(DELETED_SUFFIX) and _really_deleted(base / "exe"):
        return ProcessInfo(pid, name, user, target[: -len(DELETED_SUFFIX)], "deleted", None)
    return ProcessInfo(pid, name, user, target, "ok", None)


_DIGESTS: dict[tuple[int, int, int, int], str] = {}
MAX_HASHED_BYTES = 64 * 1024 * 1024
"""Larger executables are not hashed (their findings carry no ``sha256``)."""
_MAX_DIGESTS = 1024


def executable_sha256(proc_root: Path, pid: int) -> str | None:
    """SHA-256 of the file ``<proc_root>/<pid>/exe`` opens (deleted and memfd files too), cached per file
    version; None when it cannot be opened (a fixture tree, permission) or is larger than MAX_HASHED_BYTES."""
    try:
        fd = os.open(proc_root / str(pid) / "exe", os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_HASHED_BYTES:
            return None
        key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
        digest = _DIGESTS.get(key)
        if digest is None:
            hasher = hashlib.sha256()
            while chunk := os.read(fd, 1024 * 1024):
                hasher.update(chunk)
            if len(_DIGESTS) >= _MAX_DIGESTS:
                _DIGESTS.clear()
            digest = _DIGESTS[key] = hasher.hexdigest()
        return digest
    except OSError:
        return None
    finally:
        os.close(fd)


def findings_for(info: ProcessInfo, tmp_dirs: tuple[str, ...], sha256: str | None = None) -> list[Finding]:
    """The findings one process gives rise to (a deleted binary in /tmp gives both kinds)."""
    evidence: dict[str, object] = {
        "pid": info.pid, "name": info.name, "user": info.user, "path": info.exe, "sha256": sha256,
    }
    label = f"process {info.pid} ({info.name or '?'})"
    found: list[Finding] = []
    directory = under(info.exe, tmp_dirs) if info.exe else None
    if directory is not None:
        severity: Severity = "high" if directory == SHM_DIR else "medium"
        found.append(make_finding(EXEC_FROM_TMP, severity, f"{label} runs {info.exe} from {directory}", evidence))
    if info.state == "deleted" and info.exe is not None:
        if directory is not None or info.exe.startswith("/memfd:"):
            severity = "high"
        elif under(info.exe, SYSTEM_DIRS) is not None:
            severity = "low"
        else:
            severity = "medium"
        summary = f"{label} runs deleted {info.exe}"
        found.append(make_finding(DELETED_EXECUTABLE, severity, summary, {**evidence, "state": "deleted"}))
    elif info.state == "missing":
        found.append(
            make_finding(
                DELETED_EXECUTABLE, "medium", f"{label} has no executable on disk", {**evidence, "state": "missing"}
            )
        )
    return found


def _summarise(infos: list[ProcessInfo], tmp_dirs: tuple[str, ...], proc_root: Path | None = None) -> ProcessScan:
    findings: list[Finding] = []
    unknown: Counter[str] = Counter()
    for info in infos:
        if info.state == "unknown":
            unknown[info.reason or "unknown"] += 1
            continue
        found = findings_for(info, tmp_dirs)
        if found and proc_root is not None:
            # the executable's hash lets an operator acknowledge exactly this binary wherever it runs from
            found = findings_for(info, tmp_dirs, executable_sha256(proc_root, info.pid))
        findings.extend(found)
    return ProcessScan(tuple(findings), len(infos), sum(unknown.values()), tuple(sorted(unknown.items())), None)


def _scan_psutil() -> list[ProcessInfo]:
    infos: list[ProcessInfo] = []
    for proc in psutil.process_iter(["pid", "name", "exe", "username"]):
        data = proc.info
        exe, pid = data.get("exe"), int(data["pid"])
        name, user = data.get("name"), data.get("username")
        if not exe:
            infos.append(ProcessInfo(pid, name, user, None, "unknown", "no executable visible"))
        elif not os.path.exists(exe):
            infos.append(ProcessInfo(pid, name, user, exe, "missing", None))
        else:
            infos.append(ProcessInfo(pid, name, user, exe, "ok", None))
    return infos


def _at_a_glance(root: str, pid: int, tmp_dirs: tuple[str, ...]) -> ProcessInfo | None:
    """What :func:`inspect` would conclude, for the two common cases that give rise to no finding.

    An executable that exists outside the temporary directories (one readlink) is ``ok``; a process
    without one whose stat flags say kernel thread is ``unknown``. Neither is ever reported, so the
    scan need not read their status or comm (name and user stay None); anything else is inspected
    in full. None means: inspect it.
    """
    try:
        target = os.readlink(f"{root}/{pid}/exe")
    except OSError:
        text = read_optional(f"{root}/{pid}/stat")
        if text is None or ")" not in text:
            return None
        rest = text[text.rindex(")") + 1 :].split()
        try:
            kernel_thread = bool(int(rest[6]) & PF_KTHREAD)
        except (IndexError, ValueError):
            return None
        return ProcessInfo(pid, None, None, None, "unknown", "kernel thread") if kernel_thread else None
    if target.endswith(DELETED_SUFFIX) or under(target, tmp_dirs) is not None:
        return None
    return ProcessInfo(pid, None, None, target, "ok", None)


def scan_processes(proc_root: Path = Path("/proc"), *, platform: str = sys.platform) -> ProcessScan:
    """Inspect every process; never raises."""
    tmp_dirs = tmp_dirs_for(platform)
    if not platform.startswith("linux"):
        try:
            return _summarise(_scan_psutil(), tmp_dirs)
        except (OSError, psutil.Error) as exc:
            return ProcessScan((), 0, 0, (), f"process table unreadable: {type(exc).__name__}")
    pids = numeric_entries(proc_root)
    if not pids:
        return ProcessScan((), 0, 0, (), f"no processes under {proc_root}")
    users: dict[int, str] = {}
    root = str(proc_root)
    infos: list[ProcessInfo] = []
    for pid in pids[:MAX_PROCESSES]:
        info = _at_a_glance(root, pid, tmp_dirs) or inspect(proc_root, pid, users)
        if info is not None:
            infos.append(info)
    return _summarise(infos, tmp_dirs, proc_root)
