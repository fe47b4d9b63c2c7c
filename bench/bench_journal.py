"""Cost of reading sshd's failures from the systemd journal: ``journalctl`` (what the agent uses) vs a binding.

    .venv/bin/python -m bench.bench_journal [--small 2000] [--large 200000] [--polls 20]

Writes two journals with ``systemd-journal-remote`` (1 entry in 50 an sshd failure, the rest cron noise),
``--small`` and ``--large`` entries, and measures one incremental poll after the newest entry (what each
background scan does once the cursor is current): ``JournalFollower.poll()`` (``journalctl --after-cursor``,
a process per poll) and, when ``cysystemd`` is importable (``pip install cysystemd``; not a dependency of
ours), the same read through its reader kept open. The figure that matters is the ratio large/small of each:
a poll must cost the same however large the journal is. Prints a table and the ``BENCH_RESULT`` line.
Needs journalctl and systemd-journal-remote (Debian: systemd-journal-remote). Not a test.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.result import emit, goal
from secure_agent.probes.journal import JournalFollower

REMOTE = "/lib/systemd/systemd-journal-remote"


def _write_journal(directory: Path, entries: int) -> None:
    directory.mkdir(parents=True)
    base = int(time.time() * 1e6) - entries * 1000
    export = directory / "entries.export"
    with export.open("w") as handle:
        for index in range(entries):
            sshd = index % 50 == 0 or index == entries - 1
            ident, message = (
                ("sshd", f"Failed password for root from 203.0.113.{index % 200} port 2222 ssh2")
                if sshd else ("CRON", f"pam_unix(cron:session): session opened for user root {index}")
            )
            handle.write(
                f"__REALTIME_TIMESTAMP={base + index * 1000}\n__MONOTONIC_TIMESTAMP={index + 1}\n"
                f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_UID=0\n_COMM={ident}\n"
                f"SYSLOG_IDENTIFIER={ident}\nMESSAGE={message}\n\n"
            )
    subprocess.run([REMOTE, f"--output={directory / 'remote.journal'}", str(export)], check=True, capture_output=True)
    export.unlink()


def _median_ms(action: Callable[[], object], polls: int) -> float:
    times = []
    for _ in range(polls):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _journalctl_poll(directory: Path, polls: int) -> float:
    follower = JournalFollower(directory, initial_since=10**9)
    follower.poll()  # the first poll reads the window and sets the cursor at the newest entry
    return _median_ms(follower.poll, polls)


def _binding_poll(directory: Path, polls: int) -> float | None:
    try:
        from cysystemd.reader import JournalReader, Rule  # type: ignore[import-not-found]
    except ImportError:
        return None
    reader = JournalReader()
    reader.open_directory(str(directory))
    reader.add_filter(Rule("SYSLOG_IDENTIFIER", "sshd"))
    reader.seek_tail()
    cursor = None
    for entry in reader:
        cursor = entry.cursor
    reader.seek_tail()

    def poll() -> None:
        if cursor is not None:
            reader.seek_cursor(cursor)
        for _entry in reader:
            pass

    return _median_ms(poll, polls)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--large", type=int, default=200_000)
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args(argv)
    if shutil.which("journalctl") is None or not Path(REMOTE).exists():
        print("needs journalctl and systemd-journal-remote")
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    try:
        rows = {}
        for label, size in (("small", args.small), ("large", args.large)):
            _write_journal(work / label, size)
            rows[label] = (size, _journalctl_poll(work / label, args.polls), _binding_poll(work / label, args.polls))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'journal':>8} {'entries':>9} {'journalctl poll ms':>20} {'binding poll ms':>16}")
    for label, (size, journalctl, binding) in rows.items():
        shown = "-" if binding is None else f"{binding:.3f}"
        print(f"{label:>8} {size:>9} {journalctl:>20.2f} {shown:>16}")
    flat = rows["large"][1] / rows["small"][1]
    print(f"journalctl: large/small = {flat:.2f} (flat: at most 1.5)")
    table = [
        {"journal": label, "entries": size, "journalctl poll ms": round(jc, 3),
         "binding poll ms": None if binding is None else round(binding, 3)}
        for label, (size, jc, binding) in rows.items()
    ]
    emit({
        "bench": "journal",
        "title": "SSH failures from the journal: one incremental poll",
        "params": {"small": args.small, "large": args.large, "polls": args.polls},
        "tables": [{"title": "median per poll", "rows": table}],
        "goals": [goal("journalctl poll, large journal / small journal", flat, "<", 1.5, "x",
                       "journald seeks to the cursor through its index")],
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
