"""PKI bootstrap: a CA, agent and collector certificates, HMAC keys, a CRL and ready-to-run configs.

    python pki/make_certs.py --out DIR [--agent NAME=HOST[,HOST...][:PORT]]... [--collector NAME]...
                             [--days N] [--allow CIDR]... [--port N] [--force]
    python pki/make_certs.py --out DIR --revoke NAME
    python pki/make_certs.py --out DIR --refresh-crl
    python pki/make_certs.py --out DIR --from-predecessor OLD_COLLECTOR_CONFIG [--agent-config OLD_AGENT_CONFIG]
    python pki/make_certs.py --out DIR --rotate-hmac --collector NAME
    python pki/make_certs.py --request --out HOSTDIR (--agent NAME=HOST[,HOST...] | --collector NAME)
    python pki/make_certs.py --out DIR --sign HOSTDIR/NAME.csr (--agent NAME=HOST[,HOST...] | --collector NAME)

Re-running with the same ``--out`` keeps the CA and every existing key and certificate, adds what is
new, and touches no existing file (configs only gain entries for new agents or collectors) except to
keep them consistent: an agent named again with a port (``NAME=HOSTS:PORT`` or ``--port``) gets it in
its config and in every collector's entry for it. ``--force`` re-issues the named agents' and collectors'
keys and certificates (never the CA, never an HMAC key). ``--rotate-hmac`` gives each named collector a
second HMAC key under the labelled key id ``NAME/YYYY-MM-DD``: every agent config accepts it beside the
old one, the collector's config signs with it (docs/runbook.md: agents first, then the collector).

It never leaves a config that cannot run: agents without any collector get the default collector
``collector``; agents on this host's loopback get distinct ports (the next free one after ``--port``);
a collector with no agent to poll is refused; and the run ends by checking what it wrote
(:mod:`pki.bootcheck`).
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as a script: python pki/make_certs.py
    # Python put pki/ itself first on sys.path, where our modules would shadow the standard library's.
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import datetime as dt
import ipaddress
import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki import __version__, enroll_cli
from pki import ca as ca_lib
from pki import csr as csr_lib
from pki.bootcheck import check_written
from pki.configwriter import (
    DEFAULT_PORT,
    agent_config,
    agent_entries,
    collector_config,
    existing_agents,
    is_loopback,
    merge_json,
    read_config,
    sync_collector,
    write_config,
)
from pki.enroll_tokens import EntityRole
from pki.errors import PKIError
from pki.files import PRIVATE_MODE, PUBLIC_MODE, write_atomic
from pki.migrate import overlay, read_predecessor
from pki.tokens import new_key_text

DEFAULT_AGENT = ("localhost", ("localhost", "127.0.0.1", "::1"))
DEFAULT_COLLECTOR = "collector"
DEFAULT_ALLOW = ("127.0.0.1", "::1")


class UsageError(PKIError):
    """Bad command-line input."""


@dataclass
class Plan:
    out: Path
    agents: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    collectors: list[str] = field(default_factory=list)
    days: int = ca_lib.LEAF_DAYS
    allow: tuple[str, ...] = DEFAULT_ALLOW
    port: int = DEFAULT_PORT
    force: bool = False
    rotate_hmac: bool = False
    ports: dict[str, int] = field(default_factory=dict)  # agents given a port on this run (NAME=HOSTS:PORT)
    port_given: bool = False  # --port was on the command line: the named agents take it
    signed: dict[str, ec.EllipticCurvePublicKey] = field(default_factory=dict)  # --sign: keys made on their host


def _name(value: str, what: str) -> str:
    if ca_lib.NAME_PATTERN.match(value) is None:
        raise UsageError(f"{what} name {value!r} must be 1-64 of A-Z a-z 0-9 . _ - (no path separators)")
    return value


def parse_agent(spec: str) -> tuple[str, tuple[str, ...], int | None]:
    """``NAME=HOST[,HOST...][:PORT]`` (an IPv6 last host with a port in brackets: ``[::1]:8001``)."""
    name, sep, hosts_text = spec.partition("=")
    if not sep or not hosts_text:
        raise UsageError(f"--agent {spec!r}: expected NAME=HOST[,HOST...][:PORT]")
    port: int | None = None
    head, comma, last = hosts_text.rpartition(",")
    bracketed = last.startswith("[") and "]:" in last
    if bracketed or last.count(":") == 1:
        last, _, port_text = last.rpartition(":")
        last = last.removeprefix("[").removesuffix("]") if bracketed else last
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise UsageError(f"--agent {spec!r}: the port after ':' must be 1..65535")
        port = int(port_text)
        hosts_text = head + comma + last
    hosts = tuple(host.strip() for host in hosts_text.split(","))
    for host in hosts:
        try:
            ca_lib.general_name(host)
        except ValueError as exc:
            raise UsageError(f"--agent {spec!r}: {exc}") from None
    return _name(name, "agent"), hosts, port


def _write_private(path: Path, data: bytes, force: bool) -> bool:
    return write_atomic(path, data, mode=PRIVATE_MODE, overwrite=force)


def _write_public(path: Path, data: bytes, force: bool = False) -> bool:
    return write_atomic(path, data, mode=PUBLIC_MODE, overwrite=force)


def _load_issued(cert_path: Path, key_path: Path) -> ca_lib.Issued:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{key_path}: not an EC private key")
    return ca_lib.Issued(key, cert)


def _ensure_ca(out: Path) -> ca_lib.Issued:
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    if cert_path.exists() and key_path.exists():
        try:
            return _load_issued(cert_path, key_path)
        except (ValueError, OSError) as exc:
            raise PKIError(f"{cert_path}: existing CA cannot be loaded: {exc}") from exc
    if cert_path.exists() or key_path.exists():
        raise PKIError(f"{out}: only one of ca.crt and ca.key exists; restore the other or use a new --out")
    issued = ca_lib.create_ca()
    _write_private(key_path, ca_lib.key_pem(issued.key), force=False)
    _write_public(cert_path, ca_lib.cert_pem(issued.cert))
    return issued


def _ensure_leaf(
    authority: ca_lib.Issued, folder: Path, name: str, role: ca_lib.Role, hosts: Sequence[str], plan: Plan
) -> list[str]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    notes: list[str] = []
    public = plan.signed.get(name)
    if public is not None:  # --sign: the key stays on its host; a key made here earlier would not match
        if key_path.exists():
            if not plan.force:
                raise UsageError(f"{key_path} exists (a key made here): --force removes it, the host's key replaces it")
            key_path.unlink()
        cert = ca_lib.certify(authority, public, name, role, hosts=hosts, days=plan.days)
        _write_public(cert_path, ca_lib.cert_pem(cert), force=True)
        return [f"{cert_path}: signed for the key on its host; copy it there with ca.crt and crl.pem"]
    if cert_path.exists() and key_path.exists() and not plan.force:
        if role == "server":
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            existing = set(ca_lib.certificate_hosts(cert))
            wanted = {str(ca_lib.general_name(h).value) for h in hosts}
            if existing != wanted:
                notes.append(f"{cert_path}: kept; its hosts differ from the ones given (use --force to re-issue)")
        return notes
    issued = ca_lib.issue(authority, name, role, hosts=hosts, days=plan.days)
    _write_private(key_path, ca_lib.key_pem(issued.key), force=True)
    _write_public(cert_path, ca_lib.cert_pem(issued.cert), force=True)
    return notes


def _revoked_entries(out: Path) -> list[tuple[int, dt.datetime]]:
    path = out / "crl.pem"
    if not path.exists():
        return []
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return [(entry.serial_number, entry.revocation_date_utc) for entry in crl]


def _write_crl(out: Path, authority: ca_lib.Issued, revoked: list[tuple[int, dt.datetime]]) -> None:
    _write_public(out / "crl.pem", ca_lib.crl_pem(ca_lib.build_crl(authority, revoked)), force=True)


def _plan_ports(plan: Plan) -> tuple[dict[str, int], list[str]]:
    """The port each agent of this run listens on, before anything is written; notes for the operator.

    Agents listening on loopback share this host, so they get distinct ports: a clash with an explicit
    ``:PORT`` is refused, otherwise the agent takes the next free port after the one it would have had.
    """
    existing = existing_agents(plan.out)
    named = {name for name, _ in plan.agents}
    taken = {port: name for name, (port, loopback) in existing.items() if loopback and name not in named}
    ports: dict[str, int] = {}
    notes: list[str] = []
    for name, hosts in plan.agents:
        explicit = plan.ports.get(name, plan.port if plan.port_given else None)
        port = explicit if explicit is not None else existing.get(name, (plan.port, True))[0]
        if all(is_loopback(host) for host in hosts):
            if port in taken and name in plan.ports:
                raise UsageError(
                    f"agents {taken[port]} and {name} would both listen on 127.0.0.1:{port}; "
                    f"give {name} another port: --agent {name}=HOST[,HOST...]:PORT"
                )
            wanted = port
            while port in taken and port < 65535:
                port += 1
            if port in taken:
                raise UsageError(f"no free port above {wanted} for agent {name}; give it one: --agent {name}=HOST:PORT")
            if port != wanted:
                notes.append(f"agent {name} listens on 127.0.0.1:{port} ({wanted} is agent {taken[wanted]}'s)")
            taken[port] = name
        ports[name] = port
    return ports, notes


def _existing_names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.crt")) if folder.is_dir() else []


def _check_writable(out: Path) -> None:
    try:
        if not out.exists():
            out.mkdir(parents=True)
            os.chmod(out, 0o700)  # explicit: a permissive umask must not open the directory
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise PKIError(f"{out}: cannot write there: {exc.strerror or exc}") from exc


def bootstrap(plan: Plan) -> list[str]:
    """Create or extend the PKI under ``plan.out``; return notes for the operator.

    Raises :class:`UsageError` before writing anything when the request cannot give usable configs, and
    :class:`PKIError` (one line per problem) when the configs written do not pass :mod:`pki.bootcheck`.
    """
    _check_writable(plan.out)
    notes: list[str] = []
    if not plan.collectors and not _existing_names(plan.out / "collectors"):
        plan.collectors = [DEFAULT_COLLECTOR]
        notes.append(f"no --collector given: made the collector {DEFAULT_COLLECTOR!r} (name it with --collector NAME)")
    if not plan.agents and not existing_agents(plan.out):
        raise UsageError("a collector needs an agent to poll: add --agent NAME=HOST[,HOST...][:PORT]")
    ports, port_notes = _plan_ports(plan)
    notes += port_notes
    for sub in ("agents", "collectors", "data"):
        (plan.out / sub).mkdir(mode=0o700, exist_ok=True)
    os.chmod(plan.out / "data", 0o700)
    authority = _ensure_ca(plan.out)
    for name, hosts in plan.agents:
        notes += _ensure_leaf(authority, plan.out / "agents", name, "server", hosts, plan)
    for name in plan.collectors:
        notes += _ensure_leaf(authority, plan.out / "collectors", name, "client", (), plan)
        # --force renews certificates only: a new HMAC key under the same id would lock the collector out
        # of every agent until each has the new file, so that takes its own flag
        _write_private(plan.out / "collectors" / f"{name}.hmac", new_key_text(), force=False)
    if not (plan.out / "crl.pem").exists():
        _write_crl(plan.out, authority, [])
    collectors = _existing_names(plan.out / "collectors")
    existing = existing_agents(plan.out)
    for name, hosts in plan.agents:
        path = plan.out / f"agent-{name}.json"
        if not path.exists():
            config = agent_config(plan.out, name, hosts, collectors, plan.allow, ports[name])
            write_config(path, config, overwrite=False)
        elif existing.get(name, (ports[name], True))[0] != ports[name]:
            data = read_config(path)
            data["port"] = ports[name]
            write_config(path, data, overwrite=True)
    # every agent config, old or new, learns the keys and names of collectors added since
    for name in _existing_names(plan.out / "agents"):
        config = agent_config(plan.out, name, ("localhost",), collectors, plan.allow, DEFAULT_PORT)
        for key in ("security.hmac_keys", "security.allowed_clients"):
            if (plan.out / f"agent-{name}.json").exists():
                merge_json(plan.out / f"agent-{name}.json", config, key)
    entries = agent_entries(plan.out)
    for collector in plan.collectors:
        path = _collector_config_path(plan.out, collector)
        if not path.exists():
            write_config(path, collector_config(plan.out, collector, entries), overwrite=False)
    # every collector config, old or new, polls every agent, at the port its config listens on
    for path in sorted(plan.out.glob("collector*.json")):
        sync_collector(path, entries, {name for name, _ in plan.agents})
    problems = check_written(plan.out)
    if problems:
        raise PKIError("\n".join(problems))
    return notes


def _collector_config_path(out: Path, collector: str) -> Path:
    """``collector.json`` belongs to the first collector made here; later ones get ``collector-NAME.json``."""
    main = out / "collector.json"
    if not main.exists():
        return main
    try:
        owner = json.loads(main.read_text()).get("hmac", {}).get("key_id")
    except (OSError, ValueError, AttributeError):
        owner = None
    return main if owner == collector else out / f"collector-{collector}.json"


def revoke(out: Path, name: str) -> str:
    authority = _ensure_existing_ca(out)
    for folder in ("collectors", "agents"):
        cert_path = out / folder / f"{name}.crt"
        if cert_path.exists():
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            revoked = _revoked_entries(out)
            if cert.serial_number not in {serial for serial, _ in revoked}:
                revoked.append((cert.serial_number, ca_lib.utcnow()))
            _write_crl(out, authority, revoked)
            return f"revoked {folder[:-1]} {name} (serial {cert.serial_number:x}) in {out / 'crl.pem'}"
    raise PKIError(f"{out}: no agent or collector certificate named {name!r}")


def refresh_crl(out: Path) -> str:
    authority = _ensure_existing_ca(out)
    _write_crl(out, authority, _revoked_entries(out))
    return f"re-signed {out / 'crl.pem'} (valid {ca_lib.CRL_DAYS} days)"


def _ensure_existing_ca(out: Path) -> ca_lib.Issued:
    if not (out / "ca.crt").exists() or not (out / "ca.key").exists():
        raise PKIError(f"{out}: no CA here (ca.crt and ca.key); bootstrap first")
    return _load_issued(out / "ca.crt", out / "ca.key")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="make-certs",
        description="Bootstrap the secure-monitor PKI: CA, certificates, HMAC keys, configs.",
        allow_abbrev=False,  # no --token for --token-file: a token typed on the command line is refused outright
    )
    parser.add_argument("--out", required=True, type=Path, help="directory to create or extend")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="NAME=HOST[,HOST...][:PORT]",
        help="an agent, the host names/addresses it is reached at, and its port (repeatable)",
    )
    parser.add_argument(
        "--collector",
        action="append",
        default=[],
        metavar="NAME",
        help="a collector; NAME is also its HMAC key id (repeatable)",
    )
    parser.add_argument(
        "--days",
        type=int,
        default=None,
        help=f"leaf certificate lifetime in days (1-{ca_lib.MAX_LEAF_DAYS}; default {ca_lib.LEAF_DAYS}, "
        "and 30 for what --serve issues: renewed automatically)",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="CIDR",
        help="collector addresses the agents' configs allow (default 127.0.0.1 and ::1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"the port the named agents listen on (default {DEFAULT_PORT}; NAME=HOSTS:PORT for one agent)",
    )
    parser.add_argument("--force", action="store_true", help="re-issue keys and certificates of the named entities")
    parser.add_argument(
        "--rotate-hmac",
        action="store_true",
        help="a new HMAC key for each named collector, key id NAME/DATE, accepted by every agent config beside the old",
    )
    parser.add_argument(
        "--from-predecessor",
        type=Path,
        metavar="OLD_COLLECTOR_CONFIG",
        help="build the PKI and configs from the predecessor's collector config (and --agent-config)",
    )
    parser.add_argument(
        "--agent-config", type=Path, metavar="OLD_AGENT_CONFIG", help="with --from-predecessor: its agent config"
    )
    parser.add_argument(
        "--request",
        action="store_true",
        help="on the host: write only NAME.key (0600) and NAME.csr in --out for one --agent or --collector",
    )
    parser.add_argument(
        "--sign",
        type=Path,
        metavar="FILE.csr",
        help="on the CA machine: sign a --request CSR that asks for exactly the --agent or --collector restated",
    )
    parser.add_argument("--revoke", metavar="NAME", help="revoke this collector's (or agent's) certificate")
    enrollment = parser.add_argument_group("enrollment service (docs/enrollment.md)")
    enrollment.add_argument(
        "--issue-token",
        action="store_true",
        help="a single-use enrollment token for one --agent NAME=HOSTS or --collector NAME (to --token-file or stdout)",
    )
    enrollment.add_argument("--ttl", default="1h", help="how long an issued token is good for (30m, 1h, 2d)")
    enrollment.add_argument("--url", help="the enrollment service the token points at (default: the last --serve's)")
    enrollment.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="--issue-token: write the token here (0600); --enroll: read it from here (-: stdin)",
    )
    enrollment.add_argument("--list-tokens", action="store_true", help="list the tokens issued and their state")
    enrollment.add_argument("--revoke-token", metavar="ID", help="revoke an unused token")
    enrollment.add_argument(
        "--serve", metavar="HOST:PORT", help="run the enrollment service (HOST: the name or address hosts dial)"
    )
    enrollment.add_argument(
        "--enroll",
        nargs="?",
        const="",
        metavar="URL",
        help="on the host: enroll with the token of --token-file into --out (URL: default the token's)",
    )
    parser.add_argument("--refresh-crl", action="store_true", help="re-sign crl.pem with a new nextUpdate")
    return parser


def _plan(args: argparse.Namespace) -> Plan:
    if args.days is None:
        args.days = ca_lib.LEAF_DAYS
    if not 1 <= args.days <= ca_lib.MAX_LEAF_DAYS:
        raise UsageError(f"--days must be 1..{ca_lib.MAX_LEAF_DAYS}, not {args.days}")
    if args.port is not None and not 1 <= args.port <= 65535:
        raise UsageError(f"--port must be 1..65535, not {args.port}")
    parsed = [parse_agent(spec) for spec in args.agent]
    agents = [(name, hosts) for name, hosts, _ in parsed]
    ports = {name: port for name, _, port in parsed if port is not None}
    collectors = [_name(name, "collector") for name in args.collector]
    if not agents and not collectors:
        agents, collectors = [DEFAULT_AGENT], [DEFAULT_COLLECTOR]
    for value in args.allow:
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise UsageError(f"--allow {value!r}: not an IP address or CIDR") from None
        if network.prefixlen == 0:
            raise UsageError(f"--allow {value!r} allows every address")
    return Plan(
        args.out.resolve(),
        agents,
        collectors,
        args.days,
        tuple(args.allow) or DEFAULT_ALLOW,
        DEFAULT_PORT if args.port is None else args.port,
        args.force,
        args.rotate_hmac,
        ports,
        args.port is not None,
    )


def _plan_migration(args: argparse.Namespace) -> Plan:
    if args.agent or args.port is not None:
        raise UsageError("--from-predecessor takes the agents and their ports from the old collector config")
    migration = read_predecessor(args.from_predecessor, args.agent_config)
    allow = migration.allow or tuple(args.allow) or DEFAULT_ALLOW
    collectors = [_name(name, "collector") for name in args.collector] or [DEFAULT_COLLECTOR]
    agents = [(name, hosts) for name, hosts, _ in migration.agents]
    ports = {name: port for name, _, port in migration.agents}
    days = ca_lib.LEAF_DAYS if args.days is None else args.days
    return Plan(args.out.resolve(), agents, collectors, days, allow, DEFAULT_PORT, ports=ports)


def from_predecessor(plan: Plan, args: argparse.Namespace) -> list[str]:
    """Bootstrap ``plan``, then lay the old files' settings over the configs written; notes list what was dropped."""
    migration = read_predecessor(args.from_predecessor, args.agent_config)
    notes = bootstrap(plan)
    for path in sorted(plan.out.glob("collector*.json")):
        write_config(path, overlay(read_config(path), migration.collector), overwrite=True)
    for name, _, _ in migration.agents:
        path = plan.out / f"agent-{name}.json"
        write_config(path, overlay(read_config(path), migration.agent), overwrite=True)
    problems = check_written(plan.out)
    if problems:
        raise PKIError("\n".join(problems))
    if args.agent_config is not None and not migration.allow:
        notes.append(f"no usable security.allowed_ips in {args.agent_config}: agents admit {', '.join(plan.allow)}")
    notes += [f"dropped {line}" for line in migration.dropped]
    kept = ", ".join(sorted({*migration.collector, *(f"agent {key}" for key in migration.agent)}))
    notes.append(f"kept from the predecessor: {len(migration.agents)} agents; {kept or 'no other settings'}")
    return notes


