"""A host's side of the enrollment service: enroll with a token, renew with the current certificate, install.

Both make a new key on this host (it never leaves), send only a CSR, and check the answer before installing
it: the certificate must be for that key, for the name asked, and issued by the CA this host trusts (the one
the token carries, or ``tls.ca``). :func:`install_pair` replaces key and certificate by renames, key first:
a reload that ran between the two renames would find them unmatched and keep the old pair (the agent's and
the collector's loaders check that the key is the certificate's), and the reload we trigger runs after both.
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import urllib.parse
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pki import ca as ca_lib
from pki import csr as csr_lib
from pki.enroll_tokens import MAX_TOKEN_CHARS, Token, TokenRefused, decode
from pki.errors import PKIError
from pki.files import PRIVATE_MODE, PUBLIC_MODE, check_private, fsync_dir, write_atomic
from pki.tls import service_client_context

DEFAULT_TIMEOUT = 15.0  # seconds for the connection, the handshake and each read
MAX_ANSWER_BYTES = 256 * 1024  # a certificate, a CA bundle and a CRL
_SHA256 = hashes.SHA256()


class EnrollmentFailed(PKIError):
    """The service refused or could not be reached; one line. ``retry_after``: seconds, when it said so."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class Answer(NamedTuple):
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca_pem: bytes
    crl_pem: bytes


def read_token(source: str) -> str:
    """The token text from the file ``source``, or stdin for ``-``; a file others can read is refused."""
    if source == "-":
        text = sys.stdin.read(MAX_TOKEN_CHARS + 1)
    else:
        path = Path(source)
        check_private(path)  # a token is a password: 0600, like a key
        try:
            text = path.read_text(encoding="ascii")[: MAX_TOKEN_CHARS + 1]
        except (OSError, UnicodeDecodeError) as exc:
            raise PKIError(f"{path}: cannot read the token: {exc}") from exc
    return text.strip()


