"""Retention by age (``storage.retention``): what is older than its retention goes, in small batches.

Raw samples, agent states and alerts are kept ``history_days``; hourly trends ``trends_days``; 5-minute
trends ``history_days`` but at most :data:`FIVE_MINUTE_DAYS`, the longest window viz draws from them (a
longer one is drawn from hourly trends: ``viz.resolution``), which keeps their share of the storage small.
The agents' central audit copies are not touched: they are evidence, kept until the operator archives
them (docs/runbook.md, "Retention"). Each backend removes in steps short enough that a sweep's write never
waits long behind one (MySQL: ``DELETE ... LIMIT`` of ``batch`` rows per
transaction; files: one file at a time), and reports what it removed; :func:`expire` logs it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

from storage.config import RetentionConfig

log = logging.getLogger(__name__)

DAY = 86_400.0
FIVE_MINUTE_DAYS = 17
"""Days of 5-minute trends kept at most: viz draws a window from them only up to 400 hours (16.7 days)."""
BATCH = 5_000
"""Rows per MySQL ``DELETE`` (a few tens of milliseconds on a small server)."""


class Cutoffs(NamedTuple):
    """What is older than these times (Unix seconds) goes."""

    history: float
    five_minutes: float
    hourly: float


@runtime_checkable
class Expiring(Protocol):
    def expire(self, cutoffs: Cutoffs, *, batch: int, go_on: Callable[[], bool]) -> dict[str, int]:
        """Remove what is older than the cutoffs; per kind, how many records went. ``go_on()`` is asked
        between steps; False stops early (the collector is stopping)."""
        ...


def cutoffs(config: RetentionConfig, now: float) -> Cutoffs:
    history = now - config.history_days * DAY
    return Cutoffs(history, max(history, now - FIVE_MINUTE_DAYS * DAY), now - config.trends_days * DAY)


def expire(store: object, config: RetentionConfig, now: float | None = None, *, batch: int = BATCH,
           go_on: Callable[[], bool] = lambda: True) -> dict[str, int]:
    """One pass of retention over ``store`` (a store that cannot expire: nothing); logs what went."""
    if not isinstance(store, Expiring):
        return {}
    now = time.time() if now is None else now
    started = time.monotonic()
    removed = store.expire(cutoffs(config, now), batch=batch, go_on=go_on)
    if any(removed.values()):
        what = ", ".join(f"{count} {kind}" for kind, count in removed.items() if count)
        log.info(
            "retention: removed %s (raw data older than %d days, 5-minute trends than %d, hourly trends than %d) "
            "in %.1f s", what, config.history_days, min(config.history_days, FIVE_MINUTE_DAYS), config.trends_days,
            time.monotonic() - started,
        )
    else:
        log.debug("retention: nothing older than the retention")
    return removed
