"""Single-use enrollment tokens: issued by the operator for one name, its addresses and its role; kept by the CA.

A token is the text ``smon-enroll-1.<base64url of a JSON object>`` holding its ``id``, a 256-bit random
``secret``, the ``name``, ``role`` (``agent``/``collector``), ``hosts``, ``expires`` (Unix seconds), the
enrollment service's ``url`` and the CA certificate itself (``ca``, base64 DER), so that a new host needs
nothing else to reach the service and verify it. The token is a secret like a password: it travels to the
host by a channel the operator trusts, and is read from a file or stdin, never from the command line.

The CA keeps only a SHA-256 of the secret, with what the token entitles, in ``DIR/enroll/tokens.json``
(written atomically under an exclusive lock). What a token entitles is read from that file, never from the
token: the host's copy of name and hosts only helps it make its CSR. :meth:`TokenStore.consume` checks the
secret in constant time and marks the token used before any certificate is signed, so a token is good for one
certificate even if the service dies after the mark.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

from pki.errors import PKIError
from pki.files import PRIVATE_MODE, write_atomic

PREFIX = "smon-enroll-1."
MAX_TOKEN_CHARS = 8192  # a token with a CA certificate and a few addresses is under 2 KiB
DEFAULT_TTL = 3600.0  # an hour: long enough to hand over, short enough that a lost one is soon worthless
MAX_TTL = 30 * 86_400.0
MAX_TOKENS = 10_000  # unused tokens kept at once; expired and used ones are dropped after KEEP_SPENT
KEEP_SPENT = 30 * 86_400.0  # used, revoked and expired tokens stay listed this long, then go
ID_PATTERN = re.compile(r"^[0-9a-f]{16}$")

EntityRole = Literal["agent", "collector"]
Refusal = Literal["malformed", "unknown", "wrong_secret", "used", "expired", "revoked"]


class TokenRefused(PKIError):
    """A token that entitles nothing now; ``reason`` (one word) goes to the audit log, never to the wire."""

    def __init__(self, reason: Refusal, token_id: str = "") -> None:
        super().__init__(f"enrollment token refused: {reason}")
        self.reason: Refusal = reason
        self.token_id = token_id


class Token(NamedTuple):
    """What the host reads from its token."""

    id: str
    secret: str
    name: str
    role: EntityRole
    hosts: tuple[str, ...]
    expires: float
    url: str
    ca_pem: bytes


class Entitlement(NamedTuple):
    """What the CA recorded when it issued a token: all that the token may ever be exchanged for."""

    id: str
    name: str
    role: EntityRole
    hosts: tuple[str, ...]
    expires: float
    issued: float
    state: Literal["unused", "used", "revoked"]
    changed: float  # when it was used or revoked (0: not yet)

    def status(self, now: float) -> str:
        return "expired" if self.state == "unused" and now >= self.expires else self.state


def encode(token: Token) -> str:
    payload = {
        "v": 1,
        "id": token.id,
        "secret": token.secret,
        "name": token.name,
        "role": token.role,
        "hosts": list(token.hosts),
        "expires": int(token.expires),
        "url": token.url,
        "ca": base64.b64encode(_pem_to_der(token.ca_pem)).decode("ascii"),
    }
    text = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode("ascii")
    return PREFIX + text.rstrip("=")


def decode(text: str) -> Token:
    """The token in ``text`` (surrounding whitespace ignored); :class:`TokenRefused` ``malformed`` if it is not one."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS or not text.startswith(PREFIX):
        raise TokenRefused("malformed")
    body = text[len(PREFIX):]
    try:
        data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        der = base64.b64decode(data["ca"], validate=True)
        token = Token(
            data["id"], data["secret"], data["name"], data["role"], tuple(data["hosts"]),
            float(data["expires"]), data["url"], _der_to_pem(der),
        )
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise TokenRefused("malformed") from None
    if (
        data.get("v") != 1
        or not all(isinstance(v, str) for v in (token.id, token.secret, token.name, token.url, *token.hosts))
        or ID_PATTERN.match(token.id) is None
        or token.role not in ("agent", "collector")
    ):
        raise TokenRefused("malformed")
    return token


def token_id(text: str) -> str | None:
    """The id of the token in ``text`` for the audit log, or None when it is not a token."""
    try:
        return decode(text).id
    except TokenRefused:
        return None


def _pem_to_der(pem: bytes) -> bytes:
    lines = [line for line in pem.decode("ascii").splitlines() if line and not line.startswith("-----")]
    return base64.b64decode("".join(lines))


