"""``secure-audit``: audit-log verification and deployment checks, one subcommand per module.

    secure-audit verify FILE...     the audit log's hash chain: 0 intact, 1 broken (naming the line), 2 unreadable
                                    (segments oldest first, or --rotated FILE; see :mod:`secure_audit.verify`)
    secure-audit check ...          compliance report (see :mod:`secure_audit.check`)

A subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int``; to add one, list
it in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from secure_audit import check, verify


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {
    "verify": Subcommand("check an audit log's hash chain, across rotated segments", verify.add_arguments, verify.run),
    "check": Subcommand("compliance report of a deployment", check.add_arguments, check.run),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secure-audit", description="Audit tools for secure-monitor.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, subcommand in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=subcommand.help, description=subcommand.help)
        subcommand.add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":
    sys.exit(main())
