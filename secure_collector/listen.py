"""``HOST:PORT`` for ``exporter.listen``: parsed and judged without importing the exporter."""

from __future__ import annotations

import ipaddress
from typing import NamedTuple


class ListenAddress(NamedTuple):
    host: str
    port: int


def parse_listen(text: str) -> ListenAddress:
    """``HOST:PORT`` (``[V6]:PORT`` for IPv6; port 0: any free port); ValueError says what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be HOST:PORT, not {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address goes in brackets ([::1]:9108), not {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"port must be 0..65535, not {port_text!r}")
    return ListenAddress(host, int(port_text))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
