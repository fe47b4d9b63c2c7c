"""The collector's own certificate, its CA and its CRL: how many days each has left.

Agents' certificates are judged from every handshake (``cert_days_left`` of each sample); this module reads
the collector's own material from its files, at most every :data:`REREAD` seconds or when a file changes, so
that ``certificate_expiry`` also fires for the collector's certificate, the CA and the CRL's nextUpdate
before the first poll fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cryptography import x509

from pki.validity import certificate_lifetime_days, certificate_not_after, crl_next_update

logger = logging.getLogger(__name__)

REREAD = 3600.0


class Deadline(NamedTuple):
    what: str  # "the collector's certificate", "the CA certificate", "the CRL (its nextUpdate)"
    at: float  # Unix seconds
    crl: bool = False
    lifetime: float | None = None  # days from notBefore to notAfter (a certificate's)


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
            ("the collector's certificate", cert, certificate_not_after),
            ("the CA certificate", ca, certificate_not_after),
        ]
        if crl is not None:
            self._files.append(("the CRL (its nextUpdate)", crl, crl_next_update))
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
                crl = read is crl_next_update
                found.append(Deadline(what, read(path), crl, None if crl else certificate_lifetime_days(path)))
            except (OSError, ValueError) as exc:  # the collector loaded them at start: a file changed since
                logger.warning("cannot read %s at %s to check its expiry: %s", what, path, exc)
        self._read_at, self._stamps, self._deadlines = now, stamps, tuple(found)
        return self._deadlines


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0
