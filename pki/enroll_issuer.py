"""What the enrollment service signs, and for whom: the decisions of :mod:`pki.enroll_service`, apart from HTTP.

:class:`Issuer` trades a single-use token (:mod:`pki.enroll_tokens`) for a certificate of exactly the name,
addresses and role the token was issued for, and renews a presented certificate for exactly its name,
addresses and purpose, for a new key, if it is unrevoked and the one the CA holds now for that name. Every
issuance and refusal is recorded in the service's audit log (:mod:`pki.enroll_audit`) before the answer is
given; the reason of a refusal goes there and never to the wire (:class:`Refused` carries a status for it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import ca as ca_lib
from pki import csr as csr_lib
from pki.enroll_audit import EnrollmentAudit
from pki.enroll_tokens import Entitlement, TokenRefused, TokenStore, token_id
from pki.errors import PKIError
from pki.files import PRIVATE_MODE, PUBLIC_MODE, write_atomic

logger = logging.getLogger(__name__)

ENROLL_LIFETIME = dt.timedelta(days=30)
"""Certificates the service issues live 30 days and are renewed at about 20 (docs/enrollment.md)."""
SERVICE_NAME = "enroll-service"
_FOLDER = {"server": "agents", "client": "collectors"}


class Refused(PKIError):
    """A request the service will not serve: ``status`` goes on the wire, ``reason`` to the audit log only."""

    def __init__(self, status: int, reason: str, **fields: str | None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.fields = fields


def enroll_dir(ca_dir: Path) -> Path:
    return ca_dir / "enroll"


def load_authority(ca_dir: Path) -> ca_lib.Issued:
    cert_path, key_path = ca_dir / "ca.crt", ca_dir / "ca.key"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise PKIError(f"{ca_dir}: no usable CA here (ca.crt and ca.key): {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path}: not an EC private key")
    return ca_lib.Issued(key, cert)


def ensure_service_certificate(ca_dir: Path, authority: ca_lib.Issued, host: str) -> tuple[Path, Path]:
    """``DIR/enroll/service.{crt,key}`` for ``host``, (re-)issued when missing, for another host, or past half-life."""
    folder = enroll_dir(ca_dir)
    folder.mkdir(mode=0o700, exist_ok=True)
    cert_path, key_path = folder / "service.crt", folder / "service.key"
    wanted = str(ca_lib.general_name(host).value)
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = set(ca_lib.certificate_hosts(cert))
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        fresh = ca_lib.utcnow() < start + (end - start) / 2
        if names == {wanted} and fresh and cert.issuer == authority.cert.subject:
            return cert_path, key_path
    issued = ca_lib.issue(authority, SERVICE_NAME, "server", hosts=[host], days=ENROLL_LIFETIME.days)
    write_atomic(key_path, ca_lib.key_pem(issued.key), mode=PRIVATE_MODE, overwrite=True)
    write_atomic(cert_path, ca_lib.cert_pem(issued.cert), mode=PUBLIC_MODE, overwrite=True)
    return cert_path, key_path


class Presented(NamedTuple):
    """The certificate a renewing host presented, as the service reads it."""

    name: str
    role: ca_lib.Role
    hosts: tuple[str, ...]
    serial: int
    cert: x509.Certificate


def read_presented(der: bytes) -> Presented:
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = set()
    if usages == {ExtendedKeyUsageOID.SERVER_AUTH}:
        role: ca_lib.Role = "server"
    elif usages == {ExtendedKeyUsageOID.CLIENT_AUTH}:
        role = "client"
    else:
        raise Refused(403, "presented certificate has neither our agent nor our collector purpose")
    hosts = ca_lib.certificate_hosts(cert)
    if len(names) != 1 or ca_lib.NAME_PATTERN.match(str(names[0].value)) is None:
        raise Refused(403, "presented certificate has no name of ours")
    return Presented(str(names[0].value), role, hosts, cert.serial_number, cert)


class Issuer:
    """What the service signs, and for whom: the decisions, apart from HTTP."""

    def __init__(
        self,
        ca_dir: Path,
        *,
        lifetime: dt.timedelta = ENROLL_LIFETIME,
        audit: EnrollmentAudit | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not dt.timedelta(seconds=30) <= lifetime <= dt.timedelta(days=ca_lib.MAX_LEAF_DAYS):
            raise PKIError(f"enrollment lifetime must be 30 seconds .. {ca_lib.MAX_LEAF_DAYS} days")
        self.ca_dir = ca_dir
        self.lifetime = lifetime
        self.authority = load_authority(ca_dir)
        self.tokens = TokenStore(enroll_dir(ca_dir), clock=clock)
        self.audit = audit or EnrollmentAudit(enroll_dir(ca_dir) / "audit.log", clock=clock)
        self._write_lock = threading.RLock()  # renew holds it around _sign, which takes it too

    def _answer(self, cert: x509.Certificate) -> dict[str, str]:
        crl = self.ca_dir / "crl.pem"
        return {
            "certificate": ca_lib.cert_pem(cert).decode("ascii"),
            "ca": (self.ca_dir / "ca.crt").read_text(encoding="ascii"),
            "crl": crl.read_text(encoding="ascii") if crl.exists() else "",
        }

    def _sign(
        self, public: ec.EllipticCurvePublicKey, name: str, role: ca_lib.Role, hosts: tuple[str, ...]
    ) -> x509.Certificate:
        now = ca_lib.utcnow()
        backdate = min(dt.timedelta(minutes=5), self.lifetime / 100)  # a short test lifetime keeps its shape
        cert = ca_lib.certify(
            self.authority, public, name, role, hosts=hosts, not_before=now - backdate, not_after=now + self.lifetime
        )
        folder = self.ca_dir / _FOLDER[role]
        with self._write_lock:
            folder.mkdir(mode=0o700, exist_ok=True)
            stale_key = folder / f"{name}.key"  # a key made here earlier: the host's own key replaces it
            if stale_key.exists():
                stale_key.unlink()
            write_atomic(folder / f"{name}.crt", ca_lib.cert_pem(cert), mode=PUBLIC_MODE, overwrite=True)
        return cert

    def enroll(self, token: str, csr_pem: bytes, source: str) -> dict[str, str]:
        """Sign ``csr_pem`` on ``token``; :class:`Refused` (audited) when the token does not entitle it."""
        checked: list[ec.EllipticCurvePublicKey] = []

        def matches(entitlement: Entitlement) -> None:
            role: ca_lib.Role = "server" if entitlement.role == "agent" else "client"
            checked.append(csr_lib.check_request(csr_pem, entitlement.name, role, entitlement.hosts))

        try:
            entitlement = self.tokens.consume(token, matches)
        except TokenRefused as exc:
            self._refused("enroll", source, f"token {exc.reason}", token=exc.token_id or None)
            raise Refused(403, f"token {exc.reason}") from None
        except csr_lib.RequestRefused as exc:
            self._refused("enroll", source, f"csr: {exc}", token=token_id(token))
            raise Refused(403, f"csr: {exc}") from None
        role: ca_lib.Role = "server" if entitlement.role == "agent" else "client"
        cert = self._sign(checked[0], entitlement.name, role, entitlement.hosts)
        self._issued("enroll", source, cert, entitlement.name, token=entitlement.id)
        return self._answer(cert)

    def renew(self, presented_der: bytes | None, csr_pem: bytes, source: str) -> dict[str, str]:
        """Sign ``csr_pem`` for the holder of ``presented_der``; :class:`Refused` (audited) otherwise.

        Checking that the presented certificate is the current one and replacing it happen under one lock:
        two renewals with one certificate (its owner's and a thief's) cannot both succeed.
        """
        name: str | None = None
        with self._write_lock:
            try:
                if not presented_der:
                    raise Refused(403, "no client certificate presented")
                presented = read_presented(presented_der)
                name = presented.name
                self._check_current(presented)
                public = csr_lib.check_request(csr_pem, presented.name, presented.role, presented.hosts)
                same = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                if public.public_bytes(*same) == presented.cert.public_key().public_bytes(*same):
                    raise Refused(403, "csr: the same key as the certificate presented; renewal needs a new key")
            except csr_lib.RequestRefused as exc:
                self._refused("renew", source, f"csr: {exc}", common_name=name)
                raise Refused(403, f"csr: {exc}") from None
            except Refused as exc:
                self._refused("renew", source, exc.reason, common_name=name)
                raise
            cert = self._sign(public, presented.name, presented.role, presented.hosts)
            self._issued("renew", source, cert, presented.name, previous=format(presented.serial, "x"))
        return self._answer(cert)

    def _check_current(self, presented: Presented) -> None:
        crl_path = self.ca_dir / "crl.pem"
        if crl_path.exists():
            crl = x509.load_pem_x509_crl(crl_path.read_bytes())
            if crl.get_revoked_certificate_by_serial_number(presented.serial) is not None:
                raise Refused(403, "presented certificate is revoked")
        current_path = self.ca_dir / _FOLDER[presented.role] / f"{presented.name}.crt"
        try:
            current = x509.load_pem_x509_certificate(current_path.read_bytes())
        except (OSError, ValueError):
            raise Refused(403, f"no current certificate for {presented.name} on the CA") from None
        if current.serial_number != presented.serial:
            raise Refused(403, "presented certificate is superseded (renewed already, or re-issued)")

    def _refused(self, event: str, source: str, reason: str, **fields: str | None) -> None:
        logger.warning("%s refused for %s: %s", event, source, reason)
        self.audit.record(event, "refused", reason=reason, source=source, **fields)

    def _issued(self, event: str, source: str, cert: x509.Certificate, name: str, **fields: str | None) -> None:
        fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
        self.audit.record(
            event,
            "issued",
            source=source,
            common_name=name,
            serial=format(cert.serial_number, "x"),
            fingerprint=fingerprint,
            not_after=cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            **fields,
        )
        logger.info("%s: issued a certificate for %s to %s", event, name, source)
