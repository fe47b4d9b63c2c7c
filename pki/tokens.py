"""The ``SMON1-HMAC-SHA256`` request token: one HMAC over the request, bound to key, time, nonce,
target agent, method, path and body, usable once.

The wire form (docs/protocol.md)::

    Authorization: SMON1-HMAC-SHA256 keyid="<id>", ts="<unix s>", nonce="<32 hex>", sig="<64 hex>"

``sig`` is lowercase hex HMAC-SHA256, keyed with the 32 bytes of the key file's hex text, of::

    SMON1-HMAC-SHA256\n<key id>\n<ts>\n<nonce>\n<agent>\nPOST\n/RPC2\n<hex SHA-256 of the body>

Like AWS SigV4 and RFC 9421 it signs a canonical string rather than the raw request, so any client
can implement it in a few lines. Verification order: shape, key id, clock window, signature
(constant-time), and only then the replay cache, so that forged tokens cannot fill the cache.

A key id is its holder's certificate name, or that name, ``/`` and a label (a second key during a
rotation): :func:`key_belongs` is the check the agent makes against the certificate carrying the token.
The replay cache keeps each key id's nonces apart, each with its own capacity: a key that outruns its
share is told to come back later (``replay_capacity``), and no key's traffic can refuse another's tokens.
A token may be dated at most :data:`FORWARD_SKEW` seconds ahead (a future-dated token holds its cache
entry longest), and ``max_clock_skew`` behind.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from pki.errors import MaterialError, TokenError, TokenRefusal
from pki.files import read_material

SCHEME = "SMON1-HMAC-SHA256"
KEY_BYTES = 32
DEFAULT_MAX_CLOCK_SKEW = 300
DEFAULT_REPLAY_CAPACITY = 100_000  # nonces per key id
FORWARD_SKEW = 60  # seconds a token may be dated ahead of the agent's clock (at most max_clock_skew)
MAX_HEADER_LENGTH = 320  # a well-formed header is at most about 290 characters; anything longer is refused unread

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_KEY_ID = rf"{_NAME}(?:/{_NAME})?"
KEY_ID_PATTERN = rf"^{_KEY_ID}$"
"""A certificate name, optionally followed by ``/`` and a label: ``collector``, ``collector/2026-12``."""
_HEADER = re.compile(
    rf'{SCHEME} keyid="({_KEY_ID})", ts="([0-9]{{1,12}})", nonce="([0-9a-f]{{32}})", sig="([0-9a-f]{{64}})"',
    re.ASCII,
)
_HEX_KEY = re.compile(rb"\s*([0-9a-fA-F]{64})\s*", re.ASCII)


class Token(NamedTuple):
    key_id: str
    ts: int
    nonce: str
    sig: str


def key_belongs(key_id: str, common_name: str) -> bool:
    """Does ``key_id`` belong to the certificate named ``common_name``: equal, or ``common_name/label``?"""
    return key_id == common_name or (
        key_id.startswith(common_name) and key_id[len(common_name) : len(common_name) + 1] == "/"
    )


def load_key(path: Path) -> bytes:
    """Read an HMAC key file (64 hex digits, mode 0600) and return its 32 bytes."""
    data = read_material(path, private=True)
    match = _HEX_KEY.fullmatch(data)
    if match is None:
        raise MaterialError(path, "must hold exactly 64 hex digits (a 32-byte HMAC key)")
    return bytes.fromhex(match.group(1).decode("ascii"))


def new_key_text() -> bytes:
    """A fresh key file's content: 32 random bytes as 64 lowercase hex digits and a newline."""
    return secrets.token_hex(KEY_BYTES).encode("ascii") + b"\n"


def string_to_sign(key_id: str, ts: int, nonce: str, agent: str, method: str, path: str, body: bytes) -> bytes:
    lines = (SCHEME, key_id, str(ts), nonce, agent, method, path, hashlib.sha256(body).hexdigest())
    return "\n".join(lines).encode("utf-8")


def _signature(key: bytes, message: bytes) -> str:
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(
    key_id: str,
    key: bytes,
    agent: str,
    body: bytes,
    *,
    method: str = "POST",
    path: str = "/RPC2",
    ts: int | None = None,
    nonce: str | None = None,
) -> str:
    """The ``Authorization`` header value for one request."""
    ts = int(time.time()) if ts is None else ts
    nonce = secrets.token_hex(16) if nonce is None else nonce
    sig = _signature(key, string_to_sign(key_id, ts, nonce, agent, method, path, body))
    return f'{SCHEME} keyid="{key_id}", ts="{ts}", nonce="{nonce}", sig="{sig}"'


def parse(header: str | bytes | None) -> Token:
    """Parse a header value; anything not exactly of the documented form is ``malformed``."""
    if header is None:
        raise TokenError("missing")
    if len(header) > MAX_HEADER_LENGTH:
        raise TokenError("malformed")
    if isinstance(header, bytes):
        try:
            header = header.decode("ascii")
        except UnicodeDecodeError:
            raise TokenError("malformed") from None
    match = _HEADER.fullmatch(header.strip(" \t"))
    if match is None:
        raise TokenError("missing" if not header.strip() else "malformed")
    key_id, ts, nonce, sig = match.groups()
    return Token(key_id, int(ts), nonce, sig)


