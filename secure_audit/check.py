"""``secure-audit check``: a compliance report of a deployment, from its agent and collector configs.

    secure-audit check [--agent-config FILE] [--collector-config FILE] [--json] [--fail-on SEVERITY]

Configs are validated through the programs' own models (:class:`secure_agent.config.AgentConfig`,
:class:`secure_collector.config.CollectorConfig`), so whatever they refuse (a TLS floor below 1.2,
an allowlist of ``0.0.0.0/0``, no ``audit_log``) is refused here too: exit 2 with one line naming the
file and key. A usable config is then judged against the policy below; every finding carries a
severity and the fix. Exit 0: no finding at or above ``--fail-on`` (default ``info``: any finding);
1: findings; 2: unusable input.

Agent: TLS floor below 1.3 (info); certificates (see :mod:`secure_audit.material`); key files;
allowlist entries wider than IPv4 /24 or IPv6 /64 (medium), public IPv4 ranges of more than one
address (low); ``allowed_clients`` empty (info: any certificate of our CA is accepted); rate limit not
written down (low) or above :data:`MAX_RATE_PER_SECOND`/:data:`MAX_BURST` (medium); HMAC keys; CRL;
audit log not writable (high) or open to group/others (medium); no readable SSH log source, neither an
auth log nor the journal (medium: brute-force detection would be off).
Collector: certificates, key files (its own and the exporter's), HMAC key, MySQL without TLS to a
non-loopback host (high), hourly trends kept less than a year (info).

Run it as the service user (``sudo -u secure-monitor secure-audit check ...``): "writable" means
writable by whoever runs the check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from pki.configfile import load_config
from pki.errors import PKIError
from secure_agent import allowlist
from secure_agent.audit import check_audit_path
from secure_agent.config import AgentConfig
from secure_agent.errors import AuditError
from secure_agent.probes.journal import JournalFollower
from secure_agent.probes.ssh import SshMonitor
from secure_audit import material
from secure_audit.findings import Checked, Finding, Severity, render_json, render_text
from secure_audit.material import Where
from secure_collector.config import CollectorConfig
from storage.config import StorageConfig

# The storage backend's own rule for "this host" (it refuses MySQL without TLS anywhere else), so the
# check and the collector can never disagree about it.
from storage.mysql_conn import _loopback as on_this_host

MAX_RATE_PER_SECOND = 50.0  # a collector polls at most every 0.1 s (poll_interval floor): 10/s per collector
MAX_BURST = 100
MIN_IPV4_PREFIX = 24
MIN_IPV6_PREFIX = 64

EXIT_CLEAN, EXIT_FINDINGS, EXIT_UNUSABLE = 0, 1, 2


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_allowlist(where: Where, entries: Sequence[str]) -> list[Finding]:
    findings = []
    everyone = allowlist.admits_everyone(entries)
    if everyone is not None:  # the agent refuses to start with it
        findings.append(
            where.at("security.allowed_ips").finding(
                "allowlist-everyone",
                Severity.HIGH,
                everyone,
                "list the collectors' own addresses; the agent will not start with this list",
            )
        )
    for index, entry in enumerate(entries):
        network = allowlist.parse(entry)  # the config model has validated it; a mapped network as IPv4
        here = where.at(f"security.allowed_ips[{index}]")
        floor = MIN_IPV4_PREFIX if network.version == 4 else MIN_IPV6_PREFIX
        if network.prefixlen < floor:
            findings.append(
                here.finding(
                    "allowlist-wide",
                    Severity.MEDIUM,
                    f"{entry} admits {network.num_addresses:,} addresses to the TLS handshake; "
                    f"allow IPv4 /{MIN_IPV4_PREFIX} or narrower, IPv6 /{MIN_IPV6_PREFIX} or narrower",
                    "list the collectors' own addresses (or their smallest subnet)",
                )
            )
        elif network.version == 4 and network.is_global and network.num_addresses > 1:
            findings.append(
                here.finding(
                    "allowlist-public-range",
                    Severity.LOW,
                    f"{entry} is a public range of {network.num_addresses} addresses",
                    "list each collector's public address as a /32",
                )
            )
    return findings


def _check_agent_security(where: Where, config: AgentConfig) -> list[Finding]:
    security = config.security
    findings = check_allowlist(where, security.allowed_ips)
    if not security.allowed_clients:
        findings.append(
            where.at("security.allowed_clients").finding(
                "allowed-clients-empty",
                Severity.INFO,
                "empty: any certificate our CA issued may call this agent (also an agent's, if it has clientAuth)",
                "list the collectors' certificate names (make_certs writes them)",
            )
        )
    rate = where.at("security.rate_limit")
    if "rate_limit" not in security.model_fields_set:
        findings.append(
            rate.finding(
                "rate-limit-missing",
                Severity.LOW,
                f"not set: the built-in {security.rate_limit.per_second:g}/s, burst {security.rate_limit.burst}, "
                "applies but is not on record in the config",
                "write security.rate_limit.per_second and .burst into the config",
            )
        )
    elif security.rate_limit.per_second > MAX_RATE_PER_SECOND or security.rate_limit.burst > MAX_BURST:
        findings.append(
            rate.finding(
                "rate-limit-high",
                Severity.MEDIUM,
                f"{security.rate_limit.per_second:g}/s with burst {security.rate_limit.burst} is above what "
                f"polling needs (policy: at most {MAX_RATE_PER_SECOND:g}/s, burst {MAX_BURST})",
                "set per_second to a few times the polling rate (default 10, burst 20)",
            )
        )
    for key_id, path in sorted(security.hmac_keys.items()):
        findings += material.check_hmac_key(where.at(f"security.hmac_keys.{key_id}"), path)
    return findings


def _check_audit_log(where: Where, path: Path) -> list[Finding]:
    try:
        check_audit_path(path)  # the agent's own start-up check of its audit log
    except AuditError as exc:
        return [
            where.finding(
                "audit-log-not-writable",
                Severity.HIGH,
                f"{exc}; the agent refuses to start (it never serves a call it cannot record)",
                "point audit_log at a file in a directory the service user owns (e.g. /var/log/secure-monitor/, "
                "ReadWritePaths in deploy/secure-agent.service)",
                path,
            )
        ]
    if path.is_file():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            return [
                where.finding(
                    "audit-log-readable",
                    Severity.MEDIUM,
                    f"mode {mode:04o}: records name clients, addresses and methods",
                    f"chmod 600 {path} (the agent sets 0600 on files it creates)",
                    path,
                )
            ]
    return []


def check_agent(config: AgentConfig, config_path: str, *, now: dt.datetime | None = None) -> list[Finding]:
    """Every finding about an agent deployment described by ``config``."""
    now = now or _now()
    where = Where("agent", config_path, "")
    findings: list[Finding] = []
    if config.tls.min_version != "TLSv1.3":
        findings.append(
            where.at("tls.min_version").finding(
                "tls-floor",
                Severity.INFO,
                f"{config.tls.min_version}: TLS 1.2 is allowed (ECDHE + AEAD suites only)",
                'set tls.min_version to "TLSv1.3" once every collector speaks it',
            )
        )
    _, cert_findings = material.check_certificate(where.at("tls.cert"), config.tls.cert, leaf=True, now=now)
    ca, ca_findings = material.check_certificate(where.at("tls.ca"), config.tls.ca, leaf=False, now=now)
    findings += cert_findings + ca_findings
    findings += material.check_private_file(where.at("tls.key"), config.tls.key, "TLS private key")
    findings += material.check_crl(where.at("tls.crl"), config.tls.crl, ca, now=now)
    findings += _check_agent_security(where, config)
    findings += _check_audit_log(where.at("audit_log"), config.audit_log)
    findings += check_ssh_sources(where, config)
    return findings


def check_ssh_sources(where: Where, config: AgentConfig) -> list[Finding]:
    """SSH brute-force detection needs a readable source: the agent's own probe tries them, as it would."""
    if not config.metrics.enable_security:
        return []
    security = config.security
    monitor = SshMonitor(
        security.auth_log_paths,
        max_failures=security.ssh_max_failures,
        find_time=security.ssh_find_time,
        sources=security.auth_sources,
        journal=JournalFollower(security.journal_directory, initial_since=security.ssh_find_time),
    )
    try:
        scan = monitor.scan()
    finally:
        monitor.close()
    if scan.failures is not None:
        return []
    return [
        where.at("security.auth_sources").finding(
            "ssh-not-monitored",
            Severity.MEDIUM,
            f"SSH brute-force detection is not running: {scan.reason}",
            'give the agent a readable source: "journal" in security.auth_sources (its user in the '
            "systemd-journal group), or an auth log in security.auth_log_paths",
        )
    ]


