"""Keys made on their own host: certificate signing requests, and the checks before the CA signs one.

``make_certs --request`` makes the key and a CSR on the host that will use them; ``make_certs --sign`` on the
CA machine signs the CSR only if it asks for exactly what the operator restated there: the name, the host
names and addresses (agents), and the purpose. A CSR is untrusted input: its size is bounded, its signature
checked (it proves the requester holds the key), its key held to ours (EC P-256), its subject to a single
common name, and extensions other than the two we read are ignored: what the certificate says comes from the
operator's restatement and :func:`pki.ca.certify`, never from the request.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import ca as ca_lib
from pki.errors import PKIError

MAX_CSR_BYTES = 16 * 1024
"""A CSR of ours is under 1 KiB; anything near this is not one."""
# what cryptography raises on a malformed CSR (its lazily parsed parts too); only the first is a ValueError
_MALFORMED = (ValueError, x509.InvalidVersion, x509.DuplicateExtension, x509.UnsupportedGeneralNameType)
_PURPOSE = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
_PURPOSE_NAME = {ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth", ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth"}


class RequestRefused(PKIError):
    """A CSR that does not ask for exactly what the operator restated, or is not a CSR of ours at all."""


def make_request(
    name: str, role: ca_lib.Role, hosts: Sequence[str] = ()
) -> tuple[ec.EllipticCurvePrivateKey, x509.CertificateSigningRequest]:
    """A new key and a CSR asking for ``name``, ``hosts`` (agents) and the purpose of ``role``."""
    key = ca_lib.new_key()
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .add_extension(x509.ExtendedKeyUsage([_PURPOSE[role]]), critical=False)
    )
    if hosts:
        names = [ca_lib.general_name(host) for host in hosts]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(key, hashes.SHA256())


def request_pem(request: x509.CertificateSigningRequest) -> bytes:
    return request.public_bytes(serialization.Encoding.PEM)


def _load(data: bytes) -> x509.CertificateSigningRequest:
    if len(data) > MAX_CSR_BYTES:
        raise RequestRefused(f"larger than {MAX_CSR_BYTES} bytes: not a CSR of ours")
    try:
        request = x509.load_pem_x509_csr(data)
    except _MALFORMED:
        raise RequestRefused("not a PEM certificate signing request") from None
    return request


def _asked_hosts(request: x509.CertificateSigningRequest) -> set[str]:
    try:
        san = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    if any(not isinstance(entry, x509.DNSName | x509.IPAddress) for entry in san):
        raise RequestRefused("asks for a subject alternative name that is neither a host name nor an address")
    return {str(entry.value) for entry in san}


def _asked_purposes(request: x509.CertificateSigningRequest) -> set[str]:
    try:
        usages = request.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return set()
    return {_PURPOSE_NAME.get(oid, oid.dotted_string) for oid in usages}


def check_request(data: bytes, name: str, role: ca_lib.Role, hosts: Sequence[str] = ()) -> ec.EllipticCurvePublicKey:
    """The public key of the CSR in ``data`` if it asks for exactly ``name``, ``hosts`` and ``role``'s purpose.

    Raises :class:`RequestRefused` with one line saying what differs.
    """
    request = _load(data)
    try:
        signed = request.is_signature_valid
    except (*_MALFORMED, UnsupportedAlgorithm):
        signed = False
    if not signed:
        raise RequestRefused("its signature does not verify (altered, or not made with its key)")
    try:  # parsed now, so that nothing below meets a malformed part
        public, _, _ = request.public_key(), request.subject, request.extensions
    except (*_MALFORMED, UnsupportedAlgorithm):
        raise RequestRefused("its key, subject or extensions cannot be parsed") from None
    if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
        kind = f"EC {public.curve.name}" if isinstance(public, ec.EllipticCurvePublicKey) else type(public).__name__
        raise RequestRefused(f"its key is {kind.replace('_', ' ')}; ours are EC P-256 (secp256r1)")
    attributes = list(request.subject)
    names = [a.value for a in attributes if a.oid == NameOID.COMMON_NAME]
    if len(attributes) != 1 or names != [name]:
        raise RequestRefused(f"it asks for the subject {request.subject.rfc4514_string()!r}, not CN={name}")
    wanted_hosts = {str(ca_lib.general_name(host).value) for host in hosts}
    asked_hosts = _asked_hosts(request)
    if asked_hosts != wanted_hosts:
        extra, missing = sorted(asked_hosts - wanted_hosts), sorted(wanted_hosts - asked_hosts)
        parts = [f"also {', '.join(extra)}" if extra else "", f"not {', '.join(missing)}" if missing else ""]
        raise RequestRefused(f"it asks for other host names or addresses: {'; '.join(p for p in parts if p)}")
    wanted_purpose = _PURPOSE_NAME[_PURPOSE[role]]
    asked = _asked_purposes(request)
    if asked not in (set(), {wanted_purpose}):
        raise RequestRefused(f"it asks for {', '.join(sorted(asked))}; {_ROLE_NAME[role]}s get {wanted_purpose} only")
    return public


_ROLE_NAME = {"server": "agent", "client": "collector"}
