"""The reloadable security policy (TLS context, CRL, allowlists, HMAC keys) and the checks made with it.

A :class:`Policy` is built whole from a config, or not at all: :func:`load_policy` raises on the
first unusable file, so a reload with a broken replacement never leaves a half-updated policy.
The server swaps the reference in one assignment; a connection reads it once, at accept time.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Mapping
from typing import NamedTuple

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
    return Policy(
        context, config.security.networks(), frozenset(config.security.allowed_clients), keys, revocations
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


def identity_refusal(policy: Policy, common_name: str, serial: str, now: float) -> str | None:
    """Why a verified client certificate is refused (its serial in ``tls.crl``, a CRL past its
    nextUpdate, a name outside ``security.allowed_clients``), or None when it is admitted."""
    refusal = None if policy.revocations is None else policy.revocations.refusal(serial, now)
    if refusal is None and not client_allowed(policy.allowed_clients, common_name):
        refusal = "common_name_not_allowed"
    return refusal
