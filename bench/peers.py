"""Starting the servers a benchmark compares, on loopback: our agent, Glances and node_exporter.

* our agent: ``secure-agent --config FILE``, a config from ``pki/make_certs.py`` with the port and
  a few bench settings changed (:func:`start_agent`);
* node_exporter (Debian ``prometheus-node-exporter``): default collectors, ``/metrics`` behind mutual
  TLS through ``--web.config.file`` with a certificate from the same CA (:func:`start_node_exporter`);
* Glances (PyPI ``glances``, in ``.venv-bench-glances``): ``glances -s`` XML-RPC server mode, as it
  ships: plain HTTP, no TLS, no password (Glances' server has no TLS) (:func:`start_glances`).

Each server runs as a child process whose output goes to a log file in the work directory (never a
pipe nobody reads), and is terminated (then killed) when its ``with`` block ends. A server whose
program is not installed raises :class:`PeerUnavailable`, which the benchmarks report as such.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.measure import REPO, wait_quiet, which

READY_TIMEOUT = 30.0  # seconds a server may take to accept connections (Glances' first update is slow)
STOP_TIMEOUT = 5.0
OURS = "secure-agent"
AGENT_NAME = "localhost"
NODE_EXPORTER_NAME = "nodeexp"
COLLECTOR_NAME = "collector"
GLANCES_VENV = REPO / ".venv-bench-glances"


class PeerUnavailable(Exception):
    """A server could not be started: its program is missing or it did not come up."""


@dataclass(frozen=True)
class Pki:
    """A ``make_certs`` run: the CA, a collector's client certificate and HMAC key, server certificates."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def client_cert(self) -> Path:
        return self.root / "collectors" / f"{COLLECTOR_NAME}.crt"

    @property
    def client_key(self) -> Path:
        return self.root / "collectors" / f"{COLLECTOR_NAME}.key"

    @property
    def hmac_key_file(self) -> Path:
        return self.root / "collectors" / f"{COLLECTOR_NAME}.hmac"

    @property
    def hmac_key_id(self) -> str:
        return COLLECTOR_NAME

    def agent_config(self, name: str = AGENT_NAME) -> Path:
        return self.root / f"agent-{name}.json"

    def server_cert(self, name: str) -> Path:
        return self.root / "agents" / f"{name}.crt"

    def server_key(self, name: str) -> Path:
        return self.root / "agents" / f"{name}.key"


