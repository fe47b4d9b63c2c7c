"""A private MariaDB server for the tests (and ``bench/bench_storage.py``), under a temporary directory.

``MariaDBServer`` installs a data directory with ``mariadb-install-db``, runs ``mariadbd`` on a Unix
socket and a free loopback port, waits until it answers (polling, bounded), creates the database and a
``monitor`` user with a random password (plus ``monitor_tls``, which the server admits only over TLS
when the server has TLS material), and can be stopped and started again on the same port and data:
that is how tests restart the server under a running store.

Fixtures:
- ``mariadb``: the session's server, with TLS from the test PKI (``test_pki``), marked tests only.
  Fails (does not skip) when MariaDB is not installed: ``apt-get install -y mariadb-server``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
INSTALL_TIMEOUT = 180.0
_POLL = 0.05
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin")


class MariaDBError(RuntimeError):
    """The private server could not be installed, started or stopped."""


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SEARCH))
    if found is None:
        raise MariaDBError(f"{name} is not installed; install MariaDB first: apt-get install -y mariadb-server")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class ServerTLS:
    ca: Path
    cert: Path
    key: Path


class MariaDBServer:
    """One private ``mariadbd``: ``create()`` it, then ``stop()`` / ``start()`` at will."""

    database = "monitoring"
    user = "monitor"
    tls_user = "monitor_tls"
    host = "127.0.0.1"

    def __init__(self, base: Path, *, tls: ServerTLS | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.base = base
        self.datadir = base / "data"
        self.socket = base / "mysqld.sock"
        self.log = base / "error.log"
        self.tls = tls
        self.extra_args = extra_args
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, base: Path, *, tls: ServerTLS | None = None, extra_args: tuple[str, ...] = ()) -> MariaDBServer:
        """Install, start and bootstrap a server under ``base`` (a fresh, short path: sockets max 107 bytes)."""
        server = cls(base, tls=tls, extra_args=extra_args)
        server.install()
        server.start()
        server.bootstrap()
        return server

    # -- lifecycle -----------------------------------------------------------------------------------

    def install(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        argv = [
            _binary("mariadb-install-db"),
            "--no-defaults",
            "--user=root",
            f"--datadir={self.datadir}",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ]
        with open(self.base / "install.log", "wb") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT, check=False)
        if done.returncode != 0:
            tail = (self.base / "install.log").read_text(errors="replace")[-2000:]
            raise MariaDBError(f"mariadb-install-db failed ({done.returncode}):\n{tail}")

    def argv(self) -> list[str]:
        args = [
            _binary("mariadbd"),
            "--no-defaults",
            "--user=root",
            f"--datadir={self.datadir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--pid-file={self.base / 'mariadbd.pid'}",
            f"--log-error={self.log}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=128M",
        ]
        if self.tls is not None:
            args += [f"--ssl-ca={self.tls.ca}", f"--ssl-cert={self.tls.cert}", f"--ssl-key={self.tls.key}"]
        return args + list(self.extra_args)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start ``mariadbd`` and return once it accepts connections (polling until ``timeout``)."""
        if self.running:
            return
        self._proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise MariaDBError(f"mariadbd exited with {self._proc.returncode}:\n{self._log_tail()}")
            if self._accepting():
                try:
                    self.root_connection(connect_timeout=1).close()
                    return
                except pymysql.MySQLError as exc:
                    last = exc
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=_POLL)  # a bounded poll interval, not a synchronisation sleep
        self.stop()
        raise MariaDBError(f"mariadbd did not answer within {timeout:.0f} s ({last}):\n{self._log_tail()}")

    def _accepting(self) -> bool:
        """Whether something listens on the socket (probed with a socket we close: pymysql leaks its own)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1)
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM and wait (a clean InnoDB shutdown); SIGKILL if it hangs past ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would (InnoDB recovers on the next start)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no error log)"

    # -- accounts ------------------------------------------------------------------------------------

    def root_connection(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        options: dict[str, Any] = {"unix_socket": str(self.socket), "user": "root", "password": "",
                                   "connect_timeout": 5, "read_timeout": 30, "write_timeout": 30,
                                   "autocommit": True}
        options.update(kwargs)
        return pymysql.connect(**options)

    def bootstrap(self) -> None:
        """The database, ``monitor`` (socket and loopback) and ``monitor_tls`` (TLS only) users."""
        require = " REQUIRE SSL" if self.tls is not None else ""
        statements = [
            f"CREATE DATABASE IF NOT EXISTS `{self.database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
            f"CREATE USER IF NOT EXISTS '{self.user}'@'localhost' IDENTIFIED BY %(pw)s",
            f"CREATE USER IF NOT EXISTS '{self.user}'@'127.0.0.1' IDENTIFIED BY %(pw)s",
            f"CREATE USER IF NOT EXISTS '{self.tls_user}'@'127.0.0.1' IDENTIFIED BY %(pw)s{require}",
            f"GRANT ALL PRIVILEGES ON `{self.database}`.* TO '{self.user}'@'localhost'",
            f"GRANT ALL PRIVILEGES ON `{self.database}`.* TO '{self.user}'@'127.0.0.1'",
            f"GRANT ALL PRIVILEGES ON `{self.database}`.* TO '{self.tls_user}'@'127.0.0.1'",
        ]
        with self.root_connection() as conn, conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement, {"pw": self.password} if "%(pw)s" in statement else None)

    def reset_database(self) -> None:
        """Drop every table of the test database (each test starts from an empty schema)."""
        with self.root_connection(database=self.database) as conn, conn.cursor() as cursor:
            cursor.execute("SHOW TABLES")
            for (table,) in cursor.fetchall():
                cursor.execute(f"DROP TABLE IF EXISTS `{table}`")

    def storage_section(self, **overrides: Any) -> dict[str, Any]:
        """A collector ``storage`` section that reaches this server over loopback TCP."""
        section: dict[str, Any] = {
            "type": "mysql",
            "mysql_host": self.host,
            "mysql_port": self.port,
            "mysql_user": self.user,
            "mysql_password": self.password,
            "mysql_database": self.database,
        }
        section.update(overrides)
        return section


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory, test_pki: Any) -> Iterator[MariaDBServer]:
    """The session's private MariaDB (TLS-capable: certificate for 127.0.0.1 from the test PKI)."""
    cert, key = test_pki.issue("mariadb", "server", hosts=["127.0.0.1", "localhost"], folder="mariadb")
    tls = ServerTLS(ca=test_pki.ca, cert=cert, key=key)
    try:
        server = MariaDBServer.create(tmp_path_factory.mktemp("mariadb"), tls=tls)
    except MariaDBError as exc:
        pytest.fail(f"cannot run the test MariaDB: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