def rotate_hmac(out: Path, collectors: Sequence[str], today: dt.date | None = None) -> list[str]:
    """A new HMAC key per collector under ``NAME/LABEL``; agents accept it beside the old, collectors sign with it."""
    if not collectors:
        raise UsageError("--rotate-hmac needs --collector NAME (the collectors whose keys to rotate)")
    label = (today or dt.datetime.now(dt.UTC).date()).isoformat()
    agent_paths = sorted(out.glob("agent-*.json"))
    notes = []
    for name in collectors:
        if not (out / "collectors" / f"{name}.crt").exists():
            raise UsageError(f"--rotate-hmac: no collector {name!r} in {out}")
        suffix, attempt = label, 1
        while (out / "collectors" / f"{name}.{suffix}.hmac").exists():
            attempt += 1
            suffix = f"{label}-{attempt}"
        key_id, key_file = f"{name}/{suffix}", out / "collectors" / f"{name}.{suffix}.hmac"
        _write_private(key_file, new_key_text(), force=False)
        for path in agent_paths:
            data = read_config(path)
            data.setdefault("security", {}).setdefault("hmac_keys", {})[key_id] = str(key_file)
            write_config(path, data, overwrite=True)
        for path in sorted(out.glob("collector*.json")):
            data = read_config(path)
            current = str(data.get("hmac", {}).get("key_id", ""))
            if current == name or current.startswith(f"{name}/"):
                data["hmac"] = {"key_id": key_id, "key_file": str(key_file)}
                write_config(path, data, overwrite=True)
        notes.append(
            f"{name}: new key id {key_id!r}; install the agent configs and reload every agent first, then the "
            f"collector's config; after security.max_clock_skew remove the old key id from the agents (docs/runbook.md)"
        )
    problems = check_written(out)
    if problems:
        raise PKIError("\n".join(problems))
    return notes


