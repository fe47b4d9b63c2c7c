"""The MySQL / MariaDB backend, on pymysql.

Tables (``storage/schema.sql``, shipped with the package): ``metrics`` (one row per sample, primary key
(agent, timestamp), details as JSON), ``alerts`` (key agent, timestamp, metric, state), ``agent_status``
(key agent, timestamp) and ``schema_version``. A writable store creates them on its first connection
when they are missing; ``python -m storage init-db --config FILE`` does it explicitly.

Writes are one transaction per :meth:`MySQLStore.write` (one per polling sweep), multi-row ``INSERT``s of
``batch_size`` rows (literals built column by column, :mod:`storage.sqlvalues`, rather than by
pymysql's per-value ``executemany``), ``ON DUPLICATE KEY UPDATE`` a no-op: a replayed record is stored
once, and the first copy wins. A connection lost while idle (server restart) is re-opened and
the call retried once; otherwise the call raises :class:`StorageUnavailable` and the next call connects
again. Connection security (credentials, TLS, timeouts) is :mod:`storage.mysql_conn`'s.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import math
import operator
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import pandas as pd
import pymysql
import pymysql.converters
import pymysql.cursors
from pymysql.constants import SERVER_STATUS

from storage import frames, mysqltrends
from storage.auditcopy import placement
from storage.base import Batch
from storage.catalog import METRICS, Metric
from storage.config import StorageConfig
from storage.errors import StorageConfigError, StorageError
from storage.frames import FrameSpec
from storage.models import AuditEntry, AuditTail, Sample
from storage.mysql_conn import connect_kwargs, probe_unix_socket, translate
from storage.retention import Cutoffs
from storage.sqlvalues import SqlKind, insert_statements
from storage.trends import HOURLY, LEVELS, Level, decode, touched

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
_LOST = {2006, 2013, 2055}  # server gone away, lost connection during query, lost connection at handshake
_NO_TABLE = 1146
_T = TypeVar("_T")


class _Insert(NamedTuple):
    """The parts of one table's multi-row insert: ``head`` rows ``tail``, and each column's SQL kind."""

    head: str
    tail: str
    kinds: tuple[SqlKind, ...]


def _insert(table: str, spec: FrameSpec, **extra: SqlKind) -> _Insert:
    kinds = {column: _SQL_KIND[spec.kinds[column]] for column in spec.columns}
    kinds.update(extra)
    names = ", ".join(f"`{c}`" for c in kinds)
    first = spec.columns[0]
    # a replay meets the primary key and changes nothing: the first copy wins, strict mode stays on
    head = f"INSERT INTO `{table}` ({names}) VALUES "  # noqa: S608 - fixed identifiers; values from sqlvalues
    return _Insert(head, f" ON DUPLICATE KEY UPDATE `{first}` = `{first}`", tuple(kinds.values()))


def _escaper(conn: pymysql.connections.Connection[Any]) -> Callable[[str], str]:
    """How string literals are escaped on ``conn`` (what pymysql itself does for a parameter)."""
    status: int = getattr(conn, "server_status", 0) or 0  # not in the type stubs
    if status & SERVER_STATUS.SERVER_STATUS_NO_BACKSLASH_ESCAPES:
        return lambda text: text.replace("'", "''")
    return pymysql.converters.escape_string


def _select(table: str, columns: Sequence[str]) -> str:
    names = ", ".join(f"`{c}`" for c in columns)
    return f"SELECT {names} FROM `{table}` WHERE `timestamp` BETWEEN %s AND %s"  # noqa: S608 - fixed identifiers


_SQL_KIND: dict[str, SqlKind] = {"float": "float", "int": "int", "str": "str", "opt_str": "opt_str"}
_OPTIONAL_INTS: dict[str, SqlKind] = {m.name: "opt_int" for m in METRICS if m.integer and m.nullable}
_SAMPLE_INSERT = _insert(
    "metrics",
    frames.SAMPLES,
    **_OPTIONAL_INTS,
    details="opt_str",
)
_ALERT_INSERT = _insert("alerts", frames.ALERTS)
_STATUS_INSERT = _insert("agent_status", frames.STATUSES)
_AUDIT_COLUMNS = ("agent", "copy_id", "seq", "hash", "prev", "time", "line", "copy_started")
_AUDIT_INSERT = _Insert(
    "INSERT INTO `audit_records` (" + ", ".join(f"`{c}`" for c in _AUDIT_COLUMNS) + ") VALUES ",  # noqa: S608 - fixed
    " ON DUPLICATE KEY UPDATE `agent` = `agent`",
    ("str", "int", "int", "str", "str", "str", "str", "float"),
)
_AUDIT_TAILS = (
    "SELECT r.`agent`, r.`copy_id`, r.`hash`, r.`seq`, r.`time` FROM `audit_records` r JOIN "
    "(SELECT `agent`, MAX(`id`) AS `id` FROM `audit_records` WHERE `agent` IN ({}) GROUP BY `agent`) m "
    "ON r.`id` = m.`id`"
)
_AUDIT_PAGE = (
    "SELECT `id`, `line` FROM `audit_records` WHERE `agent` = %s AND `copy_id` = %s AND `id` > %s "
    "ORDER BY `id` LIMIT %s"
)
_AUDIT_PAGE_ROWS = 10_000
_COLLECTORS_TABLE = (
    "CREATE TABLE IF NOT EXISTS `collectors` (`member` VARCHAR(191) NOT NULL PRIMARY KEY, "
    "`heartbeat` DOUBLE NOT NULL, `lease` DOUBLE NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
)
_CURSORS_TABLE = (
    "CREATE TABLE IF NOT EXISTS `backfill_cursors` (`agent` VARCHAR(64) NOT NULL PRIMARY KEY, "
    "`seq` BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
)
_PROGRESS_TABLE = (
    "CREATE TABLE IF NOT EXISTS `trends_progress` (`name` VARCHAR(32) NOT NULL PRIMARY KEY, "
    "`built_until` DOUBLE NOT NULL) ENGINE=InnoDB"
)
_PURGEABLE = frozenset({"metrics", "alerts", "agent_status", "trends_5m", "trends_1h", "trends_6h"})
_sample_values = operator.attrgetter(*frames.SAMPLES.columns)
_alert_values = operator.attrgetter(*frames.ALERTS.columns)
_status_values = operator.attrgetter(*frames.STATUSES.columns)


def sample_params(sample: Sample) -> tuple[Any, ...]:
    """The ``metrics`` row of ``sample``: the frame columns, then details as JSON (or NULL)."""
    details = None
    if sample.findings or sample.extra:
        details = Sample.__pydantic_serializer__.to_json(sample, include={"findings", "extra"}).decode()
    return (*_sample_values(sample), details)


_METRIC_COLUMNS_MARK = "-- METRIC COLUMNS:"
_TREND_TABLES_MARK = "-- TREND TABLES:"


def column_definition(metric: Metric) -> str:
    """The ``metrics`` table's column of ``metric`` (storage.catalog)."""
    kind = "DOUBLE"
    if metric.integer:
        kind = "BIGINT UNSIGNED" if metric.ge is not None and metric.ge >= 0 else "BIGINT"
    null = "NULL" if metric.nullable else "NOT NULL"
    default = "" if metric.default is None else f" DEFAULT {metric.default:g}"
    return f"`{metric.name}` {kind} {null}{default}"