def make_pki(root: Path) -> Pki:
    """Our CA, agent ``localhost`` and ``nodeexp`` (both with a SAN for 127.0.0.1) and collector ``collector``."""
    command = [
        sys.executable,
        str(REPO / "pki" / "make_certs.py"),
        "--out",
        str(root),
        "--agent",
        f"{AGENT_NAME}=localhost,127.0.0.1",
        "--agent",
        f"{NODE_EXPORTER_NAME}=localhost,127.0.0.1",
        "--collector",
        COLLECTOR_NAME,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise PeerUnavailable(f"make_certs failed: {(done.stderr or done.stdout).strip()}")
    return Pki(root)


def free_port() -> int:
    """A loopback port free right now (the server binds it a moment later; a clash fails loudly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A running server under test."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    tls: bool
    server_hostname: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)


def _wait_ready(server: Server, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise PeerUnavailable(
                f"{server.name} exited with status {server.process.returncode} at start-up:\n{server.log_tail()}"
            )
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port), timeout=1.0):
            return
        time.sleep(0.05)
    server.stop()
    raise PeerUnavailable(f"{server.name} did not accept connections within {timeout:.0f} s:\n{server.log_tail()}")


def _spawn(
    name: str, command: Sequence[str], port: int, workdir: Path, *, tls: bool, env: dict[str, str] | None = None
) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(  # a fixed command of ours or a peer's, no shell
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    server = Server(name, process, port, log, tls)
    try:
        _wait_ready(server)
    except BaseException:
        server.stop()
        raise
    return server


def agent_command() -> list[str]:
    """``secure-agent`` next to the running interpreter, else ``python -m secure_agent``."""
    script = Path(sys.executable).parent / "secure-agent"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "secure_agent"]


def agent_available() -> str | None:
    """None when our agent can be started, else why not (it is being built while the suite is)."""
    for module in ("secure_agent.server", "secure_agent.cli"):
        try:
            found = importlib.util.find_spec(module)
        except ImportError:
            found = None
        if found is None:
            return f"the agent is not built yet (no module {module})"
    return None


def start_agent(
    pki: Pki,
    workdir: Path,
    *,
    check_interval: float | None = None,
    rate_limit: tuple[float, int] | None = None,
    log_level: str = "WARNING",
    audit_dir: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Server:
    """Our agent from ``make_certs``' ``agent-localhost.json``, on a free port, audit log in ``workdir``.

    ``rate_limit`` (per second, burst) replaces the default 10/s that would refuse a latency benchmark;
    ``check_interval`` sets the background security scan period (the config default is 30 s);
    ``audit_dir`` puts the audit log elsewhere (an experiment: on tmpfs its fdatasync costs nothing);
    ``extra`` sets further top-level config keys (e.g. ``audit_refusals``).
    """
    reason = agent_available()
    if reason is not None:
        raise PeerUnavailable(reason)
    config: dict[str, Any] = json.loads(pki.agent_config().read_text())
    port = free_port()
    config["port"] = port
    config["log_level"] = log_level
    config["audit_log"] = str((audit_dir or workdir) / f"agent-audit-{port}.log")
    if check_interval is not None:
        config["check_interval"] = check_interval
    if rate_limit is not None:
        config["security"]["rate_limit"] = {"per_second": rate_limit[0], "burst": rate_limit[1]}
    config.update(extra or {})
    path = workdir / "agent.json"
    path.write_text(json.dumps(config, indent=2))
    return _spawn(OURS, [*agent_command(), "--config", str(path)], port, workdir, tls=True)


def node_exporter_binary() -> str | None:
    return os.environ.get("BENCH_NODE_EXPORTER") or which("prometheus-node-exporter", "node_exporter")


def start_node_exporter(pki: Pki, workdir: Path) -> Server:
    """node_exporter with its default collectors, ``/metrics`` over mutual TLS (client cert of our CA)."""
    binary = node_exporter_binary()
    if binary is None:
        raise PeerUnavailable("node_exporter is not installed (bench/setup.sh installs prometheus-node-exporter)")
    web_config = workdir / "node-exporter-web.yml"
    # YAML is a superset of JSON: no YAML library needed to write it.
    tls_config = {
        "cert_file": str(pki.server_cert(NODE_EXPORTER_NAME)),
        "key_file": str(pki.server_key(NODE_EXPORTER_NAME)),
        "client_auth_type": "RequireAndVerifyClientCert",
        "client_ca_file": str(pki.ca),
        "min_version": "TLS13",  # as our agent's default
    }
    web_config.write_text(json.dumps({"tls_server_config": tls_config}, indent=2))
    port = free_port()
    command = [
        binary,
        f"--web.listen-address=127.0.0.1:{port}",
        f"--web.config.file={web_config}",
        "--log.level=warn",
    ]
    return _spawn("node_exporter", command, port, workdir, tls=True)


def glances_binary() -> str | None:
    local = GLANCES_VENV / "bin" / "glances"
    return os.environ.get("BENCH_GLANCES") or (str(local) if local.exists() else which("glances"))


def start_glances(workdir: Path) -> Server:
    """``glances -s`` on 127.0.0.1 with its defaults (stats cached for ``--cached-time`` 1 s between updates)."""
    binary = glances_binary()
    if binary is None:
        raise PeerUnavailable("glances is not installed (bench/setup.sh installs it into .venv-bench-glances)")
    port = free_port()
    config = workdir / "glances.conf"
    config.write_text("[global]\ncheck_update=false\n")  # no PyPI version check from the benchmark
    command = [
        binary,
        "-C",
        str(config),
        "-s",
        "-B",
        "127.0.0.1",
        "-p",
        str(port),
        "--disable-autodiscover",
        "--disable-webui",
    ]
    return _spawn("glances", command, port, workdir, tls=False)


def start_all(
    stack: contextlib.ExitStack, pki: Pki, workdir: Path, notes: list[str], **agent_options: Any
) -> dict[str, Server]:
    """Our agent, node_exporter and Glances, each stopped when ``stack`` closes; idle once this returns.

    A server that cannot start is left out, with the reason appended to ``notes``.
    """
    starters: dict[str, Callable[[], Server]] = {
        OURS: lambda: start_agent(pki, workdir, **agent_options),
        "node_exporter": lambda: start_node_exporter(pki, workdir),
        "glances": lambda: start_glances(workdir),
    }
    servers: dict[str, Server] = {}
    for name, starter in starters.items():
        try:
            server = starter()
        except PeerUnavailable as exc:
            notes.append(f"{name}: not available: {exc}")
            continue
        stack.callback(server.stop)
        servers[name] = server
    for name, server in servers.items():
        if not wait_quiet(server.pid):
            notes.append(f"{name} was still using CPU 15 s after start-up; measured anyway")
    return servers
