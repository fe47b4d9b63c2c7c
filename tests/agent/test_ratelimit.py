"""RateLimiter on its own, with a clock of our choosing: burst, refill, Retry-After, bounded memory."""

from __future__ import annotations

from secure_agent.ratelimit import Decision, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refill_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, 3, clock=clock)
    assert [limiter.take("a").allowed for _ in range(4)] == [True, True, True, False]
    assert limiter.take("a") == Decision(False, 1)
    clock.now += 0.5  # one token back at 2 per second
    assert limiter.take("a") == Decision(True, 0)
    assert not limiter.take("a").allowed
    assert limiter.take("b").allowed  # buckets are per key


def test_retry_after_rounds_up_to_whole_seconds() -> None:
    limiter = RateLimiter(0.25, 1, clock=Clock())
    assert limiter.take("a").allowed
    assert limiter.take("a") == Decision(False, 4)


def test_the_least_recently_used_bucket_is_dropped_beyond_the_bound() -> None:
    clock = Clock()
    limiter = RateLimiter(0.001, 1, max_clients=2, clock=clock)
    assert limiter.take("a").allowed and limiter.take("b").allowed
    assert not limiter.take("a").allowed  # "a" used last now, "b" least recently
    assert limiter.take("c").allowed  # drops "b", keeps "a" (still empty)
    assert not limiter.take("a").allowed
    assert limiter.take("b").allowed  # forgotten, so a full bucket again
