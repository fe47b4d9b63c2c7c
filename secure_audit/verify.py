"""``secure-audit verify``: check an audit log's hash chain, in one file or across rotated segments, and
against the collector's central copy.

    secure-audit verify FILE                      one file (a live log, or one segment)
    secure-audit verify a1.log a2.log             several logs: each verified on its own
    secure-audit verify FILE.2 FILE.1 FILE        segments of one log (FILE and FILE.N), oldest first, as one chain
    secure-audit verify --rotated FILE            FILE.N ... FILE.1 found beside FILE, then FILE
    secure-audit verify HOSTLOG --against CENTRAL                       the host's log (and its segments)
    secure-audit verify HOSTLOG --collector-config FILE --agent NAME    against the central copy in storage

Exit 0: intact (the last line gives the number of records and the last hash); with ``--against``, the host
holds every record of the central copy unchanged. 1: broken, or the host lacks a centrally held record or
holds it differently; stderr names the first such record. 2: a file cannot be read, or the collector's
configuration or storage cannot be used (one line naming it). See :mod:`secure_audit.segments` and
:mod:`secure_audit.against` for the rules.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from pki.auditchain import GENESIS, MAX_LINE
from pki.errors import PKIError
from secure_audit.against import central_records, compare, host_records
from secure_audit.segments import ChainVerdict, UnreadableSegment, rotated_segments, verify_segments
from storage.errors import StorageError

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
    parser.add_argument(
        "--against",
        type=Path,
        metavar="CENTRAL",
        help="check the host's log FILE (with its rotated segments) against the collector's central copy CENTRAL",
    )
    parser.add_argument(
        "--collector-config",
        type=Path,
        metavar="FILE",
        help="with --agent: check against the central copy in that collector's storage (file or MySQL)",
    )
    parser.add_argument("--agent", metavar="NAME", help="the agent whose central copy --collector-config reads")


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


def _central_lines(args: argparse.Namespace) -> Iterator[str]:
    """The central copy's lines: from ``--against FILE``, or from the storage of ``--collector-config``."""
    if args.against is not None:
        path: Path = args.against
        with open(path, "rb") as handle:
            raw = handle.readline(MAX_LINE + 2)
            while raw:
                following = handle.readline(MAX_LINE + 2)
                if not following and not raw.endswith(b"\n"):
                    # a torn last line (the collector stopped mid-append; it cuts such a line when it next
                    # opens the copy, and --collector-config reads the copy without it): not a record
                    torn = f"{PROG}: {path}: ignoring its torn last line ({len(raw)} bytes, no newline)"
                    print(torn, file=sys.stderr)
                    return
                yield raw.decode("ascii", "replace").rstrip("\n")
                raw = following
        return
    from pki.configfile import load_config
    from secure_collector.config import CollectorConfig
    from storage import open_store

    config = load_config(args.collector_config, CollectorConfig)
    if args.agent not in {agent.name for agent in config.agents}:
        raise ValueError(f"{args.collector_config}: agents: no agent named {args.agent!r}")
    store = open_store(config.storage, readonly=True)
    try:
        yield from store.read_audit(args.agent)
    finally:
        store.close()


def _against(args: argparse.Namespace, files: list[Path]) -> int:
    if len(files) != 1 or args.rotated:
        print(f"{PROG}: --against and --collector-config take one FILE, the host's live log", file=sys.stderr)
        return EXIT_UNUSABLE
    if (args.against is None) == (args.collector_config is None) or (args.collector_config is None) != (
        args.agent is None
    ):
        print(f"{PROG}: give --against CENTRAL, or --collector-config FILE with --agent NAME", file=sys.stderr)
        return EXIT_UNUSABLE
    host = files[0]
    try:
        segments = rotated_segments(host) if host.exists() else []
        result = compare(host_records(segments), central_records(_central_lines(args)))
        chain = verify_segments(segments) if result.ok and segments else None
    except (PKIError, StorageError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except UnreadableSegment as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    except (OSError, EOFError) as exc:
        name = getattr(exc, "filename", None) or host
        print(f"{PROG}: {name}: cannot read: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    if not result.ok:
        print(f"{PROG}: {host}: {result.problem}", file=sys.stderr)
        print(f"{host}: DOES NOT HOLD the central copy ({result.matched} of its records found before that)")
        return EXIT_BROKEN
    if chain is not None and not chain.ok:
        return _report(chain)
    print(
        f"{host}: holds every record of the central copy ({result.matched} records; "
        f"{result.rotated} older ones rotated away on the host)"
    )
    return EXIT_INTACT


def run(args: argparse.Namespace) -> int:
    files: list[Path] = list(args.files)
    if args.against is not None or args.collector_config is not None or args.agent is not None:
        return _against(args, files)
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
