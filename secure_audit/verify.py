"""``secure-audit verify``: check an audit log's hash chain, in one file or across rotated segments.

    secure-audit verify FILE                      one file (a live log, or one segment)
    secure-audit verify a1.log a2.log             several logs: each verified on its own
    secure-audit verify FILE.2 FILE.1 FILE        segments of one log (FILE and FILE.N), oldest first, as one chain
    secure-audit verify --rotated FILE            FILE.N ... FILE.1 found beside FILE, then FILE

Exit 0: intact (the last line gives the number of records and the last hash). 1: broken; stderr
names the file and line of the first bad record, stdout says how much was intact before it. 2: a
file cannot be read (one line naming it). See :mod:`secure_audit.segments` for the rules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pki.auditchain import GENESIS
from secure_audit.segments import ChainVerdict, UnreadableSegment, rotated_segments, verify_segments

EXIT_INTACT = 0
EXIT_BROKEN = 1
EXIT_UNUSABLE = 2
PROG = "secure-audit verify"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", type=Path, nargs="+", metavar="FILE", help="an audit log, or its segments oldest first"
    )
    parser.add_argument(
        "--rotated",
        action="store_true",
        help="verify FILE (one) together with its rotated segments FILE.N ... FILE.1 (oldest first)",
    )


def _report(verdict: ChainVerdict) -> int:
    for segment in verdict.segments:
        print(f"{segment.path}: intact, {segment.records} records, last hash {segment.last_hash}")
    if not verdict.ok:
        print(f"{PROG}: {verdict.bad_path}: line {verdict.bad_line}: {verdict.problem}", file=sys.stderr)
        intact = verdict.records
        print(f"{verdict.bad_path}: BROKEN at line {verdict.bad_line} ({intact} records intact before it)")
        return EXIT_BROKEN
    if verdict.start != GENESIS:
        print(f"{verdict.segments[0].path}: continues an older segment that ended with hash {verdict.start}")
    if len(verdict.segments) > 1:
        print(
            f"chain intact: {len(verdict.segments)} segments, {verdict.records} records, last hash {verdict.last_hash}"
        )
    return EXIT_INTACT


def segments_of_one_log(files: list[Path]) -> bool:
    """Are ``files`` one log's segments (``FILE`` and ``FILE.N`` in one directory) rather than separate logs?"""
    bases = set()
    for path in files:
        stem, dot, number = path.name.removesuffix(".gz").rpartition(".")
        base = stem if dot and number.isdigit() else path.name.removesuffix(".gz")
        bases.add((path.parent, base))
    return len(bases) == 1


def _each_on_its_own(files: list[Path]) -> int:
    codes = []
    for path in files:
        try:
            codes.append(_report(verify_segments([path])))
        except UnreadableSegment as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            codes.append(EXIT_UNUSABLE)
    return max(codes)


def run(args: argparse.Namespace) -> int:
    files: list[Path] = list(args.files)
    if args.rotated and len(files) != 1:
        print(f"{PROG}: --rotated takes one FILE (the live log); its segments are found beside it", file=sys.stderr)
        return EXIT_UNUSABLE
    if len(files) > 1 and not args.rotated and not segments_of_one_log(files):
        return _each_on_its_own(files)
    try:
        if args.rotated:
            files = rotated_segments(files[0])
        verdict = verify_segments(files)
    except UnreadableSegment as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except OSError as exc:  # the directory of a --rotated FILE cannot be listed
        print(f"{PROG}: {exc.filename}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    return _report(verdict)
