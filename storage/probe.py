"""Can storage be reached and written, judged without writing, locking or creating anything?

For ``secure-collector --check``: beside a running collector it leaves that collector's lock and files
alone. The file backend: the nearest existing ancestor of ``json_file``'s directory (what ``FileStore``
would create the rest under) is a writable directory, and each file that already exists is a writable
regular file. MySQL: a connection as the collector makes it, ``SELECT 1``, closed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from storage.config import StorageConfig
from storage.errors import StorageConfigError, StorageUnavailable
from storage.file import sibling


def probe(config: StorageConfig) -> str:
    """What was reached (one line); raises StorageUnavailable or StorageConfigError saying why not."""
    if config.type == "mysql":
        return _probe_mysql(config)
    return _probe_files(config)


def _writable_directory(directory: Path, key: str) -> None:
    current = directory
    while not current.exists() and current.parent != current:
        current = current.parent
    if not current.is_dir():
        raise StorageUnavailable(f"{key}: {current} is not a directory (needed for {directory})")
    if not os.access(current, os.W_OK | os.X_OK):
        raise StorageUnavailable(f"{key}: {current} is not writable (needed for {directory})")


def _writable_file(path: Path, key: str) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageUnavailable(f"{key}: cannot read {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise StorageUnavailable(f"{key}: {path} is not a regular file")
    if not os.access(path, os.W_OK):
        raise StorageUnavailable(f"{key}: {path} is not writable")


def _probe_files(config: StorageConfig) -> str:
    json_file = config.json_file
    _writable_directory(json_file.parent, "storage.json_file")
    for path in (json_file, sibling(json_file, "alerts"), sibling(json_file, "status")):
        _writable_file(path, "storage.json_file")
    if config.metrics_file is not None:
        _writable_directory(config.metrics_file.parent, "storage.metrics_file")
        _writable_file(config.metrics_file, "storage.metrics_file")
    _writable_directory(config.audit_directory, "storage.audit_dir")
    return f"file storage writable at {json_file}"


def _probe_mysql(config: StorageConfig) -> str:
    import pymysql

    from storage.mysql_conn import connect_kwargs, probe_unix_socket, translate

    kwargs = connect_kwargs(config)  # StorageConfigError: TLS required and not configured, password file
    where = config.mysql_socket if config.mysql_socket is not None else f"{config.mysql_host}:{config.mysql_port}"
    try:
        if config.mysql_socket is not None:
            probe_unix_socket(str(config.mysql_socket))
        connection = pymysql.connect(**kwargs)
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        finally:
            connection.close()
    except StorageConfigError:
        raise
    except (pymysql.err.MySQLError, OSError) as exc:
        raise translate(exc, f"at {where}") from exc
    return f"MySQL reachable at {where} (database {config.mysql_database})"