def _one_entity(args: argparse.Namespace, flag: str) -> tuple[str, ca_lib.Role, tuple[str, ...]]:
    """The single ``--agent NAME=HOSTS`` or ``--collector NAME`` that ``--request``/``--sign`` act on."""
    if len(args.agent) + len(args.collector) != 1:
        raise UsageError(f"{flag} takes exactly one --agent NAME=HOST[,HOST...] or --collector NAME")
    if args.agent:
        name, hosts, _ = parse_agent(args.agent[0])
        return name, "server", hosts
    return _name(args.collector[0], "collector"), "client", ()


def request(args: argparse.Namespace) -> str:
    """``--request``: a new key and its CSR in ``--out`` (the host's directory), nothing else."""
    name, role, hosts = _one_entity(args, "--request")
    out = args.out.resolve()
    _check_writable(out)
    key_path, csr_path = out / f"{name}.key", out / f"{name}.csr"
    if not args.force and (key_path.exists() or csr_path.exists()):
        raise UsageError(f"{key_path} or {csr_path} exists; --force makes a new key and request")
    key, csr = csr_lib.make_request(name, role, hosts)
    _write_private(key_path, ca_lib.key_pem(key), force=True)
    _write_public(csr_path, csr_lib.request_pem(csr), force=True)
    what = f"--agent {args.agent[0]}" if args.agent else f"--collector {name}"
    return (
        f"request written: {csr_path} (the key {key_path} stays on this host); on the CA machine: "
        f"make_certs.py --out DIR --sign {csr_path.name} {what}"
    )


