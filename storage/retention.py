"""Retention by age (``storage.retention``): what is older than its retention goes, in small batches.

Raw samples, agent states, alerts and the 5-minute trends are kept ``history_days``; hourly trends
``trends_days``. The agents' central audit copies are not touched: they are evidence, kept until the
operator archives them (docs/runbook.md, "Retention"). Each backend removes in steps short enough that
a sweep's write never waits long behind one (MySQL: ``DELETE ... LIMIT`` of ``batch`` rows per
transaction; files: one file at a time), and reports what it removed; :func:`expire` logs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from storage.config import RetentionConfig

log = logging.getLogger(__name__)

DAY = 86_400.0
BATCH = 5_000
"""Rows per MySQL ``DELETE`` (a few tens of milliseconds on a small server)."""


@runtime_checkable
class Expiring(Protocol):
    def expire(
        self, history_before: float, trends_before: float, *, batch: int, go_on: Callable[[], bool]
    ) -> dict[str, int]:
        """Remove what is older than the cutoffs; per kind, how many records went. ``go_on()`` is asked
        between steps; False stops early (the collector is stopping)."""
        ...


def cutoffs(config: RetentionConfig, now: float) -> tuple[float, float]:
    """(raw data and 5-minute trends before, hourly trends before)."""
    return now - config.history_days * DAY, now - config.trends_days * DAY


def expire(store: object, config: RetentionConfig, now: float | None = None, *, batch: int = BATCH,
           go_on: Callable[[], bool] = lambda: True) -> dict[str, int]:
    """One pass of retention over ``store`` (a store that cannot expire: nothing); logs what went."""
    if not isinstance(store, Expiring):
        return {}
    now = time.time() if now is None else now
    history_before, trends_before = cutoffs(config, now)
    started = time.monotonic()
    removed = store.expire(history_before, trends_before, batch=batch, go_on=go_on)
    if any(removed.values()):
        what = ", ".join(f"{count} {kind}" for kind, count in removed.items() if count)
        log.info(
            "retention: removed %s (raw data older than %d days, hourly trends older than %d days) in %.1f s",
            what, config.history_days, config.trends_days, time.monotonic() - started,
        )
    else:
        log.debug("retention: nothing older than the retention")
    return removed
