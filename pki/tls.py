"""The two TLS factories (agent = server, collector = client), built once at start-up.

Both sides trust only our CA (never the system store), require certificates, speak TLS 1.2 at the
least with AEAD ciphers and ECDHE key exchange over X25519/P-256/P-384, and refuse compression and
renegotiation. There is no switch that turns verification off. Every failure names the file at fault.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import hashlib
import re
import ssl
import sys
from pathlib import Path
from typing import Literal, NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.errors import MaterialError
from pki.files import check_private, read_material

TLSVersionName = Literal["TLSv1.2", "TLSv1.3"]

DEFAULT_MIN_VERSION: TLSVersionName = "TLSv1.3"
MAX_CAS = 4  # tls.ca: our CA, or the old and the new one during a rotation (docs/runbook.md)
DEFAULT_HANDSHAKE_TIMEOUT = 5.0  # seconds; a peer that says nothing is cut off after this

# TLS 1.2 suites: ECDHE only (forward secrecy) with AEAD only (GCM, ChaCha20-Poly1305), Mozilla
# "intermediate" order. TLS 1.3 suites are all AEAD with forward secrecy; OpenSSL's defaults stand.
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
# Key-exchange groups: the three every modern peer supports; no finite-field DH, no P-521 or X448
# (slow, and they add nothing for our 128-bit keys).
KEY_EXCHANGE_GROUPS = b"X25519:P-256:P-384"
_FALLBACK_GROUP = "prime256v1"

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL 1.1.1 and 3.x: SSL_CTX_set1_groups_list()
_SSL_CTRL_MODE = 33  # SSL_CTX_set_mode()
_SSL_MODE_NO_AUTO_CHAIN = 0x8


class PeerIdentity(NamedTuple):
    """Who is on the other end, as the audit log records it."""

    common_name: str
    subject: str
    fingerprint: str  # lowercase hex SHA-256 of the DER certificate
    serial: str  # lowercase hex


def peer_identity(der: bytes) -> PeerIdentity:
    """Identity of a verified peer certificate (``sslsock.getpeercert(binary_form=True)``)."""
    fingerprint = hashlib.sha256(der).hexdigest()
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = str(names[0].value) if names else ""
    return PeerIdentity(common_name, cert.subject.rfc4514_string(), fingerprint, format(cert.serial_number, "x"))


def certificate_identity(path: Path) -> PeerIdentity:
    """The identity of a PEM certificate file (MaterialError if it is not one)."""
    return peer_identity(_load_pem_cert(path).public_bytes(serialization.Encoding.DER))


def _load_pem_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(read_material(path))
    except ValueError as exc:
        raise MaterialError(path, "is not a PEM certificate") from exc


def _check_leaf(path: Path, cert: x509.Certificate, usage: x509.ObjectIdentifier, role: str) -> None:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if usage not in usages:
        raise MaterialError(path, f"certificate lacks the {role} extended key usage")
    now = dt.datetime.now(dt.UTC)
    if cert.not_valid_after_utc < now:
        raise MaterialError(path, f"certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if cert.not_valid_before_utc > now:
        raise MaterialError(path, f"certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d} UTC")


def _load_ca(context: ssl.SSLContext, ca: Path) -> list[x509.Certificate]:
    """The CA certificates in ``ca``: one, or several while a new CA is trusted alongside the old one."""
    pem = read_material(ca)
    try:
        authorities = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise MaterialError(ca, "is not a PEM CA certificate") from exc
    if len(authorities) > MAX_CAS:
        raise MaterialError(ca, f"holds {len(authorities)} certificates; at most {MAX_CAS} CAs (old and new)")
    for cert in authorities:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound as exc:
            raise MaterialError(ca, "is not a PEM CA certificate") from exc
        if not constraints.ca:
            raise MaterialError(ca, "is not a CA certificate (basicConstraints CA:FALSE)")
    # Our CAs only: cadata from the bytes we checked, never load_default_certs() or the system store.
    context.load_verify_locations(cadata=pem.decode("ascii", "replace"))
    return authorities


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    check_private(key)
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except ssl.SSLError as exc:
        raise MaterialError(key, f"is not the private key of {cert} or not a PEM key") from exc
    except OSError as exc:
        raise MaterialError(key, f"cannot read: {exc.strerror or exc}") from exc


_CRL_BLOCK = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


def _read_crls(crl_path: Path, authorities: list[x509.Certificate]) -> tuple[frozenset[int], dt.datetime]:
    """The serials the CRLs at ``crl_path`` revoke and their earliest nextUpdate, checked: PEM, one CRL per
    configured CA, each signed by its CA and not past its nextUpdate (a bundle while a new CA is trusted)."""
    blocks = _CRL_BLOCK.findall(read_material(crl_path))
    if not blocks:
        raise MaterialError(crl_path, "is not a PEM CRL")
    revoked: set[int] = set()
    next_updates: list[dt.datetime] = []
    covered: set[bytes] = set()
    for block in blocks:
        try:
            crl = x509.load_pem_x509_crl(block)
        except ValueError as exc:
            raise MaterialError(crl_path, "is not a PEM CRL") from exc
        issuer = next((ca for ca in authorities if crl.issuer == ca.subject and _signed_by(crl, ca)), None)
        if issuer is None:
            raise MaterialError(crl_path, "CRL is not signed by the configured CA")
        next_update = crl.next_update_utc
        if next_update is None or next_update < dt.datetime.now(dt.UTC):
            raise MaterialError(crl_path, "CRL is past its nextUpdate; issue a fresh one (make_certs --refresh-crl)")
        covered.add(issuer.fingerprint(hashes.SHA256()))
        revoked |= {entry.serial_number for entry in crl}
        next_updates.append(next_update)
    missing = [ca for ca in authorities if ca.fingerprint(hashes.SHA256()) not in covered]
    if missing:
        names = ", ".join(ca.subject.rfc4514_string() for ca in missing)
        raise MaterialError(crl_path, f"holds no CRL of the CA {names} (one CRL per CA in tls.ca)")
    return frozenset(revoked), min(next_updates)


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except TypeError:
        return False


def _load_crl(context: ssl.SSLContext, crl_path: Path, authorities: list[x509.Certificate]) -> None:
    _read_crls(crl_path, authorities)
    context.load_verify_locations(cafile=str(crl_path))
    # Check the peer's certificate against the CRL; a missing or foreign CRL fails the handshake.
    context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


class Revocations(NamedTuple):
    """What a CRL of our CA revokes, for a server that checks the peer itself right after the handshake.

    OpenSSL's own CRL check (``server_context(crl=...)``) verifies the CRL's signature again in every
    handshake (a measurable share of a new connection's CPU: docs/benchmarks.md). The agent loads the CRL once with
    :func:`load_revocations` instead (the same checks: our CA's signature, nextUpdate) and asks
    :meth:`refusal` for each connection before it reads a request byte. Our CA issues leaves only
    (pathlen 0), so the leaf is all there is to check, as with ``VERIFY_CRL_CHECK_LEAF``.
    """

    serials: frozenset[str]  # lowercase hex, as PeerIdentity.serial
    next_update: float  # Unix seconds

    def refusal(self, serial: str, now: float) -> str | None:
        """Why a peer certificate with ``serial`` is refused at ``now`` (None: it is not)."""
        if now >= self.next_update:
            return "crl_expired"  # as OpenSSL would: past nextUpdate, nobody is known not to be revoked
        if serial in self.serials:
            return "certificate_revoked"
        return None


def load_revocations(crl: Path, ca: Path) -> Revocations:
    """The CRLs at ``crl``, checked against the CA certificates at ``ca``; raises :class:`MaterialError`.

    Serials are those of every CA's CRL together: our serials are random 159-bit numbers, so a serial one
    CA revoked cannot name a certificate of the other.
    """
    authorities = _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca)
    revoked, next_update = _read_crls(crl, authorities)
    return Revocations(frozenset(format(serial, "x") for serial in revoked), next_update.timestamp())


def _ssl_ctx_pointer(context: ssl.SSLContext) -> int | None:
    """The ``SSL_CTX *`` inside a CPython ``ssl.SSLContext`` (first field after the object header)."""
    if sys.implementation.name != "cpython":
        return None
    header = object.__basicsize__  # PyObject_HEAD
    pointer = ctypes.c_void_p.from_address(id(context) + header).value
    return pointer or None


def _tune_native(context: ssl.SSLContext) -> None:
    """Two settings the ssl module of Python 3.11 has no API for, made through libssl itself.

    * Key exchange limited to X25519/P-256/P-384 (``SSL_CTX_set1_groups_list``; ``set_ecdh_curve``
      takes only one group).
    * ``SSL_MODE_NO_AUTO_CHAIN``: send our leaf certificate alone. Without it OpenSSL builds our own
      chain anew in every handshake, a full X.509 verification of our certificate (CRL included),
      and sends the CA certificate too, which the peer parses and discards: it trusts only the CA
      it loaded itself. That was a third of each side's CPU per handshake (OpenSSL 3.0's
      certificate decoding is slow); see docs/benchmarks.md.

    The calls go to the libssl that ``_ssl`` is linked against, after checking that the pointer we
    found is the context (its verify mode and options must match). Where that cannot be done safely
    we fall back to P-256 alone and the default chain: narrower, never wider, only slower.
    """
    try:
        import _ssl

        library = ctypes.CDLL(_ssl.__file__)
        ctrl = library.SSL_CTX_ctrl
        get_verify_mode = library.SSL_CTX_get_verify_mode
        get_options = library.SSL_CTX_get_options
    except (OSError, AttributeError):
        context.set_ecdh_curve(_FALLBACK_GROUP)
        return
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    get_verify_mode.argtypes = [ctypes.c_void_p]
    get_verify_mode.restype = ctypes.c_int
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    pointer = _ssl_ctx_pointer(context)
    expected_mode = 0x01 | 0x02 if context.verify_mode == ssl.CERT_REQUIRED else None
    if (
        pointer is None
        or expected_mode is None
        or get_verify_mode(pointer) != expected_mode
        or get_options(pointer) != int(context.options)
    ):
        context.set_ecdh_curve(_FALLBACK_GROUP)
        return
    if ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, KEY_EXCHANGE_GROUPS) != 1:
        context.set_ecdh_curve(_FALLBACK_GROUP)
    ctrl(pointer, _SSL_CTRL_MODE, _SSL_MODE_NO_AUTO_CHAIN, None)  # returns the new mode; nothing to check


def _harden(context: ssl.SSLContext, min_version: TLSVersionName) -> None:
    if min_version not in _VERSIONS:
        raise ValueError(f"tls.min_version must be one of {sorted(_VERSIONS)}, not {min_version!r}")
    context.minimum_version = _VERSIONS[min_version]
    context.set_ciphers(TLS12_CIPHERS)
    # CRIME: compression leaks secrets through length; renegotiation: DoS and old splicing attacks.
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # No session resumption: every connection proves its certificate anew, so a CRL or allowlist
    # change takes effect on the next connection and no ticket key sits in memory.
    context.options |= ssl.OP_NO_TICKET
    # A fresh ECDHE key for every handshake (the OpenSSL default, made explicit).
    context.options |= ssl.OP_SINGLE_ECDH_USE
    # Refuse certificates that bend X.509 rules (missing key identifiers, bad encodings).
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.verify_mode = ssl.CERT_REQUIRED


def check_certificate(cert: Path, ca: Path, role: Literal["server", "client"]) -> None:
    """What the contexts check of a certificate whose key is not on this machine (made on its host).

    Its purpose and validity as :func:`server_context` and :func:`client_context` check them, and that our
    CA issued it; MaterialError otherwise.
    """
    leaf = _load_pem_cert(cert)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    _check_leaf(cert, leaf, usage, "serverAuth" if role == "server" else "clientAuth")
    for authority in _load_ca(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca):
        try:
            leaf.verify_directly_issued_by(authority)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise MaterialError(cert, f"is not a certificate of the CA {ca}")


def server_context(
    cert: Path,
    key: Path,
    ca: Path,
    crl: Path | None = None,
    min_version: TLSVersionName = DEFAULT_MIN_VERSION,
) -> ssl.SSLContext:
    """The agent's context: our certificate, client certificates of our CA required, CRL if given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, min_version)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE  # our order of suites, not the client's
    context.num_tickets = 0  # TLS 1.3: send no session tickets (see OP_NO_TICKET above)
    _check_leaf(cert, _load_pem_cert(cert), ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth")
    _load_chain(context, cert, key)
    authorities = _load_ca(context, ca)
    if crl is not None:
        _load_crl(context, crl, authorities)
    _tune_native(context)
    return context


def client_context(
    cert: Path, key: Path, ca: Path, crl: Path | None = None, min_version: TLSVersionName = "TLSv1.2"
) -> ssl.SSLContext:
    """The collector's context: verifies the agent against our CA (and CRL) and its host, presents our certificate.

    The floor is TLS 1.2 so that agents configured with ``tls.min_version = "TLSv1.2"`` stay reachable;
    TLS 1.3 is negotiated whenever the agent offers it. Wrap sockets with ``server_hostname=<agent host>``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context, min_version)
    context.check_hostname = True  # the agent's certificate must name the host we dialled (DNS or IP SAN)
    _check_leaf(cert, _load_pem_cert(cert), ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth")
    _load_chain(context, cert, key)
    authorities = _load_ca(context, ca)
    if crl is not None:  # a revoked agent certificate is refused by the collector too
        _load_crl(context, crl, authorities)
    _tune_native(context)
    return context


# -- the enrollment service (pki.enroll_service) and its clients (pki.enroll_client) -----------------
_X509_PURPOSE_ANY = 7  # openssl/x509v3.h


def _accept_any_purpose(context: ssl.SSLContext) -> None:
    """Let OpenSSL accept a client certificate of our CA whatever its extended key usage.

    The renewal endpoint is reached over mutual TLS by agents too, whose certificates are serverAuth only
    (OpenSSL's default purpose for a client certificate, ``sslclient``, refuses them); the service then
    checks the purpose itself and signs only the same purpose again. Chain, signature and validity are still
    OpenSSL's to check. Where the call cannot be made safely this raises: the service does not start.
    """
    try:
        import _ssl

        library = ctypes.CDLL(_ssl.__file__)
        get_param = library.SSL_CTX_get0_param
        set_purpose = library.X509_VERIFY_PARAM_set_purpose
    except (OSError, AttributeError) as exc:
        raise MaterialError("libssl", "cannot reach X509_VERIFY_PARAM_set_purpose for the renewal endpoint") from exc
    get_param.argtypes = [ctypes.c_void_p]
    get_param.restype = ctypes.c_void_p
    set_purpose.argtypes = [ctypes.c_void_p, ctypes.c_int]
    set_purpose.restype = ctypes.c_int
    pointer = _ssl_ctx_pointer(context)
    param = get_param(pointer) if pointer is not None else None
    if not param or set_purpose(param, _X509_PURPOSE_ANY) != 1:
        raise MaterialError("libssl", "cannot set the client certificate purpose of the renewal endpoint")


def service_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The enrollment service's context: TLS 1.3 only, our server certificate, a client certificate of our
    CA asked for but optional (enrollment presents none; renewal presents the one it renews)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context, "TLSv1.3")  # both ends are ours: no reason to speak TLS 1.2
    context.num_tickets = 0
    context.verify_mode = ssl.CERT_OPTIONAL  # a certificate, when presented, must verify
    _check_leaf(cert, _load_pem_cert(cert), ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth")
    _load_chain(context, cert, key)
    _load_ca(context, ca)
    _accept_any_purpose(context)
    return context


def service_client_context(ca_pem: bytes, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A host's context to the enrollment service: trusts only ``ca_pem`` (the token's CA, or ``tls.ca``),
    checks the service's host name, and presents ``cert`` (renewal) or nothing (enrollment)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(context, "TLSv1.3")
    context.check_hostname = True
    try:
        context.load_verify_locations(cadata=ca_pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise MaterialError("the enrollment CA", "is not a PEM CA certificate") from exc
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    return context
