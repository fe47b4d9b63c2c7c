"""When our certificates and CRLs stop being usable: read by the agent and the collector to warn in time."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

DAY = 86_400.0


def certificate_not_after(path: Path) -> float:
    """The notAfter of the PEM certificate at ``path`` (Unix seconds); OSError or ValueError if unreadable."""
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def crl_next_update(path: Path) -> float:
    """The nextUpdate of the PEM CRL at ``path`` (Unix seconds; infinity when it names none)."""
    following = x509.load_pem_x509_crl(path.read_bytes()).next_update_utc
    return following.timestamp() if following is not None else float("inf")


def days_left(at: float, now: float) -> float:
    """Days from ``now`` until ``at`` (negative once past), to the hundredth."""
    return round((at - now) / DAY, 2)
