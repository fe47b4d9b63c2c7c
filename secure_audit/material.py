"""Checks of the files a config points at: certificates, private keys, HMAC keys, the CRL, writable paths.

Each check reads the file the way the programs do (through :mod:`pki.files`, bounded) and returns
findings instead of raising, so one report lists every problem of a deployment at once. Policy:

- certificates: expired or not yet valid (high); expiring within :data:`EXPIRY_WARNING` (medium);
  a leaf living longer than ``pki.ca.MAX_LEAF_DAYS`` (397, the CA/Browser Forum ceiling) (medium), or than
  :data:`MODERN_LEAF_DAYS` (90, Mozilla modern) (info);
- keys: EC below P-256, RSA below 2048 bits, DSA or an unknown type (high);
- private files (TLS keys, HMAC keys): readable or writable by group or others (high), the same
  rule that makes the agent and collector refuse to start (``pki.files.check_private``);
- HMAC keys shorter than :data:`MIN_HMAC_BYTES` (high);
- the CRL: missing (medium), past its nextUpdate or not signed by our CA (high), within
  :data:`CRL_WARNING` of its nextUpdate (medium).
"""

from __future__ import annotations

import datetime as dt
import re
import stat
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from pki.ca import MAX_LEAF_DAYS
from pki.errors import MaterialError
from pki.files import read_material
from secure_audit.findings import Finding, Role, Severity

MODERN_LEAF_DAYS = 90  # Mozilla's server-side TLS guidelines, modern profile
EXPIRY_WARNING = dt.timedelta(days=30)
CRL_WARNING = dt.timedelta(days=7)
# make_certs backdates notBefore by 5 minutes; a 397-day leaf is still within policy
LIFETIME_TOLERANCE = dt.timedelta(hours=1)
MIN_EC_BITS = 256
MIN_RSA_BITS = 2048
MIN_HMAC_BYTES = 32

_HEX = re.compile(rb"\s*([0-9a-fA-F]*)\s*", re.ASCII)


class Where(NamedTuple):
    """The config key a check is about; makes findings that name it."""

    role: Role
    config: str
    key: str

    def at(self, key: str) -> Where:
        return self._replace(key=key)

    def finding(self, id_: str, severity: Severity, message: str, fix: str, file: Path | None = None) -> Finding:
        return Finding(id_, severity, self.role, self.config, self.key, message, fix, str(file) if file else None)


def _unusable(where: Where, path: Path, problem: str, what: str) -> Finding:
    return where.finding(
        "material-unusable",
        Severity.HIGH,
        f"{problem}; the program will refuse to start",
        f"put a valid {what} at {path} (make_certs writes one)",
        path,
    )


def load_certificate(where: Where, path: Path) -> x509.Certificate | Finding:
    try:
        return x509.load_pem_x509_certificate(read_material(path))
    except MaterialError as exc:
        return _unusable(where, path, exc.problem, "PEM certificate")
    except ValueError:
        return _unusable(where, path, "is not a PEM certificate", "PEM certificate")


