"""The optional ``alert_command``: a program that receives each alert as one JSON document on stdin.

It runs with an argument vector, never through a shell, with a minimal environment, no terminal, and
under :data:`DEFAULT_TIMEOUT` (killed after it). Alerts are handed over from a bounded queue on one
background thread, so a slow or hanging command never delays polling; when the queue is full, alerts are
still stored and logged but not handed to the command, and that is logged too.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from secure_collector.errors import AlertHookError
from storage.models import Alert

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
QUEUE_SIZE = 1000
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def resolve(argv: Sequence[str]) -> tuple[str, ...]:
    """Check ``alert_command`` at start-up: an executable program, as an absolute path or found on PATH."""
    if not argv or not argv[0]:
        raise AlertHookError("alert_command: must name a program")
    program = argv[0]
    found = program if os.path.isabs(program) else shutil.which(program, path=_ENV["PATH"])
    if found is None or not Path(found).is_file() or not os.access(found, os.X_OK):
        raise AlertHookError(f"alert_command: {program!r} is not an executable program")
    return (found, *argv[1:])


class AlertHook:
    """Runs ``argv`` once per alert with the alert as JSON on stdin, on a background thread."""

    def __init__(self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.argv = resolve(argv)
        self.timeout = timeout
        self._queue: queue.Queue[Alert | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._run, name="alert-hook", daemon=True)
        self._thread.start()
        self.delivered = 0
        self.failed = 0

    def submit(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.failed += 1
            logger.error("alert_command is falling behind; alert %s %s not handed over", alert.agent, alert.metric)

    def close(self, timeout: float | None = None) -> None:
        """Finish the queued alerts (each still under its own timeout), then stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            self._deliver(alert)

    def _deliver(self, alert: Alert) -> None:
        document = json.dumps(alert.model_dump(mode="json"), separators=(",", ":")).encode("utf-8")
        try:
            completed = subprocess.run(  # noqa: S603 - argv from the operator's config, checked at start, no shell
                self.argv,
                input=document,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=self.timeout,
                env=_ENV,
                close_fds=True,
                check=False,
            )
        except subprocess.TimeoutExpired:
            self.failed += 1
            logger.error("alert_command %s timed out after %.0f s (killed)", self.argv[0], self.timeout)
            return
        except OSError as exc:
            self.failed += 1
            logger.error("alert_command %s cannot run: %s", self.argv[0], exc.strerror or exc)
            return
        if completed.returncode != 0:
            self.failed += 1
            tail = completed.stderr[-200:].decode("utf-8", "replace").replace("\n", " ")
            logger.error("alert_command %s exited %d: %r", self.argv[0], completed.returncode, tail)
        else:
            self.delivered += 1