class Admission(NamedTuple):
    accepted: bool
    reason: TokenRefusal | None = None  # "replay" or "replay_capacity"
    retry_after: int | None = None  # replay_capacity: seconds until the oldest entry of the key expires


class _KeyNonces:
    __slots__ = ("order", "seen")

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.order: list[tuple[int, str]] = []  # (ts, nonce), a heap


class ReplayCache:
    """Nonces accepted within the clock window, per key id, each key bounded by ``capacity``.

    An entry is kept until its token is stale for good (``ts`` older than twice the window: a clock
    stepped back a little does not reopen a replay). A key whose entries fill its capacity is refused
    (``replay_capacity``, with the time until its oldest entry expires) rather than forgetting any
    unexpired entry: nothing is ever dropped early, so no replay reopens, and no floor is shared, so
    one key's traffic never refuses another's tokens.
    """

    def __init__(self, window: int, capacity: int = DEFAULT_REPLAY_CAPACITY) -> None:
        if capacity < 1 or window < 1:
            raise ValueError("capacity and window must be positive")
        self._window = window
        self._capacity = capacity
        self._keys: dict[str, _KeyNonces] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(nonces.seen) for nonces in self._keys.values())

    def held(self, key_id: str) -> int:
        nonces = self._keys.get(key_id)
        return 0 if nonces is None else len(nonces.seen)

    def admit(self, key_id: str, nonce: str, ts: int, now: float, *, force: bool = False) -> Admission:
        """Record a nonce of ``key_id``. ``force`` (tokens the audit log shows accepted) ignores capacity."""
        with self._lock:
            nonces = self._keys.get(key_id)
            if nonces is None:
                nonces = self._keys[key_id] = _KeyNonces()
            horizon = now - 2 * self._window  # a token older than this is stale anyway
            order, seen = nonces.order, nonces.seen
            while order and order[0][0] < horizon:
                seen.discard(heapq.heappop(order)[1])
            if nonce in seen:
                return Admission(False, "replay")
            if len(seen) >= self._capacity and not force:
                retry = max(1, math.ceil(order[0][0] - horizon))
                return Admission(False, "replay_capacity", retry)
            seen.add(nonce)
            heapq.heappush(order, (ts, nonce))
            return Admission(True)

    def add(self, key_id: str, nonce: str, ts: int, now: float) -> bool:
        """:meth:`admit`, True when accepted."""
        return self.admit(key_id, nonce, ts, now).accepted


class Verifier:
    """Verifies tokens for one agent; thread-safe. ``replace_keys`` swaps keys and keeps the cache.

    ``not_before`` (the agent's start time) refuses tokens older than the process, so a restart,
    which empties the cache, does not reopen a replay window.
    """

    def __init__(
        self,
        keys: Mapping[str, bytes],
        agent: str,
        *,
        max_clock_skew: int = DEFAULT_MAX_CLOCK_SKEW,
        not_before: float | None = None,
        capacity: int = DEFAULT_REPLAY_CAPACITY,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = dict(keys)
        self._agent = agent
        self._skew = max_clock_skew
        self._ahead = min(max_clock_skew, FORWARD_SKEW)
        self._not_before = int(not_before) if not_before is not None else None
        self._clock = clock
        self.cache = ReplayCache(max_clock_skew, capacity)

    def replace_keys(self, keys: Mapping[str, bytes]) -> None:
        self._keys = dict(keys)

    def peek_key_id(self, header: str | bytes | None) -> str | None:
        """The key id a header claims, for the audit log, without verifying anything."""
        try:
            return parse(header).key_id
        except TokenError:
            return None

    def verify(self, header: str | bytes | None, body: bytes, *, method: str = "POST", path: str = "/RPC2") -> str:
        """Return the verified key id, or raise :class:`TokenError` with the reason."""
        return self.verify_parsed(parse(header), body, method=method, path=path)

    def verify_parsed(self, token: Token, body: bytes, *, method: str = "POST", path: str = "/RPC2") -> str:
        """:meth:`verify` for a header already parsed with :func:`parse` (so a caller that also
        needs the token's fields parses it once); the same checks in the same order."""
        key = self._keys.get(token.key_id)
        if key is None:
            raise TokenError("unknown_key")
        now = self._clock()
        too_old = now - token.ts > self._skew or (self._not_before is not None and token.ts < self._not_before)
        if too_old or token.ts - now > self._ahead:
            raise TokenError("stale")
        message = string_to_sign(token.key_id, token.ts, token.nonce, self._agent, method, path, body)
        if not hmac.compare_digest(_signature(key, message), token.sig):
            raise TokenError("bad_signature")
        admission = self.cache.admit(token.key_id, token.nonce, token.ts, now)
        if admission.reason is not None:
            raise TokenError(admission.reason, admission.retry_after)
        return token.key_id
