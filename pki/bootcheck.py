"""What ``make_certs`` checks on the configs it wrote before it says "PKI ready".

The agent's and the collector's ``--check`` load their TLS contexts and HMAC keys through :mod:`pki.tls`
and :mod:`pki.tokens`; this does the same with the paths each written config names, and adds what makes a
set of configs unusable together: an agent no collector can call (no HMAC key), a collector with no agent,
a collector entry whose port is not the one its agent listens on, two loopback agents on one port. The
config models themselves live in the agent and collector packages, which :mod:`pki` may not import; the
tests validate every file ``make_certs`` writes through them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pki import tls, tokens
from pki.errors import PKIError


def _load(path: Path, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: unreadable: {exc}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{path}: not a JSON object")
        return None
    return data


def _section(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _optional(value: object) -> Path | None:
    return Path(value) if isinstance(value, str) else None


def _key_on_its_host(cert: Path, key: Path) -> bool:
    """A certificate signed from a CSR (``make_certs --sign``): its key was never on this machine."""
    return cert.exists() and not key.exists() and cert.with_suffix(".key") == key


def _check_agent(path: Path, data: dict[str, Any], problems: list[str]) -> tuple[str, int, str] | None:
    tls_section, security = _section(data, "tls"), _section(data, "security")
    keys = security.get("hmac_keys")
    if not isinstance(keys, dict) or not keys:
        problems.append(f"{path}: security.hmac_keys: empty: no collector could call this agent (add --collector NAME)")
        keys = {}
    try:
        cert, key, ca = (Path(str(tls_section.get(name))) for name in ("cert", "key", "ca"))
        if _key_on_its_host(cert, key):
            tls.check_certificate(cert, ca, "server")
        else:
            tls.server_context(cert, key, ca, None, tls_section.get("min_version", "TLSv1.3"))
        crl = _optional(tls_section.get("crl"))
        if crl is not None:
            tls.load_revocations(crl, ca)
        for key_file in keys.values():
            tokens.load_key(Path(str(key_file)))
    except PKIError as exc:
        problems.append(f"{path}: {exc}")
    name, port, host = data.get("name"), data.get("port"), data.get("host")
    if isinstance(name, str) and isinstance(port, int) and isinstance(host, str):
        return name, port, host
    problems.append(f"{path}: name, host or port missing")
    return None


def _check_collector(path: Path, data: dict[str, Any], ports: dict[str, int], problems: list[str]) -> None:
    tls_section, hmac = _section(data, "tls"), _section(data, "hmac")
    try:
        cert, key, ca = (Path(str(tls_section.get(name))) for name in ("cert", "key", "ca"))
        if _key_on_its_host(cert, key):
            tls.check_certificate(cert, ca, "client")
        else:
            tls.client_context(cert, key, ca, _optional(tls_section.get("crl")))
        tokens.load_key(Path(str(hmac.get("key_file"))))
    except PKIError as exc:
        problems.append(f"{path}: {exc}")
    agents = data.get("agents")
    if not isinstance(agents, list) or not agents:
        problems.append(f"{path}: agents: empty: this collector would poll nothing (add --agent NAME=HOST)")
        return
    for index, entry in enumerate(agents):
        name = entry.get("name") if isinstance(entry, dict) else None
        port = entry.get("port", 8000) if isinstance(entry, dict) else None
        if name in ports and port != ports[name]:
            problems.append(f"{path}: agents[{index}].port: {port}, but agent {name} listens on {ports[name]}")


def check_written(out: Path) -> list[str]:
    """One line per problem of the configs in ``out`` (``agent-*.json``, ``collector*.json``); empty: usable."""
    problems: list[str] = []
    ports: dict[str, int] = {}
    loopback: dict[int, str] = {}
    for path in sorted(out.glob("agent-*.json")):
        data = _load(path, problems)
        found = _check_agent(path, data, problems) if data is not None else None
        if found is None:
            continue
        name, port, host = found
        ports[name] = port
        if host.startswith("127.") or host == "::1":
            if port in loopback:
                problems.append(f"{path}: port: {port} is agent {loopback[port]}'s too, on this host's loopback")
            loopback[port] = name
    for path in sorted(out.glob("collector*.json")):
        data = _load(path, problems)
        if data is not None:
            _check_collector(path, data, ports, problems)
    return problems
