"""``make_certs --from-predecessor``: the predecessor's config files read into a PKI plan and settings to keep.

Everything the old files said that still means something here is kept (agents with their names, hosts and
ports; polling, thresholds, storage, logging, metrics switches, check interval, allowlist entries); every
other key is listed with the reason it was dropped. Nothing is ever weakened: an allowlist entry open to
all addresses is dropped, ``require_auth`` has no counterpart (every call is authenticated, always), and
values are copied only onto keys whose defaults they replace one for one, to be validated by the programs'
own ``--check``.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pki.errors import PKIError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
COLLECTOR_KEPT = ("poll_interval", "timeout", "max_workers", "log_level", "log_file")
# the predecessor's threshold keys (its README): a fixed, historical set, kept under the same names
THRESHOLDS_KEPT = ("cpu_usage", "cpu_temperature", "system_load", "memory_usage", "disk_usage")
STORAGE_KEPT = (
    "type",
    "log_file",
    "metrics_file",
    "json_file",
    "rotation",
    "mysql_host",
    "mysql_port",
    "mysql_user",
    "mysql_password",
    "mysql_database",
)
AGENT_KEPT = ("host", "check_interval", "log_level", "log_file")
METRICS_KEPT = ("enable_temperature", "enable_cpu", "enable_memory", "enable_disk", "enable_security")
NO_AUTH_MODE = "there is no unauthenticated mode: every call needs a certificate of the CA and a signed token"


class Migration(NamedTuple):
    agents: list[tuple[str, tuple[str, ...], int]]  # name, hosts (for its certificate), port
    collector: dict[str, Any]  # settings laid over the collector config make_certs writes
    agent: dict[str, Any]  # settings laid over every agent config
    allow: tuple[str, ...]  # the agents' allowlist as the old agent config had it, open-to-all entries removed
    dropped: list[str]  # "key: why", one per setting not carried over


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise PKIError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise PKIError(f"{path}: not JSON ({exc}); remove the README's '#' comments if you copied them") from exc
    if not isinstance(data, dict):
        raise PKIError(f"{path}: not a JSON object")
    return data


def _agents(path: Path, entries: object) -> list[tuple[str, tuple[str, ...], int]]:
    if not isinstance(entries, list) or not entries:
        raise PKIError(f"{path}: agents: the predecessor's list of agents is missing or empty")
    problems: list[str] = []
    agents: list[tuple[str, tuple[str, ...], int]] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        where = f"{path}: agents[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not an object")
            continue
        name, host, port = entry.get("name"), entry.get("host"), entry.get("port", 8000)
        if not isinstance(name, str) or not NAME.match(name):
            problems.append(f"{where}.name: must be 1-64 letters, digits, '.', '_' or '-', not {name!r}")
        elif name in seen:
            problems.append(f"{where}.name: {name!r} is listed twice")
        if not isinstance(host, str) or not host:
            problems.append(f"{where}.host: missing")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            problems.append(f"{where}.port: must be 1..65535, not {port!r}")
        if isinstance(name, str) and isinstance(host, str) and isinstance(port, int):
            seen.add(name)
            agents.append((name, (host,), port))
    if problems:
        raise PKIError("\n".join(problems))
    return agents


def _keep(
    source: dict[str, Any], kept: tuple[str, ...], prefix: str, target: dict[str, Any], dropped: list[str]
) -> None:
    for key, value in source.items():
        if key in kept:
            target[key] = value
        else:
            dropped.append(f"{prefix}{key}: no such setting in secure-monitor")


def _collector(path: Path, data: dict[str, Any], dropped: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, value in data.items():
        if key == "agents":
            continue
        if key == "thresholds" and isinstance(value, dict):
            settings["thresholds"] = {}
            _keep(value, THRESHOLDS_KEPT, "thresholds.", settings["thresholds"], dropped)
        elif key == "storage" and isinstance(value, dict):
            settings["storage"] = {}
            _keep(value, STORAGE_KEPT, "storage.", settings["storage"], dropped)
            if isinstance(value.get("mysql_password"), str):
                dropped.append(
                    "storage.mysql_password: kept, in the config as before; prefer storage.mysql_password_file "
                    "(a 0600 file) or storage.mysql_password_env"
                )
        elif key in COLLECTOR_KEPT:
            settings[key] = value
        else:
            dropped.append(f"{key}: no such setting in secure-monitor")
    return settings


def _agent(path: Path, data: dict[str, Any], dropped: list[str]) -> tuple[dict[str, Any], tuple[str, ...]]:
    settings: dict[str, Any] = {}
    allow: list[str] = []
    for key, value in data.items():
        if key == "metrics" and isinstance(value, dict):
            settings["metrics"] = {}
            _keep(value, METRICS_KEPT, "metrics.", settings["metrics"], dropped)
        elif key == "security" and isinstance(value, dict):
            for name, entry in value.items():
                if name == "require_auth":
                    dropped.append(f"security.require_auth ({json.dumps(entry)}): {NO_AUTH_MODE}")
                elif name == "allowed_ips" and isinstance(entry, list):
                    allow += _allowlist(entry, dropped)
                else:
                    dropped.append(f"security.{name}: no such setting in secure-monitor")
        elif key == "port":
            dropped.append("port: each agent listens on the port the collector's config polls it at")
        elif key == "name":
            dropped.append("name: each agent is named as the collector's config names it")
        elif key in AGENT_KEPT:
            settings[key] = value
        else:
            dropped.append(f"{key}: no such setting in secure-monitor")
    return settings, tuple(allow)


def _allowlist(entries: list[Any], dropped: list[str]) -> list[str]:
    kept = []
    for entry in entries:
        try:
            network = ipaddress.ip_network(str(entry), strict=False)
        except ValueError:
            dropped.append(f"security.allowed_ips {entry!r}: not an address or network")
            continue
        if network.prefixlen == 0:
            dropped.append(f"security.allowed_ips {entry!r}: admits every address; secure-monitor refuses that")
            continue
        kept.append(str(entry))
    return kept


def read_predecessor(collector_path: Path, agent_path: Path | None) -> Migration:
    """What the predecessor's files keep and drop; PKIError (one line per problem) if they cannot be used."""
    dropped: list[str] = []
    data = _read(collector_path)
    agents = _agents(collector_path, data.get("agents"))
    collector = _collector(collector_path, data, dropped)
    agent: dict[str, Any] = {}
    allow: tuple[str, ...] = ()
    if agent_path is not None:
        agent, allow = _agent(agent_path, _read(agent_path), dropped)
    return Migration(agents, collector, agent, allow, dropped)


def overlay(base: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``settings`` laid over it, section by section (a new dict; the inputs stay as they were)."""
    merged = dict(base)
    for key, value in settings.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = overlay(merged[key], value)
        else:
            merged[key] = value
    return merged
