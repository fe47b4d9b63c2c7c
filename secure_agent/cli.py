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


def check_listen(config: AgentConfig) -> None:
    """``--check``: the agent could listen on ``host:port`` now (not taken by another program, nor by this
    agent already running: stop it first). Raises :class:`AgentError` naming the address."""
    if config.port == 0:
        return
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no clash
        try:
            probe.bind((config.host, config.port))
        except OSError as exc:
            where = f"[{config.host}]:{config.port}" if family == socket.AF_INET6 else f"{config.host}:{config.port}"
            in_use = exc.errno == errno.EADDRINUSE
            reason = "in use by another process (or by this agent, already running)" if in_use else exc.strerror
            raise AgentError(f"port: cannot listen on {where}: {reason or exc}") from exc


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
            check_listen(config)
            print(f"secure-agent: {args.config}: configuration, certificates, keys and port are usable")
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