def _der_to_pem(der: bytes) -> bytes:
    text = base64.b64encode(der).decode("ascii")
    body = "\n".join(text[i : i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode("ascii")


def _number(record: dict[str, object], key: str) -> float:
    value = record.get(key, 0)
    return float(value) if isinstance(value, int | float) else 0.0


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class TokenStore:
    """The CA's record of tokens in ``folder/tokens.json``; every change under ``folder/tokens.lock``."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.time) -> None:
        self.folder = folder
        self.path = folder / "tokens.json"
        self._clock = clock

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, dict[str, object]]]:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.folder / "tokens.lock", os.O_RDWR | os.O_CREAT, PRIVATE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            tokens = self._read()
            before = json.dumps(tokens, sort_keys=True)
            yield tokens
            if json.dumps(tokens, sort_keys=True) != before:
                data = json.dumps({"tokens": tokens}, indent=1, sort_keys=True).encode()
                write_atomic(self.path, data, mode=PRIVATE_MODE, overwrite=True)
        finally:
            os.close(fd)  # closing releases the lock

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise PKIError(f"{self.path}: cannot read the token records: {exc}") from exc
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, dict):
            raise PKIError(f"{self.path}: not a token record file")
        return tokens

    @staticmethod
    def _entitlement(token_id: str, record: dict[str, object]) -> Entitlement:
        hosts = record.get("hosts", [])
        state = record.get("state")
        return Entitlement(
            token_id,
            str(record["name"]),
            "agent" if record.get("role") == "agent" else "collector",
            tuple(str(h) for h in hosts) if isinstance(hosts, list) else (),
            _number(record, "expires"),
            _number(record, "issued"),
            state if state in ("unused", "used") else "revoked",  # anything else entitles nothing
            _number(record, "changed"),
        )

    def issue(
        self, name: str, role: EntityRole, hosts: Sequence[str], ttl: float, url: str, ca_pem: bytes
    ) -> Token:
        if not 60 <= ttl <= MAX_TTL:
            raise PKIError(f"--ttl must be 1 minute .. {int(MAX_TTL // 86_400)} days")
        now = self._clock()
        token = Token(secrets.token_hex(8), secrets.token_urlsafe(32), name, role, tuple(hosts), now + ttl, url, ca_pem)
        with self._locked() as tokens:
            self._prune(tokens, now)
            if sum(1 for r in tokens.values() if r.get("state") == "unused") >= MAX_TOKENS:
                raise PKIError(f"{self.path}: {MAX_TOKENS} unused tokens already; revoke some first")
            tokens[token.id] = {
                "digest": _digest(token.secret),
                "name": name,
                "role": role,
                "hosts": list(hosts),
                "expires": token.expires,
                "issued": now,
                "state": "unused",
                "changed": 0,
            }
        return token

    @staticmethod
    def _prune(tokens: dict[str, dict[str, object]], now: float) -> None:
        for token_id, record in list(tokens.items()):
            ended = _number(record, "changed") or _number(record, "expires")
            if (record.get("state") != "unused" or now >= _number(record, "expires")) and now - ended > KEEP_SPENT:
                del tokens[token_id]

    def list(self) -> list[Entitlement]:
        with self._locked() as tokens:
            return sorted((self._entitlement(i, r) for i, r in tokens.items()), key=lambda e: e.issued)

    def revoke(self, token_id: str) -> Entitlement:
        with self._locked() as tokens:
            record = tokens.get(token_id)
            if record is None:
                raise PKIError(f"{self.path}: no token {token_id!r} (make-certs --list-tokens lists them)")
            if record["state"] == "unused":
                record["state"], record["changed"] = "revoked", self._clock()
            return self._entitlement(token_id, record)

    def consume(self, text: str, check: Callable[[Entitlement], None] | None = None) -> Entitlement:
        """Mark the token in ``text`` used and return what it entitles; :class:`TokenRefused` if it entitles nothing.

        ``check`` (the CSR against the entitlement) runs under the lock before the mark: what it raises leaves
        the token unused, since its holder could ask for the right thing anyway. The record is written, used,
        before this returns: a crash after it leaves the token spent, never reusable.
        """
        try:
            token = decode(text)
        except TokenRefused:
            raise TokenRefused("malformed") from None
        now = self._clock()
        with self._locked() as tokens:
            record = tokens.get(token.id)
            if record is None:
                raise TokenRefused("unknown", token.id)
            if not hmac.compare_digest(str(record["digest"]), _digest(token.secret)):
                raise TokenRefused("wrong_secret", token.id)
            entitlement = self._entitlement(token.id, record)
            if entitlement.state == "used":
                raise TokenRefused("used", token.id)
            if entitlement.state == "revoked":
                raise TokenRefused("revoked", token.id)
            if now >= entitlement.expires:
                raise TokenRefused("expired", token.id)
            if check is not None:
                check(entitlement)
            record["state"], record["changed"] = "used", now
        return entitlement._replace(state="used", changed=now)
