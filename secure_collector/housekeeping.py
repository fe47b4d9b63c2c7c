"""Retention in the background: a thread that applies ``storage.retention`` to the collector's store.

The first pass runs :data:`FIRST_DELAY` seconds after start (not in the way of the first sweeps), then one
every :data:`INTERVAL`. A pass removes in small steps (``storage.retention``) and asks between steps
whether the collector is stopping; storage that is down is tried again at the next pass. With ``--shard``
every collector of a MySQL store runs it: deleting what another already deleted costs nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from storage.config import RetentionConfig
from storage.errors import StorageError
from storage.retention import expire

log = logging.getLogger(__name__)

FIRST_DELAY = 60.0
INTERVAL = 3600.0


class Housekeeping:
    """Runs retention passes on ``store()`` (the collector's writer) until :meth:`close`."""

    def __init__(
        self,
        store: Callable[[], object],
        retention: RetentionConfig,
        *,
        first_delay: float = FIRST_DELAY,
        interval: float = INTERVAL,
    ) -> None:
        self._store = store
        self._retention = retention
        self._first_delay = first_delay
        self._interval = interval
        self._stop = threading.Event()
        self.passes = 0
        self.removed: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="collector-retention", daemon=True)

    def start(self) -> Housekeeping:
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = self._first_delay
        while not self._stop.wait(delay):
            delay = self._interval
            try:
                removed = expire(self._store(), self._retention, go_on=lambda: not self._stop.is_set())
            except StorageError as exc:
                log.warning("retention: storage unavailable (%s); trying again in %.0f s", exc, delay)
                continue
            except Exception:  # a bug here must not take polling down; it is logged with its traceback
                log.exception("retention pass failed")
                continue
            self.passes += 1
            for kind, count in removed.items():
                self.removed[kind] = self.removed.get(kind, 0) + count

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
