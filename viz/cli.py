"""``secure-viz``: the predecessor's ``visualize_metrics.py`` flags, reading storage through ``storage``.

Exit status: 0 files written; 1 no samples for the window/agent, storage unavailable, or an output
file cannot be written; 2 bad usage or configuration (storage credentials refused included); 130
interrupted. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from storage import StorageConfigError, StorageError, open_store
from storage.config import StorageConfig
from storage.models import AGENT_NAME_PATTERN
from viz import __version__
from viz.app import PLOT_CHOICES, Request, generate, window_for
from viz.config import load_settings
from viz.errors import NoDataError, OutputError, VizConfigError

PROG = "secure-viz"
DEFAULT_HOURS = 24.0
MAX_HOURS = 24.0 * 3660
"""Ten years: a bound so that a typo cannot ask storage for everything since 1970."""
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

log = logging.getLogger(__name__)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_HOURS):
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {MAX_HOURS:g}: {text!r}")
    return value


def _agent(text: str) -> str:
    if re.fullmatch(AGENT_NAME_PATTERN, text) is None:
        raise argparse.ArgumentTypeError("must be an agent name (letters, digits, '.', '_', '-'; at most 64)")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Draw plots and an HTML dashboard from the storage named in a collector configuration.",
    )
    parser.add_argument("--config", required=True, type=Path, metavar="COLLECTOR_FILE",
                        help="the collector's JSON configuration (its storage and thresholds sections are used)")
    parser.add_argument("--plot", required=True, choices=PLOT_CHOICES,
                        help="which plot to draw; 'all' draws every plot and writes index.html")
    parser.add_argument("--hours", type=_hours, default=DEFAULT_HOURS,
                        help=f"how many hours back from now to draw (default {DEFAULT_HOURS:g})")
    parser.add_argument("--agent", type=_agent, default=None, metavar="NAME",
                        help="draw only this agent (default: every agent)")
    parser.add_argument("--output-dir", required=True, type=Path, metavar="DIR",
                        help="where the PNG files (and index.html) are written; created when missing")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def storage_where(storage: StorageConfig) -> str:
    """Which storage was read, in the words of the config: the file (and its backups) or the MySQL table."""
    if storage.type == "mysql":
        server = storage.mysql_socket or f"{storage.mysql_host}:{storage.mysql_port}"
        return f"mysql {storage.mysql_user}@{server}/{storage.mysql_database} (table metrics)"
    return f"{storage.json_file} (and its rotated backups .1 ... .{storage.rotation.backup_count})"


def _fail(code: int, message: str) -> int:
    for line in message.splitlines() or [""]:  # a config error holds one line per mistake
        print(f"{PROG}: {line}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args.config)
        store = open_store(settings.storage, readonly=True)
    except VizConfigError as exc:
        return _fail(EXIT_USAGE, str(exc))
    except StorageConfigError as exc:
        return _fail(EXIT_USAGE, f"{args.config}: {exc}")
    except StorageError as exc:
        return _fail(EXIT_FAILED, f"storage: {exc}")
    request = Request(args.plot, window_for(args.hours), args.agent, args.output_dir)
    try:
        written = generate(store, request, settings.thresholds)
    except NoDataError as exc:
        return _fail(EXIT_FAILED, f"no data: {exc} in {storage_where(settings.storage)}")
    except StorageConfigError as exc:
        return _fail(EXIT_USAGE, f"{args.config}: storage: {exc}")
    except StorageError as exc:
        return _fail(EXIT_FAILED, f"storage: {exc}")
    except OutputError as exc:
        return _fail(EXIT_FAILED, str(exc))
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    finally:
        store.close()
    for path in written:
        print(path)
    return EXIT_OK
