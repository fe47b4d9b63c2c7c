"""``secure-agent --config FILE [--check]``: run the agent in the foreground, or only check its setup.

Exit status: 0 after a clean stop (SIGTERM/SIGINT) or a passing ``--check``; 2 when the config,
TLS material, key permissions, audit log or listening address is unusable (``--check`` also tries the
address: a port another process holds fails it) (one line on stderr
naming the file or key, never a traceback). SIGHUP reloads certificates, CRL, HMAC keys and
allowlists.
"""

from __future__ import annotations

import argparse
import errno
import logging
import logging.handlers
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import psutil

from pki.configfile import load_config
from pki.errors import PKIError
from secure_agent import __version__
from secure_agent.config import AgentConfig
from secure_agent.errors import AgentError
from secure_agent.lifecycle import Agent, check

EXIT_OK = 0
EXIT_UNUSABLE = 2
_SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT}
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="secure-agent",
        description="Serve this host's metrics over XML-RPC inside mutual TLS, with HMAC request tokens.",
    )
    parser.add_argument("--config", type=Path, required=True, metavar="FILE", help="the agent's JSON config")
    parser.add_argument(
        "--check", action="store_true", help="validate config, certificates, keys and permissions; do not serve"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def _configure_logging(config: AgentConfig) -> None:
    handler: logging.Handler
    if config.log_file is not None:
        # WatchedFileHandler reopens the file after logrotate moves it
        handler = logging.handlers.WatchedFileHandler(config.log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(config.log_level)


def _running_with(pid: int, config_path: Path) -> bool:
    """Is process ``pid`` a secure-agent started with ``--config config_path``?"""
    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return False
    if not any(Path(arg).name in ("secure-agent", "secure_agent") for arg in argv):
        return False
    given = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    given += [arg.removeprefix("--config=") for arg in argv if arg.startswith("--config=")]
    return any(Path(path).resolve() == config_path.resolve() for path in given)


def _listener_pid(host: str, port: int) -> int | None:
    """The process listening on ``host:port`` (as far as this user may see), if any."""
    try:
        connections = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    wildcard = ("0.0.0.0", "::")  # noqa: S104 -- addresses compared against, not listened on
    for connection in connections:
        local = connection.laddr
        if not isinstance(local, tuple) or len(local) != 2 or connection.status != psutil.CONN_LISTEN:
            continue
        address, bound = local
        if bound == port and address in (host, *wildcard) and connection.pid is not None:
            return connection.pid
    return None


def check_listen(config: AgentConfig, config_path: Path) -> str | None:
    """``--check``: the agent could listen on ``host:port`` now. A port another program holds fails the
    check (:class:`AgentError` naming the address); held by this agent itself, already running with this
    config (a check before a reload), it passes with a note, returned."""
    if config.port == 0:
        return None
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    where = f"[{config.host}]:{config.port}" if family == socket.AF_INET6 else f"{config.host}:{config.port}"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no clash
        try:
            probe.bind((config.host, config.port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise AgentError(f"port: cannot listen on {where}: {exc.strerror or exc}") from exc
            pid = _listener_pid(config.host, config.port)
            if pid is not None and _running_with(pid, config_path):
                return f"{where} is this agent's, running as pid {pid}"
            holder = f" (pid {pid})" if pid is not None else ""
            raise AgentError(f"port: cannot listen on {where}: in use by another process{holder}") from exc
    return None


def _fail(message: str) -> int:
    for line in message.splitlines() or [""]:  # a config error holds one line per mistake
        print(f"secure-agent: {line}", file=sys.stderr)
    return EXIT_UNUSABLE


def _serve(agent: Agent) -> int:
    """Serve until SIGTERM/SIGINT; SIGHUP reloads. Signals are taken synchronously with sigwait."""
    agent.start()
    while True:
        received = signal.sigwait(_SIGNALS)
        if received == signal.SIGHUP:
            agent.reload()
            continue
        logging.getLogger(__name__).info("received %s, stopping", signal.Signals(received).name)
        agent.stop()
        return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config, AgentConfig)
        if args.check:
            check(config)
            note = check_listen(config, args.config)
            print(f"secure-agent: {args.config}: configuration, certificates, keys and port are usable"
                  + (f" ({note})" if note else ""))
            return EXIT_OK
        try:
            _configure_logging(config)
        except OSError as exc:
            return _fail(f"{config.log_file}: cannot open the log file: {exc.strerror or exc}")
        # Block the signals before any thread starts, so that every thread inherits the mask and
        # they are delivered only to sigwait() in this (main) thread.
        signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        agent = Agent(config, config_path=args.config)
        return _serve(agent)
    except (PKIError, AgentError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # anything of the host's left untranslated below: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        return _fail(f"{where}{exc.strerror or exc}")


if __name__ == "__main__":
    sys.exit(main())
