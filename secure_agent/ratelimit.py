"""Per-client token buckets, keyed by certificate fingerprint, bounded in memory.

Each client may make ``burst`` requests at once and ``per_second`` on average. The state lives in
the server, not in the reloadable policy, so a SIGHUP neither resets nor forgets it; new limits
from a reload apply to the buckets as they are.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

DEFAULT_MAX_CLIENTS = 10_000  # buckets kept; the least recently used is dropped beyond this


class Decision(NamedTuple):
    allowed: bool
    retry_after: int  # whole seconds until one request is allowed again (0 when allowed)


_ALLOWED = Decision(True, 0)


class RateLimiter:
    def __init__(
        self,
        per_second: float,
        burst: int,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if per_second <= 0 or burst < 1 or max_clients < 1:
            raise ValueError("per_second, burst and max_clients must be positive")
        self._rate = per_second
        self._burst = float(burst)
        self._max = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, stamp)
        self._lock = threading.Lock()

    def configure(self, per_second: float, burst: int) -> None:
        """New limits; every bucket keeps its tokens (capped at the new burst)."""
        if per_second <= 0 or burst < 1:
            raise ValueError("per_second and burst must be positive")
        with self._lock:
            self._rate, self._burst = per_second, float(burst)

    def take(self, key: str) -> Decision:
        """Spend one token of ``key``'s bucket if it has one."""
        now = self._clock()
        with self._lock:
            buckets = self._buckets
            state = buckets.get(key)
            if state is None:
                tokens = self._burst
                buckets[key] = (tokens, now)  # placed last, as the most recently used
                while len(buckets) > self._max:
                    buckets.popitem(last=False)
            else:
                tokens = min(self._burst, state[0] + (now - state[1]) * self._rate)
                buckets.move_to_end(key)
            if tokens >= 1.0:
                buckets[key] = (tokens - 1.0, now)
                return _ALLOWED
            buckets[key] = (tokens, now)
            return Decision(False, max(1, math.ceil((1.0 - tokens) / self._rate)))
