"""Real journal files for tests, written by ``systemd-journal-remote`` from journal export format.

``JournalFixture(directory).append(entries)`` adds entries to ``directory/remote.journal`` (the same
file each time, as journald appends to its own), so ``journalctl --directory`` reads them exactly as it
reads a host's journal. Each entry sets the trusted fields journald would (``_UID``, ``_COMM``, ...).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

import pytest

REMOTE = next(
    (path for path in ("/lib/systemd/systemd-journal-remote", "/usr/lib/systemd/systemd-journal-remote")
     if Path(path).exists()),
    shutil.which("systemd-journal-remote"),
)
BOOT_ID = "0123456789abcdef0123456789abcdef"
_SYSLOG = re.compile(
    r"(?P<stamp>[A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d) \S+ (?P<ident>[^\[:]+)(?:\[(?P<pid>\d+)\])?: (?P<msg>.*)"
)
_REPEATED = re.compile(r"message repeated (\d+) times: \[ ?(.*)\]")


class Entry(NamedTuple):
    timestamp: float
    identifier: str
    message: str
    uid: int = 0
    pid: int = 1000


def requires_journal_remote() -> None:
    if REMOTE is None or shutil.which("journalctl") is None:
        pytest.skip("needs systemd-journal-remote and journalctl (Debian: systemd-journal-remote; scripts/test.sh)")


def entries_of_syslog(lines: Iterable[str], year: int) -> list[Entry]:
    """The journal entries a syslog auth log stands for (``message repeated N times`` is N entries)."""
    entries: list[Entry] = []
    for line in lines:
        match = _SYSLOG.fullmatch(line.rstrip("\n"))
        if match is None:
            continue
        stamp = datetime.strptime(f"{year} {match['stamp']}", "%Y %b %d %H:%M:%S").timestamp()
        message, times = match["msg"], 1
        repeated = _REPEATED.fullmatch(message)
        if repeated is not None:
            times, message = int(repeated[1]), repeated[2]
        pid = int(match["pid"] or 1)
        entries.extend(Entry(stamp, match["ident"], message, 0, pid) for _ in range(times))
    return entries


def _field(name: str, value: str) -> bytes:
    data = value.encode("utf-8")
    if b"\n" in data:  # export format: binary-safe form for values with newlines
        return name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
    return name.encode() + b"=" + data + b"\n"


class JournalFixture:
    def __init__(self, directory: Path) -> None:
        requires_journal_remote()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._monotonic = 1

    def append(self, entries: Iterable[Entry]) -> None:
        export = bytearray()
        for entry in entries:
            self._monotonic += 1
            export += _field("__REALTIME_TIMESTAMP", str(int(entry.timestamp * 1_000_000)))
            export += _field("__MONOTONIC_TIMESTAMP", str(self._monotonic))
            export += _field("_BOOT_ID", BOOT_ID)
            for name, value in (
                ("_UID", str(entry.uid)), ("_GID", str(entry.uid)), ("_PID", str(entry.pid)),
                ("_COMM", entry.identifier), ("_HOSTNAME", "web1"), ("SYSLOG_IDENTIFIER", entry.identifier),
                ("SYSLOG_FACILITY", "10"), ("PRIORITY", "6"), ("MESSAGE", entry.message),
            ):
                export += _field(name, value)
            export += b"\n"
        source = self.directory / "entries.export"
        source.write_bytes(bytes(export))
        subprocess.run(
            [str(REMOTE), f"--output={self.directory / 'remote.journal'}", str(source)],
            check=True, capture_output=True, timeout=60,
        )
        source.unlink()
