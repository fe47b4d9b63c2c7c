"""``secure-audit verify FILE``: check an audit log's hash chain (see :mod:`secure_agent.audit`).

Exit 0 when the chain is intact, 1 when it is broken (stderr names the first bad line and why),
2 when the file cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from secure_agent.audit import verify_file

EXIT_INTACT = 0
EXIT_BROKEN = 1
EXIT_UNUSABLE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="an agent's audit log")


def run(args: argparse.Namespace) -> int:
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
