"""The exception tree of :mod:`pki`::

    PKIError                     root of everything this package raises
    ├── ConfigError              a configuration file is missing, unreadable or invalid (names file and key)
    ├── MaterialError            a certificate, key, CRL or HMAC key file is unusable (names the file)
    │   └── InsecurePermissions  a private file is readable by group or others
    └── TokenError               a request token is refused; ``reason`` says why, in one word

Every message is one line, fit for stderr (a :class:`ConfigError` one line per mistake of the file); none
holds key material.
"""

from __future__ import annotations

from typing import Literal

TokenRefusal = Literal[
    "missing", "malformed", "unknown_key", "key_not_bound", "stale", "replay", "bad_signature", "replay_capacity"
]


class PKIError(Exception):
    """Root of every error raised by :mod:`pki`."""


class ConfigError(PKIError):
    """A configuration file cannot be used; the message names the file and the key path."""


class MaterialError(PKIError):
    """TLS or HMAC material cannot be used; the message names the file."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


class InsecurePermissions(MaterialError):
    """A private key or HMAC key file is readable or writable by group or others."""


class TokenError(PKIError):
    """A request token was refused. ``reason`` is one of :data:`TokenRefusal`."""

    def __init__(self, reason: TokenRefusal, retry_after: int | None = None) -> None:
        super().__init__(f"request token refused: {reason}")
        self.reason: TokenRefusal = reason
        self.retry_after = retry_after  # replay_capacity: seconds until the key's share has room again
