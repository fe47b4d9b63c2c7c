"""When our certificates and CRLs stop being usable: read by the agent and the collector to warn in time."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

DAY = 86_400.0


def certificate_not_after(path: Path) -> float:
    """The notAfter of the PEM certificate at ``path`` (Unix seconds); OSError or ValueError if unreadable."""
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def certificate_lifetime_days(path: Path) -> float:
    """notAfter - notBefore of the PEM certificate at ``path``, in days; OSError or ValueError if unreadable."""
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    return (certificate.not_valid_after_utc - certificate.not_valid_before_utc).total_seconds() / DAY


RENEWED_BY = 0.25
"""A certificate is renewed at 2/3 of its life (ours, cert-manager; SPIRE at 1/2): with a quarter of its
lifetime left, renewal is overdue. Expiry warnings come at that point when it is sooner than the configured
days (a 30-day certificate warns at 7.5 days left, a year's at the configured 30), so that a renewing
deployment is not warned from the day each certificate is issued."""
CRITICAL_BY = 0.1


def expiry_limits(warning_days: float, critical_days: float, lifetime_days: float | None) -> tuple[float, float]:
    """The (warning, critical) days-left for a certificate of ``lifetime_days`` (None: unknown)."""
    if lifetime_days is None or lifetime_days <= 0:
        return warning_days, critical_days
    return min(warning_days, lifetime_days * RENEWED_BY), min(critical_days, lifetime_days * CRITICAL_BY)


def crl_next_update(path: Path) -> float:
    """The nextUpdate of the PEM CRL at ``path`` (Unix seconds; infinity when it names none)."""
    following = x509.load_pem_x509_crl(path.read_bytes()).next_update_utc
    return following.timestamp() if following is not None else float("inf")


def days_left(at: float, now: float) -> float:
    """Days from ``now`` until ``at`` (negative once past), to the hundredth."""
    return round((at - now) / DAY, 2)
