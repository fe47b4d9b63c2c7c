"""The reloadable security policy (TLS context, CRL, allowlists, HMAC keys) and the checks made with it.

A :class:`Policy` is built whole from a config, or not at all: :func:`load_policy` raises on the
first unusable file, so a reload with a broken replacement never leaves a half-updated policy.
The server swaps the reference in one assignment; a connection made before the swap is judged again
under the new policy at its next request (:func:`still_admitted`).
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from pki import tls, tokens
from pki.errors import ConfigError
from secure_agent import allowlist
from secure_agent.config import AgentConfig, IPNetwork


class Policy(NamedTuple):
    context: ssl.SSLContext
    networks: tuple[IPNetwork, ...]
    allowed_clients: frozenset[str]  # empty: any certificate of our CA
    keys: Mapping[str, bytes]
    revocations: tls.Revocations | None = None  # tls.crl, checked by the connection after the handshake
    authorities: tuple[x509.Certificate, ...] = ()  # tls.ca: a connection older than this policy is judged again


def load_policy(config: AgentConfig) -> Policy:
    """Load everything from disk and check it. Raises :class:`pki.errors.PKIError` naming the file.

    The CRL is not handed to OpenSSL, which would verify its signature again in every handshake: it is
    checked once here and each client's serial is looked up after the handshake (:class:`pki.tls.Revocations`).
    """
    too_wide = allowlist.admits_everyone(config.security.allowed_ips)
    if too_wide is not None:
        raise ConfigError(f"security.allowed_ips: {too_wide}")
    context = tls.server_context(config.tls.cert, config.tls.key, config.tls.ca, None, config.tls.min_version)
    revocations = tls.load_revocations(config.tls.crl, config.tls.ca) if config.tls.crl is not None else None
    keys = {key_id: tokens.load_key(path) for key_id, path in config.security.hmac_keys.items()}
    authorities = tuple(x509.load_der_x509_certificate(der) for der in context.get_ca_certs(binary_form=True))
    return Policy(
        context, config.security.networks(), frozenset(config.security.allowed_clients), keys, revocations, authorities
    )


def address_allowed(networks: tuple[IPNetwork, ...], host: str) -> bool:
    """Is the peer ``host`` (as ``accept()`` reports it) inside the allowlist?

    An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, what a dual-stack socket reports for IPv4
    peers) is judged as the IPv4 address it carries, and also as itself.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            candidates = [ipaddress.IPv6Address(host.split("%", 1)[0])]
        if address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
    return any(candidate in network for candidate in candidates for network in networks)


def client_allowed(allowed_clients: frozenset[str], common_name: str) -> bool:
    return not allowed_clients or common_name in allowed_clients


def still_admitted(policy: Policy, host: str, der: bytes, common_name: str, serial: str, now: float) -> str | None:
    """Why a connection admitted under an earlier policy is refused under ``policy`` (None: it carries on).

    After a reload, a kept-alive connection is judged again at its next request: its address against the
    allowlist, its certificate against the CA (it must be issued by one of ``tls.ca``'s certificates, as
    a new handshake would require), the CRL and ``security.allowed_clients``.
    """
    if not address_allowed(policy.networks, host):
        return "address_not_allowed"
    certificate = x509.load_der_x509_certificate(der)
    if not any(_issued_by(certificate, authority) for authority in policy.authorities):
        return "certificate: not issued by tls.ca"
    return identity_refusal(policy, common_name, serial, now)


def _issued_by(certificate: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def identity_refusal(policy: Policy, common_name: str, serial: str, now: float) -> str | None:
    """Why a verified client certificate is refused (its serial in ``tls.crl``, a CRL past its
    nextUpdate, a name outside ``security.allowed_clients``), or None when it is admitted."""
    refusal = None if policy.revocations is None else policy.revocations.refusal(serial, now)
    if refusal is None and not client_allowed(policy.allowed_clients, common_name):
        refusal = "common_name_not_allowed"
    return refusal
