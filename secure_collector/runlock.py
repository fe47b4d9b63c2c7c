"""Who owns a ``spool_dir``: one collector that stores, spools and keeps the alert state there, at a time.

The long-running collector holds ``spool_dir/collector.lock`` (``collector-IofN.lock`` for ``--shard I/N``,
so shards sharing a directory keep apart) for its whole life, with its PID written in it. ``--once`` tries
the same lock without waiting: when it gets it, it is the only collector of that directory (run from
cron, say) and stores as usual; when the service holds it, ``--once`` only polls and prints, touching
neither storage (nor its lock), nor the spool, nor the alert state; the same when another shard's
service holds its lock in that directory (they share the storage and the spool). A service that starts
while a ``--once`` run holds the lock waits for it (one sweep) instead of failing.

``flock`` locks vanish with the process that held them, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from secure_collector.errors import CollectorError

WAIT_STEP = 0.1


def lock_path(spool_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    if shard is None:
        return spool_dir / "collector.lock"
    return spool_dir / f"collector-{shard[0]}of{shard[1]}.lock"


class RunLock:
    """An exclusive ``flock`` on one file, with the holder's PID in it."""

    def __init__(self, path: Path, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._monotonic = monotonic
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0) -> bool:
        """Take the lock, waiting up to ``wait`` seconds for another holder; False when it stayed held.

        Raises :class:`CollectorError` when the lock file cannot be made (the spool directory is unusable).
        """
        if self._fd is not None:
            return True
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise CollectorError(f"spool_dir: cannot create {self.path}: {exc.strerror or exc}") from exc
        deadline = self._monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise CollectorError(f"spool_dir: cannot lock {self.path}: {exc.strerror or exc}") from exc
            if self._monotonic() >= deadline:
                os.close(fd)
                return False
            time.sleep(WAIT_STEP)  # flock has no timed wait; a bounded poll of the lock
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return True

    def holder(self) -> int | None:
        """The PID written by whoever holds (or last held) the lock, if readable."""
        try:
            text = self.path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and len(text) <= 10 else None

    def others_held(self) -> list[RunLock]:
        """The other collectors' locks in this directory (other shards) that a live process holds."""
        held = []
        for path in sorted(self.path.parent.glob("collector*.lock")):
            if path == self.path:
                continue
            other = RunLock(path, monotonic=self._monotonic)
            try:
                if not other.acquire():
                    held.append(other)
            except CollectorError:
                continue  # not ours to judge: a lock file we cannot even open
            finally:
                other.release()
        return held

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
