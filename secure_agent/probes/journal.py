"""Follow sshd's messages in the systemd journal by cursor, through ``journalctl --output=json`` (no shell).

Debian 12 and most current distributions have no ``/var/log/auth.log`` unless rsyslog is installed: sshd
logs only to journald. A :class:`JournalFollower` asks ``journalctl`` for the sshd entries after the cursor
of the last entry it saw (on first use: those of the last ``initial_since`` seconds), so each poll costs
the same however large the journal is: journald seeks to a cursor through its own index.

Why ``journalctl`` and not a binding (docs/benchmarks.md, ``bench/bench_journal.py``): a poll costs a few
milliseconds more as a process, once per ``check_interval``; in exchange the reader is always the host's
own, of the same systemd version as the journald that wrote the files (the binding on PyPI bundles its own
libsystemd), and the agent needs no compiled dependency. It runs without a shell, from a fixed path, with
a fixed environment, a time limit, and at most :data:`MAX_ENTRIES` entries of at most two fields per poll.

Only entries whose trusted ``_UID`` is 0 count: journald sets underscore fields itself, so a local user
who logs ``Failed password ... from 1.2.3.4`` with ``logger -t sshd`` does not make 1.2.3.4 a brute-forcer
(an auth log file cannot tell that forgery apart). The messages then go through the same parser as the
auth-log lines (:func:`secure_agent.probes.authlog.parse_message`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from secure_agent.probes._text import clean_text

SSHD_IDENTIFIERS = ("sshd", "sshd-session", "sshd-auth")
"""``SYSLOG_IDENTIFIER`` of OpenSSH's daemons (``sshd-session``/``sshd-auth`` since OpenSSH 9.8/10.0)."""
SYSTEM_JOURNAL_DIRS = (Path("/run/log/journal"), Path("/var/log/journal"))
JOURNALCTL_PATHS = ("/usr/bin/journalctl", "/bin/journalctl")
MAX_ENTRIES = 5000
"""Per poll, the oldest first after the cursor; a larger backlog is read over the following polls."""
TIMEOUT = 10.0
MAX_MESSAGE = 4096
_ENVIRONMENT = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": "cat"}
_NOT_ALL_VISIBLE = "not seeing messages from other users and the system"


class JournalEntry(NamedTuple):
    timestamp: float  # journald's receive time (``__REALTIME_TIMESTAMP``), Unix seconds
    message: str


class JournalPoll(NamedTuple):
    entries: tuple[JournalEntry, ...]
    error: str | None  # why the journal could not be read this time
    missing: bool  # no journal files where we look (no journald on this host, or a wrong directory)
    truncated: bool  # the backlog exceeded MAX_ENTRIES: the rest comes with the next polls


def find_journalctl() -> str | None:
    """``journalctl`` from the system's own directories (not from whatever ``PATH`` the agent inherited)."""
    for candidate in JOURNALCTL_PATHS:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("journalctl", path=_ENVIRONMENT["PATH"])


def journal_files_exist(directory: Path | None) -> bool:
    """Are there journal files in ``directory`` (or the system journal's directories), one level deep?"""
    for root in (directory,) if directory is not None else SYSTEM_JOURNAL_DIRS:
        try:
            if next(root.glob("*.journal"), None) is not None or next(root.glob("*/*.journal"), None) is not None:
                return True
        except OSError:
            continue
    return False


def _message(value: object) -> str | None:
    """``MESSAGE`` as journalctl's JSON gives it: text, bytes as a list of numbers, or null (too long)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_MESSAGE else None
    octets = value if isinstance(value, list) and len(value) <= MAX_MESSAGE else []
    if octets and all(isinstance(byte, int) and 0 <= byte < 256 for byte in octets):
        return bytes(octets).decode("utf-8", "replace")
    return None


def _first_line(stderr: bytes) -> str:
    for line in stderr.decode("utf-8", "replace").splitlines():
        if line.strip():
            return clean_text(line.strip(), 200)
    return ""


class JournalFollower:
    """Reads sshd's journal entries incrementally; one scanner owns it (not thread-safe)."""

    def __init__(
        self,
        directory: Path | None = None,
        *,
        initial_since: float = 600.0,
        clock: Callable[[], float] = time.time,
        journalctl: str | None = None,
        max_entries: int = MAX_ENTRIES,
        timeout: float = TIMEOUT,
    ) -> None:
        self.directory = directory
        self._initial_since = initial_since
        self._clock = clock
        self._journalctl = journalctl if journalctl is not None else find_journalctl()
        self._max_entries = max_entries
        self._timeout = timeout
        self._cursor: str | None = None

    @property
    def where(self) -> str:
        return f"the journal in {self.directory}" if self.directory is not None else "the systemd journal"

    @property
    def cursor(self) -> str | None:
        return self._cursor

    def command(self) -> list[str]:
        """The argv of the next poll (no shell ever sees it)."""
        argv = [self._journalctl or "journalctl", "--output=json", "--output-fields=MESSAGE", "--no-pager"]
        argv.append(f"--lines={self._max_entries}")
        if self.directory is not None:
            argv.append(f"--directory={self.directory}")
        if self._cursor is not None:
            argv.append(f"--after-cursor={self._cursor}")
        else:
            argv.append(f"--since=@{max(0, int(self._clock() - self._initial_since))}")
        argv.append("_UID=0")  # trusted: set by journald, not by whoever logged the message
        argv.extend(f"SYSLOG_IDENTIFIER={name}" for name in SSHD_IDENTIFIERS)  # one field: alternatives
        return argv

    def poll(self) -> JournalPoll:
        """The sshd entries since the last poll; never raises."""
        if self._journalctl is None:
            return JournalPoll((), "journalctl not found", True, False)
        if not journal_files_exist(self.directory):
            return JournalPoll((), None, True, False)
        try:
            done = subprocess.run(  # noqa: S603 -- fixed argv from a fixed path, no shell, no user input
                self.command(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self._timeout,
                env=_ENVIRONMENT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return JournalPoll((), f"journalctl gave no answer within {self._timeout:g} s", False, False)
        except OSError as exc:
            return JournalPoll((), f"cannot run journalctl: {exc.strerror or exc}", False, False)
        if done.returncode != 0:
            problem = _first_line(done.stderr) or f"journalctl exited with status {done.returncode}"
            if self._cursor is not None and "cursor" in problem.lower():
                self._cursor = None  # the journal was vacuumed or replaced: start again from the window
            return JournalPoll((), problem, False, False)
        if _NOT_ALL_VISIBLE in done.stderr.decode("utf-8", "replace"):
            return JournalPoll(
                (), "permission denied: the agent's user cannot read the system journal "
                "(add it to the systemd-journal group)", False, False,
            )
        entries = self._entries(done.stdout)
        return JournalPoll(tuple(entries), None, False, len(entries) >= self._max_entries)

    def _entries(self, output: bytes) -> list[JournalEntry]:
        entries: list[JournalEntry] = []
        for line in output.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            cursor = record.get("__CURSOR")
            if isinstance(cursor, str) and cursor:
                self._cursor = cursor
            stamp = record.get("__REALTIME_TIMESTAMP")
            message = _message(record.get("MESSAGE"))
            if not isinstance(stamp, str) or not stamp.isdigit() or len(stamp) > 20 or message is None:
                continue
            entries.append(JournalEntry(int(stamp) / 1_000_000, message))
        return entries