def schema_statements() -> list[str]:
    """The statements of ``schema.sql`` with the metric columns of storage.catalog, comments removed."""
    text = importlib.resources.files("storage").joinpath("schema.sql").read_text(encoding="utf-8")
    lines: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith(_METRIC_COLUMNS_MARK):
            lines.extend(f"    {column_definition(metric)}," for metric in METRICS)
        elif line.lstrip().startswith(_TREND_TABLES_MARK):
            lines.extend(f"{mysqltrends.create_statement(level)};" for level in mysqltrends.TABLE_LEVELS)
        elif not line.lstrip().startswith("--"):
            lines.append(line)
    body = "\n".join(lines)
    return [statement.strip() for statement in body.split(";\n") if statement.strip().rstrip(";")]


def _bound(value: float) -> float:
    """A finite stand-in for an infinite query bound (MySQL has no infinities)."""
    return math.copysign(1.7976931348623157e308, value) if math.isinf(value) else value


def _chunks(rows: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


class MySQLStore:
    """A :class:`storage.base.Store` on one pymysql connection, serialised by a lock."""

    def __init__(self, config: StorageConfig, *, readonly: bool = False) -> None:
        self._kwargs = connect_kwargs(config)  # reads the password and TLS files now: fail at start-up
        where = str(config.mysql_socket) if config.mysql_socket else f"{config.mysql_host}:{config.mysql_port}"
        self.where = f"{config.mysql_user}@{where}/{config.mysql_database}"
        self.batch_size = config.batch_size
        self.readonly = readonly
        self._lock = threading.Lock()
        self._conn: pymysql.connections.Connection[pymysql.cursors.Cursor] | None = None
        self._schema_checked = readonly  # readers never run DDL
        self._closed = False
        self._audit_tails: dict[str, tuple[int, AuditTail] | None] = {}  # agent -> (copy_id, last record)

    @classmethod
    def from_config(cls, config: StorageConfig, *, readonly: bool = False) -> MySQLStore:
        return cls(config, readonly=readonly)

    # -- connection ----------------------------------------------------------------------------------

    def _connect(self) -> pymysql.connections.Connection[pymysql.cursors.Cursor]:
        if self._conn is not None:
            return self._conn
        if self._closed:
            raise StorageError(f"mysql {self.where}: store is closed")
        try:
            if "unix_socket" in self._kwargs:
                probe_unix_socket(self._kwargs["unix_socket"])
            conn = pymysql.connect(**self._kwargs)
        except (pymysql.MySQLError, OSError) as exc:
            raise translate(exc, f"connect to {self.where}") from exc
        self._conn = conn
        log.info("connected to mysql %s", self.where)
        if not self._schema_checked:
            self._ensure_schema(conn)
            self._schema_checked = True
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except (pymysql.MySQLError, OSError):
                log.debug("closing a broken connection to %s failed", self.where)

    def _run(
        self,
        what: str,
        work: Callable[[pymysql.connections.Connection[Any]], _T],
        on_missing_table: Callable[[], _T] | None = None,
    ) -> _T:
        """``work`` on a live connection; one retry when a reused connection turns out to be dead.

        ``on_missing_table`` answers instead when the server says a table does not exist.
        """
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                try:
                    return work(self._connect())
                except (pymysql.MySQLError, OSError) as exc:
                    if on_missing_table is not None and exc.args[:1] == (_NO_TABLE,):
                        log.debug("%s on %s: %s", what, self.where, exc)
                        return on_missing_table()
                    self._drop()
                    code = exc.args[0] if exc.args else None
                    lost = code in _LOST or isinstance(exc, pymysql.err.InterfaceError | ConnectionError)
                    if attempt == 1 and reused and lost:
                        log.info("connection to %s was lost (%s); reconnecting", self.where, code)
                        continue
                    raise translate(exc, f"{what} on {self.where}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _ensure_schema(self, conn: pymysql.connections.Connection[Any]) -> None:
        version = self._version(conn)
        if version is not None and version > SCHEMA_VERSION:
            raise StorageConfigError(
                f"mysql {self.where}: database schema version {version} is newer than this program's "
                f"({SCHEMA_VERSION})"
            )
        if version == 3:  # before the schema says 4, so that a start interrupted after it still fills them
            self._mark_six_hours(conn)
        if version is None or version < SCHEMA_VERSION:
            self._apply_schema(conn)  # every statement is idempotent: an older schema is brought up to date
        if version is not None:
            self._nullable_ssh_failures(conn)
            self._add_metric_columns(conn)
            self._fill_six_hours(conn)

    @staticmethod
    def _mark_six_hours(conn: pymysql.connections.Connection[Any]) -> None:
        """A database made before ``trends_6h``: the hourly rollups it holds are to be merged into it, from
        the oldest on (a row ``six_hours`` in ``trends_progress``, advanced a month at a time)."""
        with conn.cursor() as cursor:
            cursor.execute(_PROGRESS_TABLE)
            cursor.execute("INSERT IGNORE INTO `trends_progress` (`name`, `built_until`) "
                           "SELECT 'six_hours', COALESCE(MIN(`bucket`), 0) FROM `trends_1h`")
        conn.commit()

    def _fill_six_hours(self, conn: pymysql.connections.Connection[Any]) -> None:
        """Merge the hourly rollups of a database upgraded to ``trends_6h`` into it, a month per transaction
        (a second or two per month of a hundred agents), resuming where an interrupted start stopped."""
        with conn.cursor() as cursor:
            try:
                cursor.execute("SELECT `built_until` FROM `trends_progress` WHERE `name` = 'six_hours'")
            except pymysql.err.ProgrammingError as exc:
                if exc.args[:1] == (_NO_TABLE,):
                    return
                raise
            row = cursor.fetchone()
            if row is None:
                return
            cursor.execute("SELECT MAX(`bucket`) FROM `trends_1h`")
            newest = cursor.fetchone()
        low = float(row[0])
        last = float(newest[0]) + HOURLY.width if newest and newest[0] is not None else low
        started = time.monotonic()
        while low < last:
            high = min(low + 30 * 86_400.0, last)
            with conn.cursor() as cursor:
                for sql, params in mysqltrends.six_hours_statements(low, high):
                    cursor.execute(sql, params)
                cursor.execute("UPDATE `trends_progress` SET `built_until` = %s WHERE `name` = 'six_hours'", (high,))
            conn.commit()
            low = high
        with conn.cursor() as cursor:
            cursor.execute("DELETE FROM `trends_progress` WHERE `name` = 'six_hours'")
        conn.commit()
        log.info("6-hour trends merged from the hourly ones in %s (%.1f s)", self.where, time.monotonic() - started)

    def _add_metric_columns(self, conn: pymysql.connections.Connection[Any]) -> None:
        """A table made before a metric was declared gets its column (older rows: NULL, or its default)."""
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME = 'metrics'"
            )
            present = {str(row[0]) for row in cursor.fetchall()}
            for metric in METRICS:
                if metric.name not in present:
                    cursor.execute(f"ALTER TABLE `metrics` ADD COLUMN {column_definition(metric)}")
                    log.info("metrics.%s added to %s (a newly declared metric)", metric.name, self.where)
            for level in mysqltrends.TABLE_LEVELS:
                name = mysqltrends.table(level)
                cursor.execute(
                    "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                    "AND TABLE_NAME = %s", (name,)
                )
                present = {str(row[0]) for row in cursor.fetchall()}
                missing = [m for m in METRICS if m.name not in present]
                if missing:
                    added = ", ".join(f"ADD COLUMN {c}" for m in missing for c in mysqltrends.metric_columns(m))
                    cursor.execute(f"ALTER TABLE `{name}` {added}")
                    log.info("%s: trend columns of %s added", name, ", ".join(m.name for m in missing))

    def _nullable_ssh_failures(self, conn: pymysql.connections.Connection[Any]) -> None:
        """Tables made before ``ssh_failures`` could be null (not monitored) get the column relaxed, once."""
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT IS_NULLABLE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                "AND TABLE_NAME = 'metrics' AND COLUMN_NAME = 'ssh_failures'"
            )
            row = cursor.fetchone()
            if row is not None and row[0] == "NO":
                cursor.execute("ALTER TABLE `metrics` MODIFY `ssh_failures` BIGINT UNSIGNED NULL DEFAULT 0")
                log.info("metrics.ssh_failures in %s may now be null (not monitored)", self.where)

    @staticmethod
    def _version(conn: pymysql.connections.Connection[Any]) -> int | None:
        with conn.cursor() as cursor:
            try:
                cursor.execute("SELECT MAX(`version`) FROM `schema_version`")
            except pymysql.err.ProgrammingError as exc:
                if exc.args[:1] == (_NO_TABLE,):
                    return None
                raise
            row = cursor.fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _apply_schema(self, conn: pymysql.connections.Connection[Any]) -> None:
        with conn.cursor() as cursor:
            for statement in schema_statements():
                cursor.execute(statement)
        log.info("created the storage schema (version %d) in %s", SCHEMA_VERSION, self.where)

    def init_schema(self) -> int:
        """Create the tables when missing (a writable store also does so on first use); the version."""
        if self.readonly:
            raise StorageConfigError(f"mysql {self.where}: opened read-only")

        def work(conn: pymysql.connections.Connection[Any]) -> int:
            self._ensure_schema(conn)
            version = self._version(conn)
            return SCHEMA_VERSION if version is None else version

        return self._run("init-db", work)

    # -- writing -------------------------------------------------------------------------------------

    def write(self, batch: Batch) -> None:
        """Store ``batch`` in one transaction; replays are no-ops.

        Raises StorageUnavailable when the server is down (spool and retry), StorageConfigError when it
        refuses the credentials or database, StorageError when it refuses the data (a bug: do not retry).
        """
        if self.readonly:
            raise StorageConfigError(f"mysql {self.where}: opened read-only")
        if not batch:
            return
        try:
            work_items = [
                (_SAMPLE_INSERT, [sample_params(s) for s in batch.samples]),
                (_ALERT_INSERT, [_alert_values(a) for a in batch.alerts]),
                (_STATUS_INSERT, [_status_values(s) for s in batch.statuses]),
            ]
        except ValueError as exc:  # details pydantic cannot put into JSON: retrying cannot help
            raise StorageError(f"mysql write on {self.where}: cannot serialise details: {exc}") from exc
        # every 5-minute and hourly bucket the new samples reach is recomputed from its rows, in the same transaction
        trend_statements = mysqltrends.refresh_statements(
            touched([s.agent for s in batch.samples], [s.timestamp for s in batch.samples], LEVELS[0].width)
        )

        def work(conn: pymysql.connections.Connection[Any]) -> None:
            escape = _escaper(conn)
            try:
                statements = [
                    statement
                    for insert, rows in work_items
                    for chunk in _chunks(rows, self.batch_size)
                    for statement in insert_statements(insert.head, insert.tail, chunk, insert.kinds, escape)
                ]
            except ValueError as exc:
                raise StorageError(f"mysql write on {self.where}: {exc}") from exc
            conn.begin()
            try:
                with conn.cursor() as cursor:
                    for statement in statements:
                        cursor.execute(statement)
                    for sql, params in trend_statements:
                        cursor.execute(sql, params)
                    for statement in self._audit_statements(cursor, batch.audit, escape):
                        cursor.execute(statement)
                conn.commit()
            except BaseException:
                self._audit_tails.clear()  # what the server holds is the truth: read it again
                raise

        started = time.perf_counter()
        self._run("write", work)
        log.debug(
            "stored %d samples, %d alerts, %d statuses in %.1f ms",
            len(batch.samples), len(batch.alerts), len(batch.statuses), (time.perf_counter() - started) * 1000,
        )

    def _audit_statements(
        self, cursor: pymysql.cursors.Cursor, entries: Sequence[AuditEntry], escape: Callable[[str], str]
    ) -> list[str]:
        """The inserts that apply ``entries`` to the central copies (:func:`storage.auditcopy.placement`)."""
        if not entries:
            return []
        missing = sorted({e.agent for e in entries if e.agent not in self._audit_tails})
        if missing:
            self._audit_tails.update(self._load_tails(cursor, missing))
        rows: list[tuple[Any, ...]] = []
        for entry in entries:
            current = self._audit_tails.get(entry.agent)
            where = placement(current[1].hash if current is not None else None, entry)
            if where == "skip":
                continue
            copy_id = current[0] if current is not None else 0
            started = None
            if where == "new_copy":
                copy_id, started = (copy_id + 1 if current is not None else 0), entry.broke_at
                if current is not None:
                    log.warning("audit copy %d of %s closed after a chain break", copy_id - 1, entry.agent)
            rows.append((entry.agent, copy_id, entry.seq, entry.hash, entry.prev, entry.time, entry.line, started))
            self._audit_tails[entry.agent] = (copy_id, AuditTail(entry.hash, entry.seq, entry.time))
        try:
            return insert_statements(_AUDIT_INSERT.head, _AUDIT_INSERT.tail, rows, _AUDIT_INSERT.kinds, escape)
        except ValueError as exc:
            raise StorageError(f"mysql write on {self.where}: {exc}") from exc

    @staticmethod
    def _load_tails(cursor: pymysql.cursors.Cursor, agents: Sequence[str]) -> dict[str, tuple[int, AuditTail] | None]:
        found: dict[str, tuple[int, AuditTail] | None] = dict.fromkeys(agents)
        cursor.execute(_AUDIT_TAILS.format(", ".join(["%s"] * len(agents))), tuple(agents))
        for agent, copy_id, digest, seq, when in cursor.fetchall():
            found[str(agent)] = (int(copy_id), AuditTail(str(digest), int(seq), str(when)))
        return found

    # -- reading -------------------------------------------------------------------------------------

    def audit_tails(self, agents: Sequence[str]) -> dict[str, AuditTail]:
        """The last record of each agent's current central audit copy (agents without one are left out)."""
        if not agents:
            return {}

        def work(conn: pymysql.connections.Connection[Any]) -> dict[str, tuple[int, AuditTail] | None]:
            with conn.cursor() as cursor:
                return self._load_tails(cursor, list(agents))

        def nothing() -> dict[str, tuple[int, AuditTail] | None]:
            return {}

        tails = self._run("query audit_records", work, on_missing_table=nothing)
        for agent in agents:  # another collector may have written since: the next write reads them again
            self._audit_tails.pop(agent, None)
        return {agent: tail[1] for agent, tail in tails.items() if tail is not None}

    def read_audit(self, agent: str) -> Iterator[str]:
        """The lines of ``agent``'s current central audit copy (its highest ``copy_id``), oldest first."""
        copies = self._run(
            "query audit_records",
            lambda conn: self._fetch(conn, "SELECT MAX(`copy_id`) FROM `audit_records` WHERE `agent` = %s", (agent,)),
            on_missing_table=lambda: (),
        )
        if not copies or copies[0][0] is None:
            return
        copy_id, last = int(copies[0][0]), 0
        while True:
            page = functools.partial(self._fetch, sql=_AUDIT_PAGE, params=(agent, copy_id, last, _AUDIT_PAGE_ROWS))
            rows = self._run("query audit_records", page)
            for row_id, line in rows:
                yield str(line)
                last = int(row_id)
            if len(rows) < _AUDIT_PAGE_ROWS:
                return

    @staticmethod
    def _fetch(conn: pymysql.connections.Connection[Any], sql: str, params: tuple[Any, ...]) -> tuple[Any, ...]:
        with conn.cursor() as cursor:
            cursor.execute(sql, params)
            return tuple(cursor.fetchall())

    # -- coordinating collectors (--shard auto) ---------------------------------------------------

    def heartbeat(self, member: str, lease: float) -> list[str]:
        """Renew ``member``'s lease (the server's clock, so collectors' clocks need not agree); the members
        whose lease has not run out, sorted."""

        def work(conn: pymysql.connections.Connection[Any]) -> list[str]:
            with conn.cursor() as cursor:
                cursor.execute(_COLLECTORS_TABLE)
                cursor.execute(
                    "INSERT INTO `collectors` (`member`, `heartbeat`, `lease`) VALUES (%s, UNIX_TIMESTAMP(NOW(6)), %s)"
                    " ON DUPLICATE KEY UPDATE `heartbeat` = VALUES(`heartbeat`), `lease` = VALUES(`lease`)",
                    (member, lease),
                )
                cursor.execute(
                    "SELECT `member` FROM `collectors` WHERE `heartbeat` + `lease` >= UNIX_TIMESTAMP(NOW(6)) "
                    "ORDER BY `member`"
                )
                members = [str(row[0]) for row in cursor.fetchall()]
            conn.commit()
            return members

        return self._run("heartbeat", work)

    def leave(self, member: str) -> None:
        """``member`` stops: its agents go to the others at their next heartbeat, not after its lease."""

        def work(conn: pymysql.connections.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.execute("DELETE FROM `collectors` WHERE `member` = %s", (member,))
            conn.commit()

        self._run("leave", work, on_missing_table=lambda: None)

    def backfill_cursors(self, agents: Sequence[str]) -> dict[str, int]:
        """Where each agent's back-fill stands, as whichever collector polled it last saved it."""
        if not agents:
            return {}

        def work(conn: pymysql.connections.Connection[Any]) -> dict[str, int]:
            with conn.cursor() as cursor:
                marks = ", ".join(["%s"] * len(agents))
                cursor.execute(
                    f"SELECT `agent`, `seq` FROM `backfill_cursors` WHERE `agent` IN ({marks})",  # noqa: S608 - marks
                    tuple(agents),
                )
                return {str(agent): int(seq) for agent, seq in cursor.fetchall()}

        return self._run("backfill_cursors", work, on_missing_table=dict)

    def save_backfill_cursors(self, cursors: Mapping[str, int]) -> None:
        """Move cursors forward (never back: a collector that lost an agent cannot undo its new owner's)."""
        if not cursors:
            return

        def work(conn: pymysql.connections.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.execute(_CURSORS_TABLE)
                cursor.executemany(
                    "INSERT INTO `backfill_cursors` (`agent`, `seq`) VALUES (%s, %s)"
                    " ON DUPLICATE KEY UPDATE `seq` = GREATEST(`seq`, VALUES(`seq`))",
                    list(cursors.items()),
                )
            conn.commit()

        self._run("save_backfill_cursors", work)

    def query_samples(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        return self._query("metrics", frames.SAMPLES, start, end, agent)

    def query_alerts(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        return self._query("alerts", frames.ALERTS, start, end, agent)

    def latest_statuses(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        """Per agent, its newest state in ``[start, end]`` and its newest ``up`` one: what the dashboard's table
        shows of a month, without reading the month's millions of states (the primary key finds each)."""
        if math.isnan(start) or math.isnan(end):
            return frames.empty(frames.STATUSES)
        names = ", ".join(f"s.`{c}`" for c in frames.STATUSES.columns)
        only = " AND `agent` = %s" if agent is not None else ""
        newest = (
            f"SELECT {names} FROM `agent_status` s JOIN (SELECT `agent`, MAX(`timestamp`) AS `t` FROM `agent_status` "  # noqa: S608
            f"WHERE `timestamp` BETWEEN %s AND %s{only}{{up}} GROUP BY `agent`) m "
            "ON s.`agent` = m.`agent` AND s.`timestamp` = m.`t`"
        )
        sql = newest.format(up="") + " UNION " + newest.format(up=" AND `state` = 'up'")
        one: tuple[Any, ...] = (_bound(start), _bound(end)) + ((agent,) if agent is not None else ())
        rows = self._run("query agent_status", lambda conn: self._fetch(conn, sql, one + one),
                         on_missing_table=lambda: ())
        return frames.finish(frames.from_rows(rows, frames.STATUSES), frames.STATUSES, start, end, agent)

    def query_statuses(self, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        return self._query("agent_status", frames.STATUSES, start, end, agent)

    # -- trends and retention ------------------------------------------------------------------------

    def query_trends(
        self, level: Level, start: float, end: float, agent: str | None = None, step: float | None = None
    ) -> pd.DataFrame:
        """Decoded rollups of ``level`` whose bucket overlaps ``[start, end]``, sorted by bucket; with ``step``,
        those starting in ``[start, end)`` merged on the server into bins of ``step`` (a year of a hundred
        agents comes as 40,000 rows instead of 876,000)."""
        if math.isnan(start) or math.isnan(end):
            return decode(pd.DataFrame())
        if step is not None:
            sql = mysqltrends.packed_steps_statement(level, int(step), agent)
            params: tuple[Any, ...] = (_bound(start), _bound(end))
        else:
            sql = mysqltrends.select_statement(level, agent)
            params = (_bound(start) - level.width, _bound(end))
        if agent is not None:
            params += (agent,)
        rows = self._run(f"query {mysqltrends.table(level)}", lambda conn: self._fetch(conn, sql, params),
                         on_missing_table=lambda: ())
        frame = mysqltrends.unpack(rows) if step is not None else pd.DataFrame(list(rows), columns=mysqltrends.names())
        return decode(frame).sort_values(["bucket", "agent"], kind="stable").reset_index(drop=True)

    def sample_span(self) -> tuple[float, float] | None:
        """The first and last sample time stored, or None when there is none."""
        rows = self._run("query metrics", lambda conn: self._fetch(
            conn, "SELECT MIN(`timestamp`), MAX(`timestamp`) FROM `metrics`", ()), on_missing_table=lambda: ())
        if not rows or rows[0][0] is None:
            return None
        return float(rows[0][0]), float(rows[0][1])

    def build_trends(self, start: float, end: float) -> None:
        """Recompute both trend levels over ``[start, end)`` (widened to whole hours) from the raw samples."""
        if self.readonly:
            raise StorageConfigError(f"mysql {self.where}: opened read-only")

        def work(conn: pymysql.connections.Connection[Any]) -> None:
            conn.begin()
            with conn.cursor() as cursor:
                for sql, params in mysqltrends.range_statements(start, end):
                    cursor.execute(sql, params)
            conn.commit()

        self._run("build trends", work)

    def trends_built_until(self) -> float | None:
        """Where ``python -m storage trends`` stopped (None: never ran)."""
        rows = self._run("query trends_progress", lambda conn: self._fetch(
            conn, "SELECT `built_until` FROM `trends_progress` WHERE `name` = 'backfill'", ()),
            on_missing_table=lambda: ())
        return float(rows[0][0]) if rows else None

    def save_trends_built_until(self, until: float) -> None:
        def work(conn: pymysql.connections.Connection[Any]) -> None:
            with conn.cursor() as cursor:
                cursor.execute(_PROGRESS_TABLE)
                cursor.execute(
                    "INSERT INTO `trends_progress` (`name`, `built_until`) VALUES ('backfill', %s)"
                    " ON DUPLICATE KEY UPDATE `built_until` = VALUES(`built_until`)", (until,))
            conn.commit()

        self._run("save trends_progress", work)

    def expire(self, cutoffs: Cutoffs, *, batch: int, go_on: Callable[[], bool]) -> dict[str, int]:
        """Retention (:mod:`storage.retention`): ``DELETE ... LIMIT batch`` per table until nothing is older."""
        if self.readonly:
            raise StorageConfigError(f"mysql {self.where}: opened read-only")
        plan = (("metrics", "samples", cutoffs.history), ("agent_status", "agent states", cutoffs.history),
                ("alerts", "alerts", cutoffs.history), ("trends_5m", "5-minute trends", cutoffs.five_minutes),
                ("trends_1h", "hourly trends", cutoffs.hourly), ("trends_6h", "6-hour trends", cutoffs.hourly))
        removed: dict[str, int] = {}
        for table, kind, before in plan:
            removed[kind] = 0
            while go_on():
                count = self.purge(table, before, batch)
                removed[kind] += count
                if count < batch:
                    break
        return removed

    def purge(self, table: str, before: float, limit: int) -> int:
        """Delete up to ``limit`` rows of ``table`` older than ``before`` (one short transaction); how many."""
        if table not in _PURGEABLE:
            raise ValueError(f"not a purgeable table: {table}")
        column = "bucket" if table.startswith("trends_") else "timestamp"

        def work(conn: pymysql.connections.Connection[Any]) -> int:
            with conn.cursor() as cursor:
                deleted = cursor.execute(
                    f"DELETE FROM `{table}` WHERE `{column}` < %s ORDER BY `{column}` LIMIT %s",  # noqa: S608 - fixed
                    (before, limit),
                )
            conn.commit()
            return int(deleted)

        return self._run(f"purge {table}", work, on_missing_table=lambda: 0)

    def _query(self, table: str, spec: FrameSpec, start: float, end: float, agent: str | None) -> pd.DataFrame:
        if math.isnan(start) or math.isnan(end):
            return frames.empty(spec)
        sql = _select(table, spec.columns)
        params: tuple[Any, ...] = (_bound(start), _bound(end))
        if agent is not None:
            sql += " AND `agent` = %s"
            params += (agent,)

        def work(conn: pymysql.connections.Connection[Any]) -> tuple[tuple[Any, ...], ...]:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return tuple(cursor.fetchall())

        def nothing() -> tuple[tuple[Any, ...], ...]:  # no table yet: nothing stored yet
            return ()

        rows = self._run(f"query {table}", work, on_missing_table=nothing)
        return frames.finish(frames.from_rows(rows, spec), spec, start, end, agent)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()
