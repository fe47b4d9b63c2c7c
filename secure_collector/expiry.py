"""The collector's own certificate, its CA and its CRL: how many days each has left.

Agents' certificates are judged from every handshake (``cert_days_left`` of each sample); this module reads
the collector's own material from its files, at most every :data:`REREAD` seconds or when a file changes, so
that ``certificate_expiry`` also fires for the collector's certificate, the CA and the CRL's nextUpdate
before the first poll fails.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cryptography import x509

logger = logging.getLogger(__name__)

REREAD = 3600.0


class Deadline(NamedTuple):
    what: str  # "the collector's certificate", "the CA certificate", "the CRL (its nextUpdate)"
    at: float  # Unix seconds
    crl: bool = False


def _certificate_end(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def _crl_next_update(path: Path) -> float:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    following = crl.next_update_utc
    return following.timestamp() if following is not None else float("inf")


def common_name(path: Path) -> str | None:
    """The common name of the certificate at ``path`` (None if unreadable)."""
    try:
        names = x509.load_pem_x509_certificate(path.read_bytes()).subject.get_attributes_for_oid(
            x509.NameOID.COMMON_NAME
        )
    except (OSError, ValueError):
        return None
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


class OwnMaterial:
    """The deadlines of the collector's certificate, CA and CRL, read again when due or changed."""

    def __init__(
        self, cert: Path, ca: Path, crl: Path | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._files: list[tuple[str, Path, Callable[[Path], float]]] = [
            ("the collector's certificate", cert, _certificate_end),
            ("the CA certificate", ca, _certificate_end),
        ]
        if crl is not None:
            self._files.append(("the CRL (its nextUpdate)", crl, _crl_next_update))
        self._clock = clock
        self._read_at: float | None = None
        self._stamps: tuple[float, ...] = ()
        self._deadlines: tuple[Deadline, ...] = ()

    def deadlines(self) -> tuple[Deadline, ...]:
        now = self._clock()
        stamps = tuple(_mtime(path) for _, path, _ in self._files)
        if self._read_at is not None and now - self._read_at < REREAD and stamps == self._stamps:
            return self._deadlines
        found = []
        for what, path, read in self._files:
            try:
                found.append(Deadline(what, read(path), read is _crl_next_update))
            except (OSError, ValueError) as exc:  # the collector loaded them at start: a file changed since
                logger.warning("cannot read %s at %s to check its expiry: %s", what, path, exc)
        self._read_at, self._stamps, self._deadlines = now, stamps, tuple(found)
        return self._deadlines


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


def days_left(at: float, now: float) -> float:
    return round((at - now) / 86_400, 2)


def utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d")