PCI_RETENTION_DAYS = 365
"""PCI DSS v4.0 10.5.1: twelve months of history."""


def check_retention(where: Where, storage: StorageConfig) -> list[Finding]:
    """Hourly trends kept less than a year (info: an annual audit asks what a host did months ago)."""
    if storage.retention.trends_days >= PCI_RETENTION_DAYS:
        return []
    return [
        where.at("storage.retention.trends_days").finding(
            "retention-under-a-year",
            Severity.INFO,
            f"hourly trends are kept {storage.retention.trends_days} days; PCI DSS 10.5.1 asks for twelve months "
            "of history",
            f"set storage.retention.trends_days to {PCI_RETENTION_DAYS} or more where PCI DSS applies",
        )
    ]


def check_storage(where: Where, storage: StorageConfig, config_file: Path) -> list[Finding]:
    if storage.type != "mysql":
        return check_retention(where, storage)
    findings: list[Finding] = check_retention(where, storage)
    if storage.mysql_ssl is None and storage.mysql_socket is None and not on_this_host(storage.mysql_host):
        findings.append(
            where.at("storage.mysql_ssl").finding(
                "mysql-without-tls",
                Severity.HIGH,
                f"MySQL at {storage.mysql_host} without TLS would put samples and the password on the network in "
                "clear text; the collector refuses to start with it",
                "set storage.mysql_ssl.ca (and cert/key for client authentication), or use a local socket",
            )
        )
    if storage.mysql_ssl is not None and storage.mysql_ssl.key is not None:
        findings += material.check_private_file(
            where.at("storage.mysql_ssl.key"), storage.mysql_ssl.key, "MySQL client key"
        )
    if storage.mysql_password is not None:
        mode = stat.S_IMODE(config_file.stat().st_mode)
        if mode & 0o077:
            findings.append(
                where.at("storage.mysql_password").finding(
                    "secret-in-readable-config",
                    Severity.MEDIUM,
                    f"the MySQL password is in a config of mode {mode:04o}",
                    "move it to storage.mysql_password_file (mode 0600) or storage.mysql_password_env",
                    config_file,
                )
            )
    return findings