def parse_url(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise PKIError(f"enrollment URL {url!r} must be https://HOST:PORT")
    try:
        port = parts.port or 443
    except ValueError:
        raise PKIError(f"enrollment URL {url!r} has a bad port") from None
    return parts.hostname, port


def post(url: str, path: str, body: dict[str, str], context: ssl.SSLContext, timeout: float) -> dict[str, str]:
    """POST ``body`` as JSON to ``url`` + ``path``; the JSON answer, or :class:`EnrollmentFailed`."""
    host, port = parse_url(url)
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        payload = json.dumps(body).encode("ascii")
        connection.request("POST", path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read(MAX_ANSWER_BYTES + 1)
    except ssl.SSLError as exc:
        raise EnrollmentFailed(f"{url}: TLS with the enrollment service failed: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise EnrollmentFailed(f"{url}: cannot reach the enrollment service: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        retry = response.getheader("Retry-After")
        wait = float(retry) if retry is not None and retry.isascii() and retry.isdigit() else None
        hint = " (the service's audit log says why)" if response.status == 403 else ""
        message = f"{url}{path}: refused: {response.status} {response.reason}{hint}"
        raise EnrollmentFailed(message, response.status, wait)
    try:
        answer = json.loads(data) if len(data) <= MAX_ANSWER_BYTES else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not all(isinstance(answer.get(k), str) for k in ("certificate", "ca", "crl")):
        raise EnrollmentFailed(f"{url}{path}: the answer is not an enrollment answer")
    return answer


def _check_answer(
    answer: dict[str, str], key: ec.EllipticCurvePrivateKey, name: str, trusted: list[x509.Certificate], url: str
) -> Answer:
    try:
        cert = x509.load_pem_x509_certificate(answer["certificate"].encode("ascii"))
        ca_pem = answer["ca"].encode("ascii")
        bundle = x509.load_pem_x509_certificates(ca_pem)
    except (ValueError, UnicodeEncodeError):
        raise EnrollmentFailed(f"{url}: the answer holds no usable certificate") from None
    same = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*same) != key.public_key().public_bytes(*same):
        raise EnrollmentFailed(f"{url}: the certificate answered is not for the key made here")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [str(n.value) for n in names] != [name]:
        raise EnrollmentFailed(f"{url}: the certificate answered is not for {name}")
    if not any(_issued_by(cert, authority) for authority in trusted):
        raise EnrollmentFailed(f"{url}: the certificate answered is not of the CA this host trusts")
    answered = {ca.fingerprint(_SHA256) for ca in bundle}
    if not all(t.fingerprint(_SHA256) in answered for t in trusted):
        ca_pem = b"".join(ca_lib.cert_pem(t) for t in trusted)  # a bundle without the CA we trust: keep ours
    return Answer(key, cert, ca_pem, answer["crl"].encode("ascii"))


def _issued_by(cert: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _trusted(ca_pem: bytes, where: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise PKIError(f"{where}: is not a PEM CA certificate") from None


def enroll(token_text: str, url: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> tuple[Token, Answer]:
    """Trade the token for a certificate of a key made here; nothing is written."""
    try:
        token = decode(token_text)
    except TokenRefused:
        raise PKIError("the token is not an enrollment token (smon-enroll-1.…); copy it whole") from None
    role: ca_lib.Role = "server" if token.role == "agent" else "client"
    key, request = csr_lib.make_request(token.name, role, token.hosts)
    body = {"token": token_text, "csr": csr_lib.request_pem(request).decode("ascii")}
    target = url or token.url
    answer = post(target, "/v1/enroll", body, service_client_context(token.ca_pem), timeout)
    return token, _check_answer(answer, key, token.name, _trusted(token.ca_pem, "the token's CA"), target)


def renew(url: str, cert: Path, key: Path, ca: Path, timeout: float = DEFAULT_TIMEOUT) -> Answer:
    """A certificate for a new key, for what ``cert`` is, over mutual TLS with ``cert``; nothing is written."""
    try:
        current = x509.load_pem_x509_certificate(cert.read_bytes())
        ca_pem = ca.read_bytes()
    except (OSError, ValueError) as exc:
        raise PKIError(f"{cert}: cannot read the certificate to renew: {exc}") from exc
    names = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    role, hosts = _what(current)
    new_key, request = csr_lib.make_request(name, role, hosts)
    context = service_client_context(ca_pem, cert, key)
    answer = post(url, "/v1/renew", {"csr": csr_lib.request_pem(request).decode("ascii")}, context, timeout)
    return _check_answer(answer, new_key, name, _trusted(ca_pem, str(ca)), url)


def _what(cert: x509.Certificate) -> tuple[ca_lib.Role, tuple[str, ...]]:
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        role: ca_lib.Role = "server" if ExtendedKeyUsageOID.SERVER_AUTH in usages else "client"
    except x509.ExtensionNotFound:
        role = "client"
    return role, ca_lib.certificate_hosts(cert)


def install_pair(cert_path: Path, key_path: Path, answer: Answer) -> None:
    """Replace key and certificate: both written in full (key 0600) and synced first, then renamed, key first."""
    folder = key_path.parent
    staged_key = folder / f".{key_path.name}.new"
    staged_cert = cert_path.parent / f".{cert_path.name}.new"
    write_atomic(staged_key, ca_lib.key_pem(answer.key), mode=PRIVATE_MODE, overwrite=True)
    write_atomic(staged_cert, ca_lib.cert_pem(answer.cert), mode=PUBLIC_MODE, overwrite=True)
    staged_key.replace(key_path)
    staged_cert.replace(cert_path)
    fsync_dir(folder)
    if cert_path.parent != folder:
        fsync_dir(cert_path.parent)


def install_enrolled(out: Path, token: Token, answer: Answer) -> list[Path]:
    """``OUT/NAME.key`` (0600), ``OUT/NAME.crt``, ``OUT/ca.crt`` and ``OUT/crl.pem``: what a host config names."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = out / f"{token.name}.crt", out / f"{token.name}.key"
    install_pair(cert_path, key_path, answer)
    written = [key_path, cert_path, out / "ca.crt"]
    write_atomic(out / "ca.crt", answer.ca_pem, mode=PUBLIC_MODE, overwrite=True)
    if answer.crl_pem:
        write_atomic(out / "crl.pem", answer.crl_pem, mode=PUBLIC_MODE, overwrite=True)
        written.append(out / "crl.pem")
    return written


class RenewConfig(BaseModel):
    """``tls.renew`` of an agent's or a collector's config: automatic renewal at the enrollment service
    (:mod:`pki.renewal`, docs/enrollment.md). One model for both programs, which share only ``pki``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = Field(max_length=300)  # https://CA-HOST:PORT, the service the certificate was enrolled at

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        try:
            parse_url(url)
        except PKIError as exc:
            raise ValueError(str(exc)) from None
        return url
