"""How the MySQL backend connects: credentials, TLS, timeouts, and what pymysql errors mean to us.

Security decisions, each once, here:

* The password comes from exactly one of ``mysql_password``, ``mysql_password_file`` (a file that
  group and others cannot read) or ``mysql_password_env`` (an environment variable), or none (socket
  authentication). It never appears in a message or a log line.
* ``mysql_ssl`` makes TLS mandatory and verified: our CA only (no system store), the server's name
  checked against ``mysql_host``, TLS 1.2 at least; pymysql then refuses a server without TLS.
  Without ``mysql_ssl`` the connection must stay on this host (a unix socket or a loopback address):
  the network may be untrusted, so credentials and metrics never cross it in clear.
* Every connection has connect, read and write timeouts, strict SQL mode and UTC.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import stat
from typing import Any

import pymysql

from storage.config import StorageConfig
from storage.errors import StorageConfigError, StorageError, StorageUnavailable

CONNECT_TIMEOUT = 5.0
"""Seconds to establish a connection (TCP, TLS and authentication)."""
IO_TIMEOUT = 30.0
"""Seconds any one read or write on an established connection may take."""

_INIT_COMMAND = "SET SESSION sql_mode='STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION', time_zone='+00:00'"

# Server answers that no retry will fix: the configuration must change.
_CONFIG_ERRNOS = {
    1044: "access denied to the database (storage.mysql_database, grants)",
    1045: "access denied (storage.mysql_user and its password)",
    1049: "unknown database (storage.mysql_database)",
    1698: "access denied (storage.mysql_user and its password)",
    2026: "TLS connection failed (storage.mysql_ssl)",
}
_REFUSED_ERRNOS = frozenset({3819, 4025})
"""CHECK constraint failed (MySQL 3819, MariaDB 4025): PyMySQL raises these as OperationalError (codes it does not
know), but the server refused the row, not the connection: retrying the same batch fails the same way."""


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_password(config: StorageConfig) -> str | None:
    """The password from the one source configured, or None. Raises StorageConfigError."""
    sources = [
        name
        for name, value in (
            ("mysql_password", config.mysql_password),
            ("mysql_password_file", config.mysql_password_file),
            ("mysql_password_env", config.mysql_password_env),
        )
        if value is not None
    ]
    if len(sources) > 1:
        raise StorageConfigError(f"storage: set only one of {', '.join(sources)}")
    if config.mysql_password_file is not None:
        return _password_file(config)
    if config.mysql_password_env is not None:
        value = os.environ.get(config.mysql_password_env)
        if value is None:
            raise StorageConfigError(
                f"storage.mysql_password_env: environment variable {config.mysql_password_env} is not set"
            )
        return value
    return config.mysql_password


def _password_file(config: StorageConfig) -> str:
    path = config.mysql_password_file
    if path is None:  # pragma: no cover - checked by the caller
        raise StorageConfigError("storage.mysql_password_file: not set")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as exc:
        raise StorageConfigError(f"storage.mysql_password_file: cannot open {path}: {exc.strerror}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StorageConfigError(f"storage.mysql_password_file: {path} is not a regular file")
        if info.st_mode & 0o077:
            raise StorageConfigError(
                f"storage.mysql_password_file: {path} is readable by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); chmod 600 it"
            )
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(4097)
    finally:
        os.close(fd)
    if len(raw) > 4096:
        raise StorageConfigError(f"storage.mysql_password_file: {path} is too long for a password")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StorageConfigError(f"storage.mysql_password_file: {path} is not UTF-8 text") from exc
    return text.removesuffix("\n").removesuffix("\r")


def tls_context(config: StorageConfig) -> ssl.SSLContext | None:
    """The verifying client context for ``mysql_ssl``, or None when TLS is not configured."""
    options = config.mysql_ssl
    if options is None:
        return None
    if (options.cert is None) != (options.key is None):
        raise StorageConfigError("storage.mysql_ssl: give both cert and key, or neither")
    try:
        # cafile given: only our CA is trusted, the system store is not loaded.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(options.ca))
        if options.cert is not None and options.key is not None:
            context.load_cert_chain(str(options.cert), str(options.key))
    except (OSError, ssl.SSLError) as exc:
        bad = getattr(exc, "filename", None) or options.ca
        raise StorageConfigError(f"storage.mysql_ssl: cannot load {bad}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # older TLS is broken
    context.check_hostname = True  # the certificate must name mysql_host
    context.verify_mode = ssl.CERT_REQUIRED  # no unverified mode exists
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME
    return context


def connect_kwargs(config: StorageConfig) -> dict[str, Any]:
    """The keyword arguments of ``pymysql.connect`` for ``config``. Raises StorageConfigError."""
    context = tls_context(config)
    if context is None and config.mysql_socket is None and not _loopback(config.mysql_host):
        raise StorageConfigError(
            f"storage.mysql_ssl: required to reach {config.mysql_host} over the network "
            "(or use mysql_socket / a loopback mysql_host)"
        )
    kwargs: dict[str, Any] = {
        "host": config.mysql_host,
        "port": config.mysql_port,
        "user": config.mysql_user,
        "password": read_password(config) or "",
        "database": config.mysql_database,
        "charset": "utf8mb4",
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "read_timeout": IO_TIMEOUT,
        "write_timeout": IO_TIMEOUT,
        "init_command": _INIT_COMMAND,
        "local_infile": False,
    }
    if config.mysql_socket is not None:
        kwargs["unix_socket"] = str(config.mysql_socket)
    if context is None:
        kwargs["ssl_disabled"] = True
    else:
        kwargs["ssl"] = context
    return kwargs


def probe_unix_socket(path: str) -> None:
    """Connect and close, raising OSError when nothing listens at ``path``.

    pymysql leaks its socket when connecting to a Unix socket fails; probing first with a socket we
    close ourselves keeps a store that retries against a stopped server from leaking descriptors.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CONNECT_TIMEOUT)
        probe.connect(path)


def translate(exc: BaseException, where: str) -> StorageError:
    """Our exception for a pymysql (or socket) error; the caller raises it ``from exc``.

    Lost or refused connections are :class:`StorageUnavailable` (spool, retry); answers that only a
    configuration change fixes (bad credentials, unknown database) are :class:`StorageConfigError`;
    a statement the server refuses is a plain :class:`StorageError` (a bug: retrying cannot help).
    """
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    text = " ".join(str(exc.args[1] if len(exc.args) > 1 else exc).split())
    if code in _CONFIG_ERRNOS:
        return StorageConfigError(f"mysql {where}: {_CONFIG_ERRNOS[code]}: {text}")
    unavailable = isinstance(exc, pymysql.err.OperationalError | pymysql.err.InterfaceError | OSError)
    if unavailable and code not in _REFUSED_ERRNOS:
        return StorageUnavailable(f"mysql {where}: {text or type(exc).__name__}")
    # a refused statement (schema or data): retrying the same batch would fail the same way
    return StorageError(f"mysql {where}: error {code}: {text}")
