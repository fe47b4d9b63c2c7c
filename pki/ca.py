"""Issuing our certificates and CRLs with ``cryptography``: one CA, agents (serverAuth), collectors (clientAuth).

Keys are ECDSA P-256 (fast handshakes, 128-bit security). The CA is ``CA:TRUE, pathlen 0`` and may only
sign certificates and CRLs; leaves carry Subject and Authority Key Identifiers, one extended key usage
for their role and, for agents, a SAN per host (iPAddress for addresses, dNSName for names).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Iterable, Sequence
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Role = Literal["server", "client"]

CA_DAYS = 3650
LEAF_DAYS = 90
MAX_LEAF_DAYS = 397  # the CA/Browser Forum ceiling; longer-lived leaves are refused
CRL_DAYS = 30
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock differences between hosts

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class Issued(NamedTuple):
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def general_name(host: str) -> x509.GeneralName:
    """A SAN entry for ``host``: iPAddress for an address, dNSName for a valid host name.

    Raises ValueError for anything else (so a typo never becomes a certificate).
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{host!r} is neither an IP address nor a valid host name")
    return x509.DNSName(name.lower())


def certificate_hosts(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and then the addresses of ``cert``'s subject alternative names (none: empty)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(v) for v in san.get_values_for_type(x509.DNSName)) + tuple(
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    )


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A CA signs certificates and CRLs only; a leaf signs handshakes only (ECDSA: digitalSignature)."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def ca_name(now: dt.datetime | None = None) -> str:
    """A CA's common name that says when it was made and tells two CAs apart (old and new during a rotation)."""
    return f"secure-monitor CA {(now or utcnow()):%Y-%m-%d} {secrets.token_hex(3)}"


def create_ca(common_name: str | None = None, *, days: int = CA_DAYS) -> Issued:
    key = new_key()
    now = utcnow()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or ca_name(now))])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signs_certificates=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def issue(
    ca: Issued,
    common_name: str,
    role: Role,
    *,
    hosts: Sequence[str] = (),
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    usages: Sequence[x509.ObjectIdentifier] | None = None,
) -> Issued:
    """Issue a leaf certificate for ``role`` signed by ``ca``, with a new key.

    ``not_before``/``not_after`` and ``usages`` exist so tests can make expired, future and
    wrong-purpose certificates with the same code that makes good ones.
    """
    key = new_key()
    cert = certify(
        ca, key.public_key(), common_name, role, hosts=hosts, days=days, not_before=not_before,
        not_after=not_after, usages=usages,
    )
    return Issued(key, cert)


def certify(
    ca: Issued,
    public: ec.EllipticCurvePublicKey,
    common_name: str,
    role: Role,
    *,
    hosts: Sequence[str] = (),
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    usages: Sequence[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    """A leaf certificate for ``public`` (a key made here, or on its own host: :mod:`pki.csr`)."""
    if not 1 <= days <= MAX_LEAF_DAYS and not_after is None:
        raise ValueError(f"leaf lifetime must be 1..{MAX_LEAF_DAYS} days, not {days}")
    now = utcnow()
    start = not_before if not_before is not None else now - _BACKDATE
    end = not_after if not_after is not None else now + dt.timedelta(days=days)
    if usages is None:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signs_certificates=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([general_name(host) for host in hosts]), critical=False
        )
    return builder.sign(ca.key, hashes.SHA256())


def build_crl(
    ca: Issued, revoked: Iterable[tuple[int, dt.datetime]], *, days: int = CRL_DAYS
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` listing ``(serial, revocation time)`` pairs, valid for ``days``."""
    now = utcnow()
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(now + dt.timedelta(days=days))
        .add_extension(x509.CRLNumber(int(now.timestamp())), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)