def _plan_signing(args: argparse.Namespace) -> Plan:
    """``--sign FILE.csr``: the plan of a bootstrap that certifies the CSR's key instead of making one."""
    name, role, hosts = _one_entity(args, "--sign")
    try:
        data = args.sign.read_bytes()[: csr_lib.MAX_CSR_BYTES + 1]
    except OSError as exc:
        raise UsageError(f"{args.sign}: cannot read: {exc.strerror or exc}") from exc
    try:
        public = csr_lib.check_request(data, name, role, hosts)
    except csr_lib.RequestRefused as exc:
        raise UsageError(f"{args.sign}: refused: {exc}") from None
    out = args.out.resolve()
    if not (out / "ca.crt").exists() and out.is_dir() and any(out.iterdir()):
        raise PKIError(f"{out}: no CA here (ca.crt and ca.key), but not empty either: is this the CA's --out?")
    args.agent, args.collector = (args.agent, []) if role == "server" else ([], [name])
    plan = _plan(args)
    plan.signed[name] = public
    return plan


def _enrollment(args: argparse.Namespace) -> bool:
    """The enrollment service's actions (:mod:`pki.enroll_cli`); False when none was asked for."""
    out = args.out.resolve()
    if args.days is not None and not 1 <= args.days <= ca_lib.MAX_LEAF_DAYS:
        raise UsageError(f"--days must be 1..{ca_lib.MAX_LEAF_DAYS}, not {args.days}")
    if args.issue_token:
        name, role, hosts = _one_entity(args, "--issue-token")
        ttl = enroll_cli.parse_duration(args.ttl, "--ttl")
        entity: EntityRole = "agent" if role == "server" else "collector"
        print(enroll_cli.issue_token(out, name, entity, hosts, ttl, args.url, args.token_file), end="")
    elif args.list_tokens:
        print(enroll_cli.list_tokens(out))
    elif args.revoke_token is not None:
        print(enroll_cli.revoke_token(out, args.revoke_token))
    elif args.serve is not None:
        enroll_cli.serve(out, args.serve, args.days)
    elif args.enroll is not None:
        expected = _one_entity(args, "--enroll")[0] if args.agent or args.collector else None
        print(enroll_cli.enroll(args, expected))
    else:
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if _enrollment(args):
            return 0
        if args.revoke:
            print(revoke(args.out.resolve(), _name(args.revoke, "certificate")))
            return 0
        if args.refresh_crl:
            print(refresh_crl(args.out.resolve()))
            return 0
        if args.agent_config is not None and args.from_predecessor is None:
            raise UsageError("--agent-config goes with --from-predecessor OLD_COLLECTOR_CONFIG")
        if args.rotate_hmac:
            for note in rotate_hmac(args.out.resolve(), [_name(name, "collector") for name in args.collector]):
                print(f"note: {note}", file=sys.stderr)
            print(f"HMAC keys rotated in {args.out.resolve()}")
            return 0
        if args.request:
            print(request(args))
            return 0
        if args.sign is not None:
            plan = _plan_signing(args)
        elif args.from_predecessor is None:
            plan = _plan(args)
        else:
            plan = _plan_migration(args)
        for note in bootstrap(plan) if args.from_predecessor is None else from_predecessor(plan, args):
            print(f"note: {note}", file=sys.stderr)
    except PKIError as exc:
        for line in str(exc).splitlines():  # the final check names every problem, one line each
            print(f"make-certs: {line}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"make-certs: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"PKI ready in {plan.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
