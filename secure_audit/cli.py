"""``secure-audit``: audit-log verification and deployment checks, one subcommand per module.

    secure-audit verify FILE        the audit log's hash chain: 0 intact, 1 broken (naming the line), 2 unreadable
    secure-audit check ...          compliance report (see :mod:`secure_audit.check`)

A subcommand is a module with ``add_arguments(parser)`` and ``run(args) -> int``; to add one, list
it in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from secure_agent.audit import verify_file
from secure_audit import check

EXIT_INTACT = 0
EXIT_BROKEN = 1
EXIT_UNUSABLE = 2


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="an agent's audit log")


def run_verify(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        verdict = verify_file(path)
    except OSError as exc:
        print(f"secure-audit verify: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not verdict.ok:
        print(f"secure-audit verify: {path}: line {verdict.bad_line}: {verdict.problem}", file=sys.stderr)
        print(f"{path}: BROKEN at line {verdict.bad_line} ({verdict.records} records intact before it)")
        return EXIT_BROKEN
    print(f"{path}: intact, {verdict.records} records, last hash {verdict.last_hash}")
    return EXIT_INTACT


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


SUBCOMMANDS: dict[str, Subcommand] = {
    "verify": Subcommand("check an audit log's hash chain", add_verify_arguments, run_verify),
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