def key_weakness(public_key: object) -> str | None:
    """Why a certificate's public key is too weak, or None when it meets the floor."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.key_size < MIN_EC_BITS:
            return f"EC key on {public_key.curve.name} ({public_key.curve.key_size} bits); the floor is P-256"
        return None
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            return f"RSA key of {public_key.key_size} bits; the floor is {MIN_RSA_BITS}"
        return None
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return None
    if isinstance(public_key, dsa.DSAPublicKey):
        return "DSA key; DSA is deprecated (FIPS 186-5)"
    return f"{type(public_key).__name__} is not an accepted key type"


def check_certificate(
    where: Where, path: Path, *, leaf: bool, now: dt.datetime
) -> tuple[x509.Certificate | None, list[Finding]]:
    """Expiry, lifetime (leaves) and key strength of the certificate at ``path``."""
    loaded = load_certificate(where, path)
    if isinstance(loaded, Finding):
        return None, [loaded]
    cert, findings = loaded, []
    what = "leaf certificate" if leaf else "CA certificate"
    renew = (
        "re-issue it: make_certs --out DIR --force --agent/--collector NAME, copy it, then SIGHUP (docs/runbook.md)"
        if leaf
        else "create a new CA and re-issue every certificate before this date (docs/runbook.md)"
    )
    not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
    if not_after <= now:
        findings.append(
            where.finding(
                "cert-expired", Severity.HIGH, f"{what} expired on {not_after:%Y-%m-%d %H:%M} UTC", renew, path
            )
        )
    elif not_after - now <= EXPIRY_WARNING:
        days = (not_after - now).days
        findings.append(
            where.finding(
                "cert-expiring",
                Severity.MEDIUM,
                f"{what} expires on {not_after:%Y-%m-%d} UTC, in {days} day{'s' if days != 1 else ''}",
                renew,
                path,
            )
        )
    if not_before > now:
        findings.append(
            where.finding(
                "cert-not-yet-valid",
                Severity.HIGH,
                f"{what} is not valid before {not_before:%Y-%m-%d %H:%M} UTC; peers refuse it until then",
                "check the clocks of this host and of the machine that issued it (NTP)",
                path,
            )
        )
    lifetime = not_after - not_before
    if leaf and lifetime > dt.timedelta(days=MAX_LEAF_DAYS) + LIFETIME_TOLERANCE:
        findings.append(
            where.finding(
                "cert-lifetime",
                Severity.MEDIUM,
                f"leaf certificate lives {lifetime.days} days; policy is at most {MAX_LEAF_DAYS}",
                f"re-issue it with make_certs --days 90 (at most {MAX_LEAF_DAYS})",
                path,
            )
        )
    elif leaf and lifetime > dt.timedelta(days=MODERN_LEAF_DAYS) + LIFETIME_TOLERANCE:
        findings.append(
            where.finding(
                "cert-lifetime-modern",
                Severity.INFO,
                f"leaf certificate lives {lifetime.days} days; Mozilla's modern profile says at most "
                f"{MODERN_LEAF_DAYS}",
                f"re-issue it with make_certs --days {MODERN_LEAF_DAYS} (the default)",
                path,
            )
        )
    weakness = key_weakness(cert.public_key())
    if weakness is not None:
        findings.append(
            where.finding(
                "weak-key",
                Severity.HIGH,
                f"{what} has a weak key: {weakness}",
                "re-issue it with an EC P-256 key (make_certs does)" if leaf else "create a new CA (EC P-256)",
                path,
            )
        )
    return cert, findings


def check_private_file(where: Where, path: Path, what: str) -> list[Finding]:
    """A TLS or HMAC key file: present, a regular file, and not open to group or others."""
    try:
        info = path.stat()
    except OSError as exc:
        return [_unusable(where, path, f"cannot read it: {exc.strerror or exc}", what)]
    if not stat.S_ISREG(info.st_mode):
        return [_unusable(where, path, "is not a regular file", what)]
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        return [
            where.finding(
                "key-file-readable",
                Severity.HIGH,
                f"{what} has mode {mode:04o}: group or others can read or change it "
                "(the program refuses to start with it)",
                f"chmod 600 {path} (owner: the service user)",
                path,
            )
        ]
    return []


def check_hmac_key(where: Where, path: Path) -> list[Finding]:
    """An HMAC key file: private, and holding at least 32 bytes as hex. Its content is never reported."""
    findings = check_private_file(where, path, "HMAC key file")
    if any(f.id == "material-unusable" for f in findings):
        return findings
    try:
        data = read_material(path)
    except MaterialError as exc:
        return [*findings, _unusable(where, path, exc.problem, "HMAC key file")]
    match = _HEX.fullmatch(data)
    if match is None or len(match.group(1)) % 2:
        return [*findings, _unusable(where, path, "does not hold a hex key", "HMAC key file (64 hex digits)")]
    length = len(match.group(1)) // 2
    if length < MIN_HMAC_BYTES:
        findings.append(
            where.finding(
                "hmac-key-short",
                Severity.HIGH,
                f"HMAC key is {length} bytes; at least {MIN_HMAC_BYTES} are required",
                "make a new key (make_certs --force --collector NAME writes 32 random bytes) and rotate it "
                "with an overlap window (docs/runbook.md)",
                path,
            )
        )
    return findings


def check_crl(where: Where, path: Path | None, ca: x509.Certificate | None, *, now: dt.datetime) -> list[Finding]:
    refresh = "make_certs --out DIR --refresh-crl, copy crl.pem to every agent, then SIGHUP the agents"
    if path is None:
        return [
            where.finding(
                "crl-missing",
                Severity.MEDIUM,
                "no CRL configured: a revoked collector certificate is accepted until it expires",
                f"set tls.crl to the crl.pem make_certs writes ({refresh})",
            )
        ]
    try:
        crl = x509.load_pem_x509_crl(read_material(path))
    except MaterialError as exc:
        return [_unusable(where, path, exc.problem, "PEM CRL")]
    except ValueError:
        return [_unusable(where, path, "is not a PEM CRL", "PEM CRL")]
    if ca is not None:
        public_key = ca.public_key()
        if (
            not isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
            or crl.issuer != ca.subject
            or not crl.is_signature_valid(public_key)
        ):
            return [
                where.finding(
                    "crl-foreign",
                    Severity.HIGH,
                    "CRL is not signed by the configured CA (the agent refuses to start with it)",
                    f"use the crl.pem of the CA in tls.ca ({refresh})",
                    path,
                )
            ]
    next_update = crl.next_update_utc
    if next_update is None or next_update <= now:
        when = "has no nextUpdate" if next_update is None else f"passed its nextUpdate on {next_update:%Y-%m-%d} UTC"
        return [where.finding("crl-expired", Severity.HIGH, f"CRL {when}; the agent refuses it", refresh, path)]
    if next_update - now <= CRL_WARNING:
        return [
            where.finding(
                "crl-near-next-update",
                Severity.MEDIUM,
                f"CRL reaches its nextUpdate on {next_update:%Y-%m-%d %H:%M} UTC; after that the agent refuses it",
                refresh,
                path,
            )
        ]
    return []
