"""What an allowlist admits, judged on the addresses it covers rather than on how its entries are written.

An IPv4-mapped IPv6 network (``::ffff:0:0/96`` and anything inside it) is the IPv4 network it maps: on a
dual-stack listener IPv4 peers arrive as ``::ffff:a.b.c.d``, so ``::ffff:0:0/96`` admits every IPv4
address. A list is refused when its entries together cover all of IPv4 or all of IPv6, however they are
split (``0.0.0.0/1`` + ``128.0.0.0/1``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def effective(network: IPNetwork) -> IPNetwork:
    """The network as peers are judged against it: an IPv4-mapped IPv6 network becomes its IPv4 network."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(MAPPED):
        base = network.network_address.ipv4_mapped
        if base is not None:
            return ipaddress.IPv4Network((int(base), network.prefixlen - 96))
    return network


def parse(entry: str) -> IPNetwork:
    """One entry as an effective network; ValueError if it is not an address or CIDR."""
    return effective(ipaddress.ip_network(entry, strict=False))


def networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(parse(entry) for entry in entries)


def admits_everyone(entries: Sequence[str]) -> str | None:
    """Why the entries together admit every IPv4 or every IPv6 address (naming them), or None."""
    parsed = [(entry, parse(entry)) for entry in entries]
    v4 = [network for _, network in parsed if isinstance(network, ipaddress.IPv4Network)]
    v6 = [network for _, network in parsed if isinstance(network, ipaddress.IPv6Network)]
    for version, space, family in ((4, "IPv4", list(ipaddress.collapse_addresses(v4))),
                                   (6, "IPv6", list(ipaddress.collapse_addresses(v6)))):
        if any(network.prefixlen == 0 for network in family):
            named = ", ".join(entry for entry, network in parsed if network.version == version)
            return f"{named} together admit every {space} address; list the collectors' addresses"
    return None
