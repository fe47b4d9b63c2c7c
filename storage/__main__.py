"""``python -m storage init-db --config COLLECTOR_CONFIG``: create the MySQL schema.
``python -m storage trends --config COLLECTOR_CONFIG``: build the missing trend rollups (:mod:`storage.buildtrends`).

Reads only the ``storage`` section of the collector's JSON configuration. Exit status: 0 done,
1 the storage cannot be reached (or the file backend is in use by a running collector), 2 the
configuration (or credentials) cannot work; errors are one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import jsonconfig
from storage import __version__
from storage.config import StorageConfig
from storage.errors import StorageConfigError, StorageError, StorageUnavailable

PROG = "python -m storage"


def load_storage_config(path: Path) -> StorageConfig:
    """The validated ``storage`` section of the JSON file at ``path``. Raises StorageConfigError."""
    document = jsonconfig.read_object(path, StorageConfigError)
    return jsonconfig.validate(path, document.get("storage", {}), StorageConfig, StorageConfigError, "storage")


def _init_db(config_path: Path) -> str:
    config = load_storage_config(config_path)
    if config.type != "mysql":
        raise StorageConfigError(f"{config_path}: storage.type is {config.type!r}; init-db is for 'mysql'")
    from storage.mysql import MySQLStore

    store = MySQLStore(config)
    try:
        version = store.init_schema()
    finally:
        store.close()
    return f"schema version {version} ready in {store.where}"


def _trends(config_path: Path, rebuild: bool) -> str:
    from storage.buildtrends import build, terminal_progress

    config = load_storage_config(config_path)
    return build(config, terminal_progress("trends"), rebuild=rebuild).summary()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Storage administration for secure-monitor.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init-db", help="create the MySQL tables named in a collector configuration")
    init.add_argument("--config", type=Path, required=True, help="the collector's JSON configuration")
    trends = commands.add_parser("trends", help="build the missing trend rollups of stored samples (resumable)")
    trends.add_argument("--config", type=Path, required=True, help="the collector's JSON configuration")
    trends.add_argument("--rebuild", action="store_true",
                        help="MySQL: start again from the first stored sample instead of where the last run stopped")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "trends":
            print(_trends(args.config, args.rebuild))
        else:
            print(_init_db(args.config))
    except StorageUnavailable as exc:
        print(f"{PROG} {args.command}: {_one_line(exc, args.command)}", file=sys.stderr)
        return 1
    except StorageConfigError as exc:
        code = 1 if "in use by another process" in str(exc) else 2
        print(f"{PROG} {args.command}: {_one_line(exc, args.command)}", file=sys.stderr)
        return code
    except StorageError as exc:
        print(f"{PROG} {args.command}: {_one_line(exc, args.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted; run it again to go on", file=sys.stderr)
        return 130
    return 0


def _one_line(exc: BaseException, command: str = "init-db") -> str:
    """Each line of the message with its whitespace folded (a config error has one line per mistake)."""
    return f"\n{PROG} {command}: ".join(" ".join(line.split()) for line in str(exc).splitlines())


if __name__ == "__main__":
    sys.exit(main())
