"""The ``SMON1-HMAC-SHA256`` request token: one HMAC over the request, bound to key, time, nonce,
target agent, method, path and body, usable once.

The wire form (docs/protocol.md)::

    Authorization: SMON1-HMAC-SHA256 keyid="<id>", ts="<unix s>", nonce="<32 hex>", sig="<64 hex>"

``sig`` is lowercase hex HMAC-SHA256, keyed with the 32 bytes of the key file's hex text, of::

    SMON1-HMAC-SHA256\n<key id>\n<ts>\n<nonce>\n<agent>\nPOST\n/RPC2\n<hex SHA-256 of the body>

Like AWS SigV4 and RFC 9421 it signs a canonical string rather than the raw request, so any client
can implement it in a few lines. Verification order: shape, key id, clock window, signature
(constant-time), and only then the replay cache, so that forged tokens cannot fill the cache.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from pki.errors import MaterialError, TokenError
from pki.files import read_material

SCHEME = "SMON1-HMAC-SHA256"
KEY_BYTES = 32
DEFAULT_MAX_CLOCK_SKEW = 300
DEFAULT_REPLAY_CAPACITY = 100_000
MAX_HEADER_LENGTH = 256  # a well-formed header is about 190 characters; anything longer is refused unread

_KEY_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
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


class ReplayCache:
    """Nonces accepted within the clock window, bounded in memory, forgetting what has expired.

    When full of unexpired nonces, the oldest is dropped and the *floor* rises to its timestamp:
    from then on every token at or below the floor is refused, so dropping never reopens a replay.
    """

    def __init__(self, window: int, capacity: int = DEFAULT_REPLAY_CAPACITY) -> None:
        if capacity < 1 or window < 1:
            raise ValueError("capacity and window must be positive")
        self._window = window
        self._capacity = capacity
        self._seen: set[tuple[str, str]] = set()
        self._order: list[tuple[int, str, str]] = []
        self._floor = -1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key_id: str, nonce: str, ts: int, now: float) -> bool:
        """Record a nonce; False if it was already recorded or is at or below the floor."""
        with self._lock:
            horizon = now - 2 * self._window  # a token older than this is stale anyway
            while self._order and self._order[0][0] < horizon:
                _, old_key, old_nonce = heapq.heappop(self._order)
                self._seen.discard((old_key, old_nonce))
            entry = (key_id, nonce)
            if ts <= self._floor or entry in self._seen:
                return False
            self._seen.add(entry)
            heapq.heappush(self._order, (ts, key_id, nonce))
            while len(self._seen) > self._capacity:
                old_ts, old_key, old_nonce = heapq.heappop(self._order)
                self._seen.discard((old_key, old_nonce))
                self._floor = max(self._floor, old_ts)
            return True


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
        if abs(now - token.ts) > self._skew or (self._not_before is not None and token.ts < self._not_before):
            raise TokenError("stale")
        message = string_to_sign(token.key_id, token.ts, token.nonce, self._agent, method, path, body)
        if not hmac.compare_digest(_signature(key, message), token.sig):
            raise TokenError("bad_signature")
        if not self.cache.add(token.key_id, token.nonce, token.ts, now):
            raise TokenError("replay")
        return token.key_id
