"""The alert outbox: every alert meant for ``alert_command`` waits here, on disk, until the command took it.

Layout: ``spool_dir/outbox/`` (``outbox-IofN/`` for ``--shard I/N``), mode 0700, one file per alert::

    0000000000000042-3f2a...e1.alert   {"format": "secure-collector outbox", "version": 1,
                                        "id": "3f2a...e1", "seq": 42, "alert": {...storage.models.Alert...}}

A file is written (temporary file, ``fsync``, rename; the directory ``fsync``-ed once per batch) before its
alert counts as handed over, and removed only after the command exited 0 for it. So delivery is **at least
once**: a crash between the command's exit and the removal sends that alert again at the next start, with
the same ``id`` (:func:`alert_id`), which is what a receiver deduplicates on. ``seq`` keeps the order of
arrival across restarts. Reading treats the files as untrusted (size, strict model); a file that fails
is renamed ``*.unreadable`` and counted in the log, never deleted.

This module only keeps entries; :mod:`.hook` decides what enters, in which order they go, and when.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from pki.files import PRIVATE_MODE, fsync_dir, write_atomic
from secure_collector.errors import AlertHookError
from storage.models import Alert

logger = logging.getLogger(__name__)

DIRECTORY = "outbox"
SUFFIX = ".alert"
FORMAT = "secure-collector outbox"
MAX_FILE_BYTES = 16 * 1024
_NAME = re.compile(r"^([0-9]{16})-([0-9a-f]{32})\.alert$")
SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def outbox_dir(spool_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    return spool_dir / (DIRECTORY if shard is None else f"{DIRECTORY}-{shard[0]}of{shard[1]}")


def alert_id(alert: Alert) -> str:
    """A stable id for ``alert``: the same alert (agent, time, metric, state, severity) has the same id."""
    key = json.dumps(
        [alert.agent, repr(alert.timestamp), alert.metric, alert.state, alert.severity], separators=(",", ":")
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


@dataclass
class Entry:
    """One alert in the outbox. ``attempts`` and ``next_try`` live in memory only (a restart retries at once)."""

    id: str
    seq: int
    alert: Alert
    attempts: int = 0
    next_try: float = 0.0
    last_error: str = field(default="", repr=False)

    @property
    def rank(self) -> int:
        return SEVERITY_RANK[self.alert.severity]

    @property
    def name(self) -> str:
        return f"{self.seq:016d}-{self.id}{SUFFIX}"

    def document(self) -> bytes:
        """What ``alert_command`` reads on stdin: the alert's fields and its ``id``."""
        return json.dumps({"id": self.id, **self.alert.model_dump(mode="json")}, separators=(",", ":")).encode()


class Outbox:
    """The entries on disk. Not thread-safe: :class:`~secure_collector.hook.AlertHook` holds the lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
        except OSError as exc:
            raise AlertHookError(f"{directory}: cannot use the alert outbox: {exc.strerror or exc}") from exc
        self._next_seq = 1

    def load(self) -> list[Entry]:
        """The entries a previous run left, oldest first; unreadable files are set aside and counted."""
        entries: list[Entry] = []
        unreadable = 0
        try:
            names = sorted(os.listdir(self.directory))
        except OSError as exc:
            raise AlertHookError(f"{self.directory}: cannot read the alert outbox: {exc.strerror or exc}") from exc
        for name in names:
            path = self.directory / name
            if name.startswith("."):  # a temporary file of a write that died
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            if not name.endswith(SUFFIX):
                continue
            entry = self._read(path)
            if entry is None:
                unreadable += 1
                with contextlib.suppress(OSError):
                    path.rename(path.with_name(name + ".unreadable"))
                continue
            entries.append(entry)
            self._next_seq = max(self._next_seq, entry.seq + 1)
        if unreadable:
            logger.error("%s: %d outbox files unreadable; kept as *.unreadable, not sent", self.directory, unreadable)
        return entries

    def _read(self, path: Path) -> Entry | None:
        match = _NAME.match(path.name)
        if match is None:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError:
            return None
        if len(data) > MAX_FILE_BYTES:
            return None
        try:
            record = json.loads(data)
            if (
                not isinstance(record, dict)
                or record.get("format") != FORMAT
                or record.get("version") != 1
                or record.get("id") != match.group(2)
                or record.get("seq") != int(match.group(1))
            ):
                return None
            alert = Alert.model_validate(record["alert"], strict=False)
        except (ValueError, KeyError, ValidationError):
            return None
        return Entry(match.group(2), int(match.group(1)), alert)

    def new_entry(self, alert: Alert, entry_id: str | None = None) -> Entry:
        entry = Entry(entry_id or alert_id(alert), self._next_seq, alert)
        self._next_seq += 1
        return entry

    def write(self, entries: list[Entry]) -> None:
        """Make ``entries`` durable (new ones, or new contents of existing ones); raise OSError on failure."""
        if not entries:
            return
        for entry in entries:
            record = {
                "format": FORMAT,
                "version": 1,
                "id": entry.id,
                "seq": entry.seq,
                "alert": entry.alert.model_dump(mode="json"),
            }
            data = json.dumps(record, separators=(",", ":"), ensure_ascii=True).encode("ascii")
            write_atomic(self.directory / entry.name, data, mode=PRIVATE_MODE, overwrite=True)
        fsync_dir(self.directory)

    def remove(self, entry: Entry) -> None:
        """The command took ``entry``: forget it (a crash before this sends it once more)."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / entry.name).unlink()
