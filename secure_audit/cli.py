"""``secure-audit``: audit-log verification and deployment checks, one subcommand per module.

    secure-audit verify FILE...     each audit log's hash chain: 0 intact, 1 broken (naming the line), 2 unreadable
                                    (one log's rotated segments oldest first, or --rotated FILE, form one chain;
                                    see :mod:`secure_audit.verify`)
    secure-audit check ...          compliance report (see :mod:`secure_audit.check`)

A subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int``; to add one, list
it in :data:`SUBCOMMANDS`. Only the module of the subcommand being run is imported.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from secure_audit import __version__


class SubcommandModule(Protocol):
    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class Subcommand(NamedTuple):
    module: str
    help: str

    def load(self) -> SubcommandModule:
        module: SubcommandModule = importlib.import_module(self.module)
        return module


SUBCOMMANDS: dict[str, Subcommand] = {
    "verify": Subcommand("secure_audit.verify", "check an audit log's hash chain, across rotated segments"),
    "check": Subcommand("secure_audit.check", "compliance report of a deployment"),
}


def _chosen(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if not arg.startswith("-")), None)


def _parser(chosen: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secure-audit", description="Audit tools for secure-monitor.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, subcommand in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=subcommand.help, description=subcommand.help)
        if name == chosen:
            subcommand.load().add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parser(_chosen(arguments)).parse_args(arguments)
    return SUBCOMMANDS[args.command].load().run(args)


if __name__ == "__main__":
    sys.exit(main())
