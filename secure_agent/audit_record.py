"""One audit record as the agent writes it: the fields it may carry, their bounds, and its sealed line.

:func:`seal` writes the canonical line of :mod:`pki.auditchain` with the record's hash, encoding each
half of the record (the keys before ``hash`` and those after) once. Client-supplied strings (method
names, paths, subjects) are cut to :data:`MAX_TEXT` characters, so a record stays one bounded line
whatever the client sends. :class:`Unwritten` counts the records a broken log could not take, for the
``audit_resumed`` record that says so once it works again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple

from pki.auditchain import Scalar, canonical

MAX_TEXT = 128  # characters kept of any one string field

FIELDS = frozenset(
    {
        "time", "event", "outcome", "reason", "agent", "peer", "subject", "common_name", "fingerprint",
        "serial", "method", "http_method", "path", "status", "request_id", "key_id", "address",
        "version", "detail", "connections", "suppressed", "ts", "nonce",
        # refusal summaries and write failures: who, which refusal, how many, first and last time
        "source", "refusal", "count", "sources", "first", "last", "events",
    }
)


def clip(value: object) -> Scalar:
    """A value fit for a record: scalars as they are, strings cut to MAX_TEXT, anything else as text."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    text = value if isinstance(value, str) else str(value)
    if len(text) > MAX_TEXT:
        return f"{text[:MAX_TEXT]}...(+{len(text) - MAX_TEXT} chars)"
    return text


_second_text: tuple[float, str] = (math.nan, "")  # the last whole second formatted, shared by threads


def utc_timestamp(seconds: float) -> str:
    """``2026-03-10T03:22:00.123456Z``: what ``datetime.fromtimestamp(seconds, UTC).strftime(...%fZ)``
    writes (microseconds rounded half to even, as datetime does), the date part formatted once a second."""
    global _second_text
    fraction, whole = math.modf(seconds)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1.0, micro - 1_000_000
    elif micro < 0:
        whole, micro = whole - 1.0, micro + 1_000_000
    cached_second, text = _second_text
    if cached_second != whole:
        text = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second_text = (whole, text)
    return f"{text}.{micro:06d}Z"


class Sealed(NamedTuple):
    line: str  # without the newline
    hash: str


def seal(fields: Mapping[str, object], prev: str, seq: int) -> Sealed:
    """The line for a record with ``fields`` following the record whose hash is ``prev``.

    The line is the canonical form of the record with its ``hash``; the hash is over the canonical form
    without it. Keys sort, so ``hash`` sits between the keys before it and those after it (``prev`` and
    ``seq`` are always after): each half is encoded once and both texts are joined from them.
    """
    unknown = set(fields) - FIELDS
    if unknown:
        raise ValueError(f"unknown audit fields: {sorted(unknown)}")
    low: dict[str, Scalar] = {}
    high: dict[str, Scalar] = {"prev": prev, "seq": seq}
    for key, value in fields.items():
        if value is not None:
            (low if key < "hash" else high)[key] = clip(value)
    after = canonical(high)[1:]  # '"key":value,...}'
    before = canonical(low)[:-1] + "," if low else "{"  # '{"key":value,' or '{'
    digest = hashlib.sha256(f"{before}{after}".encode("ascii")).hexdigest()  # record_hash: no "hash" yet
    return Sealed(f'{before}"hash":"{digest}",{after}', digest)


class Unwritten:
    """What could not be written while the log was broken: counts per event, first and last time."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.first = 0.0
        self.last = 0.0

    def add(self, event: str, now: float) -> None:
        if not self.events:
            self.first = now
        self.events[event] += 1
        self.last = now

    def fields(self, reason: str) -> dict[str, object]:
        return {
            "detail": reason,
            "count": sum(self.events.values()),
            "events": ",".join(f"{event}={count}" for event, count in sorted(self.events.items())) or None,
            "first": utc_timestamp(self.first) if self.events else None,
            "last": utc_timestamp(self.last) if self.events else None,
        }
