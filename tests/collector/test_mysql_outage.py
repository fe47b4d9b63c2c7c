"""Issue 6, item 4: the spool covers a MySQL outage. The real MariaDB server is stopped while the collector
polls a real agent; polls go on into the spool; the server starts again; every answer lands exactly once.

"Every answer" is counted independently of the collector: the agent's audit log has one ``call``/``served``
record per ``get_metrics`` it answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secure_collector import cli
from tests.collector.helpers import collector_data, write_config
from tests.plugins.agent import StartAgent
from tests.plugins.mariadb import MariaDBServer
from tests.plugins.pki import TestPKI

pytestmark = [pytest.mark.mysql, pytest.mark.slow]

WAIT = 60.0


def _rows(server: MariaDBServer, query: str) -> list[tuple[Any, ...]]:  # PyMySQL's rows are untyped
    with server.root_connection(database=server.database) as conn, conn.cursor() as cursor:
        cursor.execute(query)
        return list(cursor.fetchall())


def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll an observable condition, bounded in time (not a sleep standing in for synchronisation)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_mysql_restart_during_polling_loses_and_duplicates_nothing(
    mariadb: MariaDBServer, test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    mariadb.start()
    mariadb.reset_database()
    agent = start_agent(test_pki, security={"rate_limit": {"per_second": 1000, "burst": 1000}})
    data = collector_data(
        test_pki,
        tmp_path,
        [("localhost", agent.host, agent.port)],
        poll_interval=0.1,
        storage=mariadb.storage_section(),
    )
    collector = cli.build(cli._arguments(["--config", str(write_config(tmp_path, data))]), [])
    delivery, spool = collector.delivery, collector.spool
    assert delivery is not None and spool is not None  # MySQL storage: delivered through a spool
    runner = threading.Thread(target=collector.poller.run, kwargs={"max_sweeps": 120})
    runner.start()
    try:
        _until(lambda: _rows(mariadb, "SHOW TABLES LIKE 'metrics'") != [], "the schema")
        _until(lambda: _rows(mariadb, "SELECT COUNT(*) FROM metrics")[0][0] >= 3, "samples before the outage")
        mariadb.stop()
        sweeps = collector.poller.sweeps
        _until(lambda: delivery.backlog and spool.pending_bytes() > 0, "the spool")
        _until(lambda: collector.poller.sweeps >= sweeps + 5, "polls during the outage")
        assert runner.is_alive(), "the collector kept polling while MySQL was down"
        mariadb.start()
        runner.join(timeout=WAIT)
        assert not runner.is_alive()
    finally:
        collector.poller.stop()
        runner.join(timeout=WAIT)
        mariadb.start()
    assert delivery.retry(force=True)  # whatever the last sweeps left in the spool
    collector.close()

    served = [
        r
        for r in agent.audit_records()
        if r.get("event") == "call" and r.get("outcome") == "served" and r.get("method") == "get_metrics"
    ]
    samples = _rows(mariadb, "SELECT agent, timestamp FROM metrics")
    assert len(samples) == len(served)  # every answer stored, none twice
    assert len(set(samples)) == len(samples)
    assert spool.pending_bytes() == 0
    assert delivery.spooled_batches >= 3
    statuses = _rows(mariadb, "SELECT state, COUNT(*) FROM agent_status GROUP BY state")
    assert dict(statuses) == {"up": len(served)}  # MySQL's outage is not an agent's
