"""Reading accepted tokens back from the audit log (secure_agent.audit_replay): what is loaded, where reading
stops, the byte bound, and the fail-closed floor when the window's records cannot all be read.

Logs are written through the real :class:`AuditLog` (sealed records, real rotation) with a clock we set."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_agent.audit import AuditLog
from secure_agent.audit_replay import MAX_PRELOAD_BYTES, RecordedToken, recorded_tokens
from secure_agent.audit_rotation import RotationPolicy

NOW = 1_700_000_000.0
WINDOW = 300


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _log(path: Path, clock: Clock, rotation: RotationPolicy | None = None) -> AuditLog:
    log = AuditLog(path, "agent-a", sync_interval=1e12, clock=clock, rotation=rotation)
    log.open()
    return log


def _call(log: AuditLog, number: int, ts: int) -> RecordedToken:
    token = RecordedToken("collector", f"{number:032x}", ts)
    log.record("call", "served", method="ping", status=200, key_id=token.key_id, ts=token.ts, nonce=token.nonce)
    return token


def _filler(log: AuditLog, count: int) -> None:
    for _ in range(count):
        log.record("bad_request", "refused", reason="unknown_path", status=404, path="/x")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))


def test_tokens_inside_the_window_are_loaded_and_stale_or_refused_ones_are_not(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.log", Clock(NOW - 100)
    log = _log(path, clock)
    fresh = _call(log, 1, int(NOW) + 200)  # a fast collector clock
    _call(log, 2, int(NOW) - WINDOW - 1)  # accepted, but stale from NOW on
    log.record("replay", "refused", key_id="collector", ts=int(NOW), nonce=f"{3:032x}")  # not a call: never loaded
    log.record("call", "faulted", method="x", key_id="collector")  # a call record without a token: skipped
    also = _call(log, 4, int(NOW) - 5)
    log.close()
    preload = recorded_tokens(path, now=NOW, window=WINDOW, backup_count=3)
    assert set(preload.tokens) == {fresh, also}
    assert preload.complete and preload.floor(WINDOW, NOW) is None  # read back to the start of the chain
    assert preload.bytes_read == path.stat().st_size


def test_reading_stops_at_the_first_record_older_than_the_window(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.log", Clock(NOW - 3 * WINDOW)
    log = _log(path, clock)
    _filler(log, 2000)  # ~500 KiB of old records
    hidden = _call(log, 1, int(NOW))  # impossible (ts far ahead of its record): shows the reader stopped here
    clock.now = NOW - 2 * WINDOW + 1
    recent = _call(log, 2, int(NOW) - WINDOW + 1)
    _filler(log, 10)
    log.close()
    preload = recorded_tokens(path, now=NOW, window=WINDOW, backup_count=3, max_bytes=4096)
    assert preload.tokens == (recent,) and hidden not in preload.tokens
    assert preload.complete and preload.bytes_read <= 4096 < path.stat().st_size


def test_the_previous_segments_are_read_when_the_live_one_is_younger_than_the_window(tmp_path: Path) -> None:
    path, clock = tmp_path / "audit.log", Clock(NOW - 5 * WINDOW)
    log = _log(path, clock, RotationPolicy(4096, 20))
    _filler(log, 100)  # old segments, never needed
    clock.now = NOW - 60
    token = _call(log, 1, int(NOW))
    _filler(log, 40)  # two rotations later the call is in audit.log.2 or older
    log.close()
    assert token.nonce not in path.read_text() and path.with_name("audit.log.2").exists()
    preload = recorded_tokens(path, now=NOW, window=WINDOW, backup_count=20)
    assert preload.tokens == (token,) and preload.complete
    assert preload.bytes_read < _size(path) // 2  # the old segments were not read


@pytest.mark.parametrize("gone", ["compressed", "missing"])
def test_history_that_cannot_be_read_raises_the_floor_above_its_tokens(tmp_path: Path, gone: str) -> None:
    path, clock = tmp_path / "audit.log", Clock(NOW - 100)
    log = _log(path, clock, RotationPolicy(2048, 20))
    accepted = [_call(log, number, int(NOW) + 150) for number in range(30)]
    log.close()
    segment = path.with_name("audit.log.1")
    if gone == "compressed":  # an archive job compressed it in place
        segment.rename(segment.with_name(segment.name + ".gz"))
    else:
        segment.unlink()
    preload = recorded_tokens(path, now=NOW, window=WINDOW, backup_count=20)
    assert not preload.complete and gone in preload.stopped_by
    floor = preload.floor(WINDOW, NOW)
    assert floor is not None and floor <= NOW + WINDOW + 1  # what the unread records need, no more
    assert any(token not in preload.tokens for token in accepted)  # some were in the segment gone...
    assert all(token in preload.tokens or token.ts < floor for token in accepted)  # ...and the floor refuses them


def test_a_new_log_holds_nothing_and_needs_no_floor(tmp_path: Path) -> None:
    preload = recorded_tokens(tmp_path / "audit.log", now=NOW, window=WINDOW, backup_count=3)
    assert preload.tokens == () and preload.complete and preload.floor(WINDOW, NOW) is None


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 20), st.booleans(), st.integers(-WINDOW, WINDOW)), min_size=1, max_size=60
    ),
    segment_bytes=st.integers(600, 6000),
    backup_count=st.integers(1, 8),
    max_bytes=st.one_of(st.integers(1, 30_000), st.just(MAX_PRELOAD_BYTES)),
    restart_after=st.integers(0, 2 * WINDOW),
)
def test_every_token_still_in_the_window_is_loaded_or_below_the_floor(
    steps: list[tuple[int, bool, int]], segment_bytes: int, backup_count: int, max_bytes: int, restart_after: int
) -> None:
    """Whatever the history, rotation, retention and byte cap: no accepted token can be accepted again."""
    with tempfile.TemporaryDirectory() as folder:
        path, clock = Path(folder) / "audit.log", Clock(NOW - 3 * WINDOW)
        log = _log(path, clock, RotationPolicy(segment_bytes, backup_count))
        accepted = []
        for number, (gap, is_call, offset) in enumerate(steps):
            clock.now += gap
            if is_call:
                accepted.append(_call(log, number, int(clock.now) + offset))
            else:
                _filler(log, 1)
        log.close()
        now = clock.now + restart_after
        preload = recorded_tokens(path, now=now, window=WINDOW, backup_count=backup_count, max_bytes=max_bytes)
    assert preload.bytes_read <= max_bytes
    floor = preload.floor(WINDOW, now)
    for token in accepted:
        if token.ts >= now - WINDOW:  # could be accepted again after a start at ``now``
            assert token in preload.tokens or (floor is not None and token.ts < floor), (token, preload)
