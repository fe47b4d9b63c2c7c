"""The ready-to-run configs ``make_certs`` writes, and keeping a directory of them consistent.

An agent's ``agent-NAME.json`` is the truth about where it listens; each collector config's ``agents``
entry for it is derived from that file and its certificate (the host to dial is the first name the
certificate was issued for, or 127.0.0.1 for a loopback agent). Existing files only gain what is new,
except the port of an agent the operator names again with one.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509

from pki.errors import PKIError
from pki.files import write_atomic

DEFAULT_PORT = 8000


def merge_json(path: Path, build: dict[str, Any], merge_key: str | None) -> None:
    """Write a config if absent; if present, only add new entries under ``merge_key``."""
    if not path.exists():
        write_atomic(path, (json.dumps(build, indent=2) + "\n").encode(), mode=0o640)
        return
    if merge_key is None:
        return
    try:
        current = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PKIError(f"{path}: existing config is not valid JSON; fix or remove it") from exc
    section = current
    *parents, leaf = merge_key.split(".")
    for part in parents:
        section = section.setdefault(part, {})
    existing, wanted = section.get(leaf), build
    for part in merge_key.split("."):
        wanted = wanted[part]
    if isinstance(existing, list) and isinstance(wanted, list):

        def identity(entry: Any) -> Any:
            return entry.get("name") if isinstance(entry, dict) else entry

        present = {identity(entry) for entry in existing}
        added = [entry for entry in wanted if identity(entry) not in present]
        if not added:
            return
        section[leaf] = existing + added
    elif isinstance(existing, dict) and isinstance(wanted, dict):
        added_keys = {k: v for k, v in wanted.items() if k not in existing}
        if not added_keys:
            return
        section[leaf] = {**existing, **added_keys}
    else:
        return
    write_atomic(path, (json.dumps(current, indent=2) + "\n").encode(), mode=0o640, overwrite=True)


def agent_config(
    out: Path, name: str, hosts: Sequence[str], collectors: Sequence[str], allow: Sequence[str], port: int
) -> dict[str, Any]:
    loopback = all(is_loopback(host) for host in hosts)
    return {
        "name": name,
        "host": "127.0.0.1" if loopback else "0.0.0.0",  # noqa: S104 - a remote agent must listen; the allowlist guards it
        "port": port,
        "log_level": "INFO",
        "metrics": {
            "enable_temperature": True,
            "enable_cpu": True,
            "enable_memory": True,
            "enable_disk": True,
            "enable_security": True,
        },
        "tls": {
            "cert": str(out / "agents" / f"{name}.crt"),
            "key": str(out / "agents" / f"{name}.key"),
            "ca": str(out / "ca.crt"),
            "crl": str(out / "crl.pem"),
            "min_version": "TLSv1.3",
        },
        "security": {
            "allowed_ips": list(allow),
            "allowed_clients": list(collectors),
            "rate_limit": {"per_second": 10, "burst": 20},
            "hmac_keys": {c: str(out / "collectors" / f"{c}.hmac") for c in collectors},
            "max_clock_skew": 300,
        },
        "audit_log": str(out / "data" / f"audit-{name}.log"),
    }


def collector_config(out: Path, collector: str, agents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    data = out / "data"
    return {
        "agents": [dict(agent) for agent in agents],
        "poll_interval": 30,
        "timeout": 10,
        "max_workers": 10,
        "tls": {
            "cert": str(out / "collectors" / f"{collector}.crt"),
            "key": str(out / "collectors" / f"{collector}.key"),
            "ca": str(out / "ca.crt"),
            "crl": str(out / "crl.pem"),
        },
        "hmac": {"key_id": collector, "key_file": str(out / "collectors" / f"{collector}.hmac")},
        "storage": {
            "type": "file",
            "json_file": str(data / "metrics_data.json"),
            "metrics_file": str(data / "metrics_data.log"),
            "rotation": {"max_size": "10MB", "backup_count": 5},
        },
        "spool_dir": str(data / "spool"),
        # no "thresholds": the collector's defaults apply (storage/catalog.py, README's table)
    }


def read_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PKIError(f"{path}: existing config is not valid JSON; fix or remove it") from exc
    if not isinstance(data, dict):
        raise PKIError(f"{path}: existing config is not a JSON object; fix or remove it")
    return data


def write_config(path: Path, data: dict[str, Any], overwrite: bool) -> None:
    write_atomic(path, (json.dumps(data, indent=2) + "\n").encode(), mode=0o640, overwrite=overwrite)


def existing_agents(out: Path) -> dict[str, tuple[int, bool]]:
    """Agents whose configs are in ``out``: name -> (port, listens on loopback)."""
    found: dict[str, tuple[int, bool]] = {}
    for path in sorted(out.glob("agent-*.json")):
        data = read_config(path)
        name, port = data.get("name"), data.get("port", DEFAULT_PORT)
        if isinstance(name, str) and isinstance(port, int):
            found[name] = (port, is_loopback(str(data.get("host", "127.0.0.1"))))
    return found


def san_hosts(cert_path: Path) -> tuple[str, ...]:
    """The hosts of an agent certificate's SAN, in the order they were given."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(str(name.value) for name in san)


def agent_entries(out: Path) -> list[dict[str, Any]]:
    """What a collector needs to poll each agent configured in ``out``: name, the host to dial, port."""
    entries = []
    for name, (port, _) in existing_agents(out).items():
        cert = out / "agents" / f"{name}.crt"
        hosts = san_hosts(cert) if cert.exists() else ()
        entries.append({"name": name, "host": dial_host(hosts) if hosts else "127.0.0.1", "port": port})
    return entries


def sync_collector(path: Path, entries: Sequence[dict[str, Any]], renamed_ports: set[str]) -> None:
    """Add the agents a collector config lacks; give the agents re-ported on this run their new port."""
    data = read_config(path)
    current = data.get("agents")
    if not isinstance(current, list):
        raise PKIError(f"{path}: agents is not a list; fix or remove it")
    changed = False
    by_name = {entry.get("name"): entry for entry in current if isinstance(entry, dict)}
    for entry in entries:
        present = by_name.get(entry["name"])
        if present is None:
            current.append(dict(entry))
            changed = True
        elif entry["name"] in renamed_ports and present.get("port") != entry["port"]:
            present["port"] = entry["port"]
            changed = True
    if changed:
        write_config(path, data, overwrite=True)


def dial_host(hosts: Sequence[str]) -> str:
    """The host a collector dials: the first given, but 127.0.0.1 for a loopback agent that lists it
    (``localhost`` may resolve to ::1 first while the agent listens on 127.0.0.1)."""
    if all(is_loopback(host) for host in hosts) and "127.0.0.1" in hosts:
        return "127.0.0.1"
    return hosts[0]


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