def check_collector(config: CollectorConfig, config_path: str, *, now: dt.datetime | None = None) -> list[Finding]:
    """Every finding about a collector deployment described by ``config``."""
    now = now or _now()
    where = Where("collector", config_path, "")
    findings: list[Finding] = []
    _, cert_findings = material.check_certificate(where.at("tls.cert"), config.tls.cert, leaf=True, now=now)
    ca, ca_findings = material.check_certificate(where.at("tls.ca"), config.tls.ca, leaf=False, now=now)
    findings += cert_findings + ca_findings
    findings += material.check_private_file(where.at("tls.key"), config.tls.key, "TLS private key")
    if config.tls.crl is not None:  # optional on the collector: the same expiry and signature checks
        findings += material.check_crl(where.at("tls.crl"), config.tls.crl, ca, now=now)
    findings += material.check_hmac_key(where.at("hmac.key_file"), config.hmac.key_file)
    if config.exporter is not None and config.exporter.tls is not None:  # the /metrics endpoint's own material
        exporter = config.exporter.tls
        findings += material.check_certificate(where.at("exporter.tls.cert"), exporter.cert, leaf=True, now=now)[1]
        findings += material.check_private_file(where.at("exporter.tls.key"), exporter.key, "TLS private key")
    findings += check_storage(where, config.storage, Path(config_path))
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``check``, for a parser of its own or a ``secure-audit`` subcommand."""
    parser.add_argument("--agent-config", type=Path, metavar="FILE", help="an agent's JSON config")
    parser.add_argument("--collector-config", type=Path, metavar="FILE", help="a collector's JSON config")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON document")
    parser.add_argument(
        "--fail-on",
        choices=[s.label for s in Severity],
        default=Severity.INFO.label,
        help="lowest severity that makes the exit status 1 (default: info, i.e. any finding)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the check for parsed ``args``; print the report to stdout, problems to stderr; return the exit code."""
    if args.agent_config is None and args.collector_config is None:
        print("secure-audit check: give --agent-config FILE, --collector-config FILE or both", file=sys.stderr)
        return EXIT_UNUSABLE
    checked: list[Checked] = []
    findings: list[Finding] = []
    now = _now()
    try:
        if args.agent_config is not None:
            agent = load_config(args.agent_config, AgentConfig)
            checked.append(Checked("agent", str(args.agent_config)))
            findings += check_agent(agent, str(args.agent_config), now=now)
        if args.collector_config is not None:
            collector = load_config(args.collector_config, CollectorConfig)
            checked.append(Checked("collector", str(args.collector_config)))
            findings += check_collector(collector, str(args.collector_config), now=now)
    except PKIError as exc:
        for line in str(exc).splitlines():  # a config error holds one line per mistake
            print(f"secure-audit check: {line}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as exc:  # a file vanished between validation and the checks
        print(f"secure-audit check: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    sys.stdout.write(render_json(checked, findings) if args.json else render_text(checked, findings))
    threshold = Severity.parse(args.fail_on)
    return EXIT_FINDINGS if any(f.severity >= threshold for f in findings) else EXIT_CLEAN


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="secure-audit check", description="Compliance report of a secure-monitor deployment."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
