"""MySQLStore against the session's real MariaDB (tests/plugins/mariadb.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pki import ca as ca_lib
from storage import AgentStatus, Alert, Batch, Sample
from storage.config import StorageConfig
from storage.errors import StorageConfigError, StorageUnavailable
from storage.factory import open_store
from storage.memory import MemoryStore
from storage.models import Finding
from storage.mysql import MySQLStore
from tests.plugins.mariadb import MariaDBServer, free_port
from tests.storage import strategies
from tests.storage.helpers import assert_same_frames

pytestmark = pytest.mark.mysql

T0 = 1_700_000_000.0
REPO = Path(__file__).resolve().parents[2]


def sample(agent: str = "web-1", ts: float = T0, **fields: Any) -> Sample:
    return Sample.model_validate({"agent": agent, "timestamp": ts, "cpu_usage": 10.0, **fields})


def config(server: MariaDBServer, **overrides: Any) -> StorageConfig:
    return StorageConfig.model_validate(server.storage_section(**overrides))


def count(server: MariaDBServer, table: str) -> int:
    with server.root_connection(database=server.database) as conn, conn.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM `{table}`")  # noqa: S608 - table names are literals of the tests
        row = cursor.fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def server(mariadb: MariaDBServer) -> MariaDBServer:
    mariadb.start()  # in case a failed test left it stopped
    mariadb.reset_database()
    return mariadb


@pytest.fixture
def store(server: MariaDBServer) -> Iterator[MySQLStore]:
    s = MySQLStore(config(server))
    try:
        yield s
    finally:
        s.close()


def test_round_trip_of_samples_alerts_and_statuses(store: MySQLStore, server: MariaDBServer) -> None:
    finding = Finding(kind="ssh_bruteforce", severity="high", technique="T1110", summary="40 failures",
                      evidence={"address": "203.0.113.9", "count": 40})
    batch = Batch(
        samples=[sample(ts=T0 + 1, findings=(finding,), security_issues=1, threat_level="high"),
                 sample("db-1", T0, cpu_temperature=None, temperature_reason="no sensor", cpu_count=4)],
        alerts=[Alert(agent="web-1", timestamp=T0 + 1, metric="security", severity="critical",
                      technique="T1110", message="ssh brute force from 203.0.113.9")],
        statuses=[AgentStatus(agent="db-1", timestamp=T0, state="up", latency_ms=3.5),
                  AgentStatus(agent="web-1", timestamp=T0, state="tls_failure", detail="certificate rejected")],
    )
    memory = MemoryStore()
    store.write(batch)
    memory.write(batch)
    assert_same_frames(store, memory, 0, T0 + 10)
    with server.root_connection(database=server.database) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT `details` FROM `metrics` WHERE `agent` = 'web-1'")
        row = cursor.fetchone()
    assert row is not None
    assert json.loads(row[0])["findings"][0]["technique"] == "T1110"


def test_viz_queries_filter_by_range_and_agent_through_the_indexes(store: MySQLStore, server: MariaDBServer) -> None:
    agents = [f"host-{i:02d}" for i in range(10)]
    store.write(Batch(samples=[sample(a, T0 + 30 * i) for i in range(100) for a in agents]))
    frame = store.query_samples(T0 + 300, T0 + 600, agent="host-03")
    assert frame["timestamp"].tolist() == [T0 + 30 * i for i in range(10, 21)]  # inclusive bounds, sorted
    assert set(frame["agent"]) == {"host-03"}
    fleet = store.query_samples(T0 + 300, T0 + 330)
    assert fleet["agent"].tolist() == agents * 2
    assert store.query_samples(T0 + 300, T0 + 600, agent="nobody").empty
    assert len(store.query_samples(float("-inf"), float("inf"))) == 1000
    with server.root_connection(database=server.database) as conn, conn.cursor(pymysql_dict()) as cursor:
        cursor.execute("EXPLAIN SELECT * FROM `metrics` WHERE `timestamp` BETWEEN %s AND %s AND `agent` = %s",
                       (T0 + 300, T0 + 600, "host-03"))
        assert cursor.fetchone()["key"] == "PRIMARY"
        cursor.execute("EXPLAIN SELECT * FROM `metrics` WHERE `timestamp` BETWEEN %s AND %s", (T0 + 300, T0 + 330))
        assert cursor.fetchone()["key"] == "ix_metrics_time"


def pymysql_dict() -> Any:
    import pymysql.cursors

    return pymysql.cursors.DictCursor


def test_replays_are_stored_once(store: MySQLStore, server: MariaDBServer) -> None:
    batch = Batch(
        samples=[sample(ts=T0, cpu_usage=1.0), sample(ts=T0, cpu_usage=2.0), sample("db-1", T0)],
        alerts=[Alert(agent="web-1", timestamp=T0, metric="cpu_usage", severity="warning")] * 2,
        statuses=[AgentStatus(agent="web-1", timestamp=T0, state="up")] * 2,
    )
    store.write(batch)
    store.write(batch)
    MySQLStore(config(server)).write(batch)  # another collector replaying its spool
    assert (count(server, "metrics"), count(server, "alerts"), count(server, "agent_status")) == (2, 1, 1)
    assert store.query_samples(0, T0, agent="web-1")["cpu_usage"].tolist() == [1.0]  # the first copy wins


def test_writes_larger_than_batch_size_are_chunked(server: MariaDBServer) -> None:
    store = MySQLStore(config(server, batch_size=7))
    store.write(Batch(samples=[sample(ts=T0 + i) for i in range(50)]))
    store.close()
    assert count(server, "metrics") == 50


def test_server_restart_mid_use_is_unavailable_then_recovers(store: MySQLStore, server: MariaDBServer) -> None:
    store.write(Batch(samples=[sample(ts=T0)]))
    server.stop()
    with pytest.raises(StorageUnavailable, match=r"mysql .*127\.0\.0\.1"):
        store.write(Batch(samples=[sample(ts=T0 + 1)]))
    with pytest.raises(StorageUnavailable):
        store.query_samples(0, T0 + 10)
    server.start()
    # the batch the caller spooled is replayed, with one already stored: each lands once
    store.write(Batch(samples=[sample(ts=T0), sample(ts=T0 + 1)]))
    assert store.query_samples(0, T0 + 10)["timestamp"].tolist() == [T0, T0 + 1]


def test_a_restart_while_idle_is_invisible_to_the_caller(store: MySQLStore, server: MariaDBServer) -> None:
    store.write(Batch(samples=[sample(ts=T0)]))
    server.kill()  # a crash; InnoDB recovers on start
    server.start()
    store.write(Batch(samples=[sample(ts=T0 + 1)]))  # the dead connection is replaced, no error
    assert len(store.query_samples(0, T0 + 10)) == 2


def test_schema_is_created_on_first_write_but_not_by_readers(server: MariaDBServer) -> None:
    reader = open_store(config(server), readonly=True)
    assert reader.query_samples(0, T0).empty
    assert reader.query_alerts(0, T0).empty
    with server.root_connection(database=server.database) as conn, conn.cursor() as cursor:
        cursor.execute("SHOW TABLES")
        assert cursor.fetchall() == ()
    writer = open_store(config(server))
    writer.write(Batch(samples=[sample()]))
    assert len(reader.query_samples(0, T0)) == 1
    with pytest.raises(StorageConfigError, match="read-only"):
        reader.write(Batch(samples=[sample()]))
    writer.close()
    reader.close()


def run_init_db(tmp_path: Path, storage: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "collector.json"
    path.write_text(json.dumps({"agents": [], "storage": storage}))
    return subprocess.run(
        [sys.executable, "-m", "storage", "init-db", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )


def test_init_db_creates_the_schema(tmp_path: Path, server: MariaDBServer) -> None:
    done = run_init_db(tmp_path, server.storage_section())
    assert done.returncode == 0, done.stderr
    assert "schema version 4 ready" in done.stdout
    assert count(server, "metrics") == 0
    again = run_init_db(tmp_path, server.storage_section())  # idempotent
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize(
    ("storage", "code", "needle"),
    [
        ({"mysql_password": "wrong-password-123"}, 2, "access denied"),
        ({"mysql_database": "nope"}, 2, "denied"),
        ({"mysql_port": 0}, 2, "storage.mysql_port"),
        ({"type": "file"}, 2, "init-db is for 'mysql'"),
        ({"mysql_password_env": "SMON_TEST_UNSET_VARIABLE", "mysql_password": None}, 2, "mysql_password_env"),
    ],
)
def test_init_db_errors_are_one_clear_line(
    tmp_path: Path, server: MariaDBServer, storage: dict[str, Any], code: int, needle: str
) -> None:
    section = {k: v for k, v in server.storage_section(**storage).items() if v is not None}
    done = run_init_db(tmp_path, section)
    assert done.returncode == code
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("python -m storage init-db: ")
    assert needle in done.stderr.lower() or needle in done.stderr
    assert "Traceback" not in done.stderr
    assert "wrong-password-123" not in done.stderr and server.password not in done.stderr


def test_init_db_without_a_server_is_unavailable(tmp_path: Path, server: MariaDBServer) -> None:
    done = run_init_db(tmp_path, server.storage_section(mysql_port=free_port()))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Can't connect" in done.stderr
    assert "Traceback" not in done.stderr


def test_bad_credentials_in_process_are_a_config_error_without_the_password(server: MariaDBServer) -> None:
    store = MySQLStore(config(server, mysql_password="not-the-password"))
    with pytest.raises(StorageConfigError, match="access denied") as caught:
        store.write(Batch(samples=[sample()]))
    assert "not-the-password" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_password_from_a_private_file_or_the_environment(
    tmp_path: Path, server: MariaDBServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "mysql.pw"
    secret.write_text(server.password + "\n")
    secret.chmod(0o644)
    with pytest.raises(StorageConfigError, match=r"storage\.mysql_password_file: .*readable by group or others"):
        MySQLStore(config(server, mysql_password=None, mysql_password_file=str(secret)))
    secret.chmod(0o600)
    store = MySQLStore(config(server, mysql_password=None, mysql_password_file=str(secret)))
    store.write(Batch(samples=[sample()]))
    store.close()
    monkeypatch.setenv("SMON_TEST_MYSQL_PW", server.password)
    store = MySQLStore(config(server, mysql_password=None, mysql_password_env="SMON_TEST_MYSQL_PW"))
    assert len(store.query_samples(0, T0)) == 1
    store.close()
    with pytest.raises(StorageConfigError, match="set only one of mysql_password, mysql_password_env"):
        MySQLStore(config(server, mysql_password_env="SMON_TEST_MYSQL_PW"))


def test_tls_is_verified_against_our_ca(tmp_path: Path, server: MariaDBServer, test_pki: Any) -> None:
    tls_user = {"mysql_user": server.tls_user}
    # the server admits monitor_tls only over TLS: without mysql_ssl it is refused
    with pytest.raises(StorageConfigError, match="access denied"):
        MySQLStore(config(server, **tls_user)).write(Batch(samples=[sample()]))
    store = MySQLStore(config(server, **tls_user, mysql_ssl={"ca": str(test_pki.ca)}))
    store.write(Batch(samples=[sample()]))
    assert len(store.query_samples(0, T0)) == 1
    store.close()
    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_bytes(ca_lib.cert_pem(ca_lib.create_ca("another CA").cert))
    stranger = MySQLStore(config(server, **tls_user, mysql_ssl={"ca": str(other_ca)}))
    with pytest.raises(StorageUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        stranger.query_samples(0, T0)


def test_off_host_server_requires_tls(server: MariaDBServer) -> None:
    with pytest.raises(StorageConfigError, match=r"storage\.mysql_ssl: required to reach db\.example\.net"):
        MySQLStore(config(server, mysql_host="db.example.net"))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    samples=st.lists(strategies.samples, max_size=6),
    alerts=st.lists(strategies.alerts, max_size=3),
    statuses=st.lists(strategies.statuses, max_size=3),
)
def test_mysql_round_trips_like_memory(
    store: MySQLStore, server: MariaDBServer, samples: list[Sample], alerts: list[Alert],
    statuses: list[AgentStatus],
) -> None:
    store.init_schema()
    with server.root_connection(database=server.database) as conn, conn.cursor() as cursor:
        for table in ("metrics", "alerts", "agent_status"):
            cursor.execute(f"DELETE FROM `{table}`")  # noqa: S608 - literal table names
    batch = Batch(samples=samples, alerts=alerts, statuses=statuses)
    memory = MemoryStore()
    store.write(batch)
    memory.write(batch)
    assert_same_frames(store, memory, 0, 4e9)


def test_a_unix_socket_connection_needs_no_tls(server: MariaDBServer) -> None:
    store = MySQLStore(config(server, mysql_host="db.example.net", mysql_socket=str(server.socket)))
    store.write(Batch(samples=[sample()]))
    assert len(store.query_samples(0, T0)) == 1
    store.close()


def test_ssh_failures_not_monitored_are_null_in_old_tables_too(store: MySQLStore, server: MariaDBServer) -> None:
    # a database created by the previous schema (ssh_failures NOT NULL) is relaxed on first use
    store.write(Batch(samples=[sample(ts=T0, ssh_failures=3)]))
    store.close()
    with server.root_connection(database=server.database) as conn, conn.cursor() as cursor:
        cursor.execute("ALTER TABLE `metrics` MODIFY `ssh_failures` BIGINT UNSIGNED NOT NULL DEFAULT 0")
    again = MySQLStore(config(server))
    try:
        again.write(Batch(samples=[sample(ts=T0 + 1, ssh_failures=None)]))
        frame = again.query_samples(T0 - 1, T0 + 2)
    finally:
        again.close()
    assert frame["ssh_failures"].iloc[0] == 3 and frame["ssh_failures"].isna().iloc[1]


def _audit_entries(tmp_path: Path, count: int) -> list[Any]:
    from secure_agent.audit import AuditLog
    from secure_collector.audittrail import AuditTrail

    log = AuditLog(tmp_path / "audit.log", "web-1", sync_interval=0)
    log.open()
    for number in range(count):
        log.record("call", "served", method="ping", request_id=f"r{number}", status=200)
    log.close()
    trail = AuditTrail(["web-1"])
    trail.load({})
    trail.first_call("web-1")
    records = (tmp_path / "audit.log").read_text().splitlines()
    trail.answer("web-1", {"records": records, "more": False, "gap": False})
    outcome = trail.finish("web-1")
    assert outcome is not None
    return list(outcome.entries)


def test_audit_records_replayed_are_stored_once_and_read_back_in_order(
    store: MySQLStore, server: MariaDBServer, tmp_path: Path
) -> None:
    entries = _audit_entries(tmp_path, 12)
    store.write(Batch(audit=entries[:5]))
    store.write(Batch(audit=entries[3:9]))  # a replay overlapping what is stored
    store.write(Batch(audit=entries))
    MySQLStore(config(server)).write(Batch(audit=entries))  # another store replaying its spool
    assert count(server, "audit_records") == 12
    assert list(store.read_audit("web-1")) == [entry.line for entry in entries]
    tail = store.audit_tails(["web-1", "db-1"])
    assert list(tail) == ["web-1"] and tail["web-1"].hash == entries[-1].hash


def test_a_version_1_database_is_brought_up_to_date(server: MariaDBServer, tmp_path: Path) -> None:
    with server.root_connection(database=server.database) as conn, conn.cursor() as cursor:
        cursor.execute(
            "CREATE TABLE `schema_version` (`version` INT NOT NULL PRIMARY KEY, `applied_at` DOUBLE NOT NULL)"
        )
        cursor.execute("INSERT INTO `schema_version` VALUES (1, 0)")
        cursor.execute(
            "CREATE TABLE `agent_status` (`agent` VARCHAR(64) NOT NULL, `timestamp` DOUBLE NOT NULL, `state` "
            "ENUM('up', 'unreachable') NOT NULL, `detail` VARCHAR(256) NOT NULL DEFAULT '', `latency_ms` DOUBLE NULL, "
            "PRIMARY KEY (`agent`, `timestamp`))"
        )
        conn.commit()
    store = MySQLStore(config(server))
    try:
        store.write(Batch(statuses=[AgentStatus(agent="web-1", timestamp=T0, state="audit_broken")],
                          audit=_audit_entries(tmp_path, 2)))
    finally:
        store.close()
    assert count(server, "audit_records") == 2 and count(server, "agent_status") == 1
