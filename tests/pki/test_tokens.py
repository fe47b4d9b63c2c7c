"""The SMON1-HMAC-SHA256 token: exact wire form, every bound field, single use, hostile headers."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path
from typing import TypedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pki import tokens
from pki.errors import InsecurePermissions, MaterialError, TokenError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
AGENT = "web-01"
BODY = b"<?xml version='1.0'?><methodCall><methodName>ping</methodName><params></params></methodCall>"
NOW = 1_800_000_000


def verifier(**kwargs: object) -> tokens.Verifier:
    return tokens.Verifier({"collector": KEY}, AGENT, clock=lambda: NOW, **kwargs)  # type: ignore[arg-type]


class Change(TypedDict, total=False):
    """Fields of a token to sign differently from the defaults of :func:`header`."""

    key_id: str
    key: bytes
    agent: str
    body: bytes
    method: str
    path: str
    ts: int
    nonce: str


def header(
    *,
    key_id: str = "collector",
    key: bytes = KEY,
    agent: str = AGENT,
    body: bytes = BODY,
    method: str = "POST",
    path: str = "/RPC2",
    ts: int = NOW,
    nonce: str = "0" * 32,
) -> str:
    return tokens.sign(key_id, key, agent, body, method=method, path=path, ts=ts, nonce=nonce)


def test_signature_matches_the_contract_written_out_by_hand() -> None:
    nonce = "a" * 32
    lines = [
        "SMON1-HMAC-SHA256",
        "collector",
        str(NOW),
        nonce,
        AGENT,
        "POST",
        "/RPC2",
        hashlib.sha256(BODY).hexdigest(),
    ]
    expected = hmac.new(KEY, "\n".join(lines).encode(), hashlib.sha256).hexdigest()
    assert header(nonce=nonce) == (
        f'SMON1-HMAC-SHA256 keyid="collector", ts="{NOW}", nonce="{nonce}", sig="{expected}"'
    )


def test_a_token_verifies_exactly_once() -> None:
    check = verifier()
    value = header()
    assert check.verify(value, BODY) == "collector"
    with pytest.raises(TokenError) as refused:
        check.verify(value, BODY)
    assert refused.value.reason == "replay"


BOUND_FIELDS: dict[str, tuple[str, Change]] = {
    "key": ("bad_signature", {"key": OTHER_KEY}),
    "agent": ("bad_signature", {"agent": "web-02"}),
    "body": ("bad_signature", {"body": BODY.replace(b"ping", b"pong")}),
    "method": ("bad_signature", {"method": "GET"}),
    "path": ("bad_signature", {"path": "/RPC3"}),
    "key_id": ("unknown_key", {"key_id": "intruder"}),
}


@pytest.mark.parametrize("field", sorted(BOUND_FIELDS))
def test_each_bound_field_changes_the_verdict(field: str) -> None:
    reason, change = BOUND_FIELDS[field]
    with pytest.raises(TokenError) as refused:
        verifier().verify(header(**change), BODY)
    assert refused.value.reason == reason


@settings(max_examples=200, deadline=None)
@given(
    position=st.integers(min_value=0, max_value=10_000),
    flip=st.integers(min_value=1, max_value=255),
    target=st.sampled_from(["body", "header"]),
)
def test_any_single_byte_change_is_refused(position: int, flip: int, target: str) -> None:
    value = header().encode()
    body = BODY
    if target == "body":
        index = position % len(body)
        body = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    else:
        index = position % len(value)
        value = value[:index] + bytes([value[index] ^ flip]) + value[index + 1 :]
    with pytest.raises(TokenError):
        verifier().verify(value, body)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600), st.text(max_size=600)))
def test_garbage_headers_are_refused_as_auth_errors(value: bytes | str) -> None:
    with pytest.raises(TokenError) as refused:
        verifier().verify(value, BODY)
    assert refused.value.reason in {"missing", "malformed", "unknown_key", "stale", "bad_signature"}


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "   ",
        header()[:-5],
        header() + "x",
        header() + " " * 300,
        header().replace("SMON1", "SMON2"),
        header().upper(),
        "Bearer abc",
    ],
)
def test_missing_truncated_oversized_and_foreign_tokens(value: str | None) -> None:
    with pytest.raises(TokenError) as refused:
        verifier().verify(value, BODY)
    assert refused.value.reason in {"missing", "malformed"}


@pytest.mark.parametrize("offset", [-301, 301, -10_000])
def test_timestamps_outside_the_window_are_stale(offset: int) -> None:
    with pytest.raises(TokenError) as refused:
        verifier().verify(header(ts=NOW + offset), BODY)
    assert refused.value.reason == "stale"


def test_tokens_older_than_the_agent_start_are_refused() -> None:
    check = verifier(not_before=NOW - 5)
    with pytest.raises(TokenError) as refused:
        check.verify(header(ts=NOW - 6), BODY)
    assert refused.value.reason == "stale"
    assert check.verify(header(ts=NOW - 5), BODY) == "collector"


def test_forged_tokens_never_enter_the_replay_cache() -> None:
    check = verifier()
    for index in range(50):
        with pytest.raises(TokenError):
            check.verify(header(key=OTHER_KEY, nonce=f"{index:032x}"), BODY)
    assert len(check.cache) == 0
    assert check.verify(header(nonce=f"{7:032x}"), BODY) == "collector"


def test_replay_cache_is_bounded_per_key_and_never_reopens_a_replay() -> None:
    cache = tokens.ReplayCache(window=300, capacity=10)
    for index in range(10):
        assert cache.add("k", f"n{index}", NOW + index, NOW)
    full = cache.admit("k", "n10", NOW + 10, NOW)  # k's share is full: refused, with when to come back
    assert (full.accepted, full.reason) == (False, "replay_capacity")
    assert full.retry_after == 600  # n0 (ts NOW) expires at NOW + 2 x window
    assert cache.admit("k", "n0", NOW, NOW).reason == "replay"  # nothing was forgotten
    assert cache.add("other", "n0", NOW, NOW)  # another key is untouched by k's traffic
    assert cache.add("k", "n10", NOW + 10, NOW + 601)  # n0 expired: room again
    assert cache.admit("k", "n11", NOW, NOW, force=True).accepted  # the audit log's own tokens always go in


def test_replay_cache_forgets_what_is_stale_anyway() -> None:
    cache = tokens.ReplayCache(window=300, capacity=1000)
    for index in range(100):
        cache.add("k", f"n{index}", NOW, NOW)
    cache.add("k", "late", NOW + 700, NOW + 700)
    assert len(cache) == 1


def test_key_files_must_be_private_and_64_hex_digits(tmp_path: Path) -> None:
    good = tmp_path / "c.hmac"
    good.write_bytes(tokens.new_key_text())
    os.chmod(good, 0o600)
    assert len(tokens.load_key(good)) == 32
    os.chmod(good, 0o644)
    with pytest.raises(InsecurePermissions, match=str(good)):
        tokens.load_key(good)
    short = tmp_path / "short.hmac"
    short.write_text("abcd\n")
    os.chmod(short, 0o600)
    with pytest.raises(MaterialError, match="64 hex digits"):
        tokens.load_key(short)


def test_replace_keys_keeps_the_replay_cache() -> None:
    check = verifier()
    value = header()
    check.verify(value, BODY)
    check.replace_keys({"collector": KEY, "new": OTHER_KEY})
    with pytest.raises(TokenError) as refused:
        check.verify(value, BODY)
    assert refused.value.reason == "replay"


@pytest.mark.parametrize("field", sorted(BOUND_FIELDS))
def test_verify_parsed_gives_the_same_verdicts_as_verify(field: str) -> None:
    reason, change = BOUND_FIELDS[field]
    with pytest.raises(TokenError) as refused:
        verifier().verify_parsed(tokens.parse(header(**change)), BODY)
    assert refused.value.reason == reason
    check = verifier()
    token = tokens.parse(header())
    assert check.verify_parsed(token, BODY) == "collector"
    with pytest.raises(TokenError) as replayed:  # one replay cache for both entry points
        check.verify(header(), BODY)
    assert replayed.value.reason == "replay"
    with pytest.raises(TokenError) as stale:
        verifier().verify_parsed(tokens.parse(header(ts=NOW - 301)), BODY)
    assert stale.value.reason == "stale"


@st.composite
def _interleavings(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int, int, bool]]]:
    """Calls of several keys: (key, seconds since start, ts offset from now, replayed nonce?)."""
    capacity = draw(st.integers(min_value=1, max_value=8))
    window = draw(st.integers(min_value=1, max_value=20))
    calls = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["honest", "noisy", "other/label"]),
                st.integers(min_value=0, max_value=4 * window),
                st.integers(min_value=-window, max_value=window),
                st.booleans(),
            ),
            max_size=60,
        )
    )
    calls.sort(key=lambda call: call[1])
    return capacity, window, calls


@settings(max_examples=300, deadline=None)
@given(_interleavings())
def test_a_key_within_its_share_is_never_refused_whatever_the_others_do(
    case: tuple[int, int, list[tuple[str, int, int, bool]]],
) -> None:
    capacity, window, calls = case
    cache = tokens.ReplayCache(window=window, capacity=capacity)
    honest: list[tuple[int, float]] = []  # (ts, when) of the honest key's accepted tokens
    used: dict[str, list[str]] = {}
    for index, (key, at, offset, replayed) in enumerate(calls):
        now = NOW + at
        ts = int(now) + offset
        previous = used.setdefault(key, [])
        nonce = previous[-1] if replayed and previous else f"{key}-{index}"
        if key == "honest":
            # the honest key stays within its share: at most `capacity` live entries at once
            live = [t for t, _ in honest if t >= now - 2 * window]
            if replayed or len(live) >= capacity:
                continue
            admission = cache.admit(key, nonce, ts, now)
            assert admission.accepted, (admission, honest, now)
            honest.append((ts, now))
        else:
            cache.admit(key, nonce, ts, now)
        previous.append(nonce)


@settings(max_examples=200, deadline=None)
@given(_interleavings())
def test_no_nonce_is_ever_accepted_twice_within_the_window(
    case: tuple[int, int, list[tuple[str, int, int, bool]]],
) -> None:
    capacity, window, calls = case
    cache = tokens.ReplayCache(window=window, capacity=capacity)
    accepted: dict[tuple[str, str], int] = {}
    for index, (key, at, offset, replayed) in enumerate(calls):
        now = NOW + at
        ts = int(now) + offset
        nonce = "same" if replayed else f"n{index}"
        if cache.add(key, nonce, ts, now):
            earlier = accepted.get((key, nonce))
            # accepted again only once the first token could no longer pass the clock window
            assert earlier is None or earlier < now - window, (key, nonce, earlier, now)
            accepted[(key, nonce)] = ts


def test_a_token_dated_further_ahead_than_the_forward_skew_is_stale() -> None:
    check = tokens.Verifier({"collector": KEY}, AGENT, max_clock_skew=300, clock=lambda: NOW)
    ahead = tokens.FORWARD_SKEW
    assert check.verify(header(ts=NOW + ahead, nonce=f"{1:032x}"), BODY) == "collector"
    with pytest.raises(TokenError, match="stale"):
        check.verify(header(ts=NOW + ahead + 1, nonce=f"{2:032x}"), BODY)
    assert check.verify(header(ts=NOW - 300, nonce=f"{3:032x}"), BODY) == "collector"  # behind: the full skew


@pytest.mark.parametrize(
    ("key_id", "name", "belongs"),
    [
        ("collector", "collector", True),
        ("collector/2026-12", "collector", True),
        ("collector2", "collector", False),
        ("collector.x", "collector", False),
        ("other/collector", "collector", False),
        ("col", "collector", False),
        ("collector/", "collector", False),
    ],
)
def test_a_key_id_belongs_to_the_certificate_of_its_name(key_id: str, name: str, belongs: bool) -> None:
    valid = re.fullmatch(tokens.KEY_ID_PATTERN, key_id) is not None
    assert (valid and tokens.key_belongs(key_id, name)) == belongs
