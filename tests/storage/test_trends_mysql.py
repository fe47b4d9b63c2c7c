"""Trend rollups in MariaDB: the server's SQL against the Python reference (storage.trends), idempotence
under replays and two writers, the back-fill of data loaded by another tool, and retention."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import Batch, Sample, mysqltrends
from storage.config import StorageConfig
from storage.mysql import MySQLStore
from storage.trends import FIVE_MINUTES, HOURLY, SIX_HOURS, decode, merge, metrics, rollup, stat_columns
from tests.plugins.mariadb import MariaDBServer

pytestmark = pytest.mark.mysql

T0 = 1_700_000_000.0 - (1_700_000_000.0 % 3600)


def make_samples(agents: int, hours: float, interval: float, seed: int = 7, start: float = T0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    steps = int(hours * 3600 / interval)
    for a in range(agents):
        for i in range(steps):
            ts = start + i * interval + a * 0.25
            out.append(Sample.model_validate({
                "agent": f"srv-{a:02d}", "timestamp": ts,
                "cpu_usage": rng.uniform(0, 100), "memory_usage": 40.0 + (i % 7),
                "load_1": rng.uniform(0, 4), "load_5": 1.0, "load_15": 0.5,
                "disk_usage": 70.0, "security_issues": rng.choice([0, 0, 0, 2]),
                "threat_level": rng.choice(["none", "none", "low", "high"]),
                # a sensor that answers only sometimes: value counts differ from sample counts
                "cpu_temperature": rng.choice([None, 55.0 + rng.random()]),
                "ssh_failures": None if a == 0 else rng.randint(0, 3),
                "cpu_count": 4,
            }))
    return out


@pytest.fixture
def store(mariadb: MariaDBServer) -> Iterator[MySQLStore]:
    mariadb.start()
    mariadb.reset_database()
    s = MySQLStore(StorageConfig.model_validate(mariadb.storage_section()))
    try:
        yield s
    finally:
        s.close()


def assert_rollups_equal(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want)
    got = got.sort_values(["agent", "bucket"]).reset_index(drop=True)
    want = want.sort_values(["agent", "bucket"]).reset_index(drop=True)
    assert got["agent"].tolist() == want["agent"].tolist()
    for column in got.columns[1:]:
        np.testing.assert_allclose(got[column].to_numpy(np.float64), want[column].to_numpy(np.float64),
                                   rtol=1e-5, atol=1e-9, err_msg=column, equal_nan=True)


def test_server_rollups_equal_the_reference_in_sweeps_replays_and_late_samples(store: MySQLStore) -> None:
    samples = make_samples(3, 2.5, 30.0)
    by_time = sorted(samples, key=lambda s: s.timestamp)
    # sweeps of one poll each, then a spool replay of an hour and a late back-fill of an old bucket
    sweeps = [by_time[i : i + 3] for i in range(0, len(by_time), 3)]
    held_back = sweeps.pop(10)  # back-filled later
    for sweep in sweeps:
        store.write(Batch(samples=sweep))
    store.write(Batch(samples=by_time[:360]))  # replay: stored once, counted once
    store.write(Batch(samples=held_back))
    raw = store.query_samples(0, T0 + 10 * 3600)
    assert len(raw) == len(samples)
    want5 = rollup(raw, 300)
    assert_rollups_equal(store.query_trends(FIVE_MINUTES, 0, T0 + 10 * 3600), want5)
    assert_rollups_equal(store.query_trends(HOURLY, 0, T0 + 10 * 3600), rollup(raw, 3600))
    assert_rollups_equal(merge(want5, 3600), rollup(raw, 3600))
    assert_rollups_equal(store.query_trends(SIX_HOURS, 0, T0 + 10 * 3600), rollup(raw, SIX_HOURS.width))


def test_back_fill_builds_trends_of_rows_loaded_by_another_tool(store: MySQLStore, mariadb: MariaDBServer) -> None:
    samples = make_samples(2, 3, 60.0, seed=3)
    store.write(Batch(samples=samples))
    with mariadb.root_connection(database=mariadb.database) as conn, conn.cursor() as cursor:
        cursor.execute("DELETE FROM `trends_5m`")
        cursor.execute("DELETE FROM `trends_1h`")
        conn.commit()
    assert store.query_trends(HOURLY, 0, T0 + 86400).empty
    store.build_trends(T0, T0 + 3 * 3600)
    store.build_trends(T0, T0 + 3 * 3600)  # again: idempotent
    raw = store.query_samples(0, T0 + 86400)
    assert_rollups_equal(store.query_trends(HOURLY, 0, T0 + 86400), rollup(raw, 3600))
    assert_rollups_equal(store.query_trends(FIVE_MINUTES, 0, T0 + 86400), rollup(raw, 300))
    assert_rollups_equal(store.query_trends(SIX_HOURS, 0, T0 + 86400), rollup(raw, SIX_HOURS.width))


def test_a_database_made_before_six_hour_trends_gets_them_from_its_hourly_ones(
    store: MySQLStore, mariadb: MariaDBServer
) -> None:
    """Schema 3 had no trends_6h: the upgrade's first start merges the hourly rollups into it, resuming
    where an interrupted start stopped (its progress row), and leaves no progress row behind."""
    samples = make_samples(2, 40, 600.0, seed=4)  # 40 hours: seven 6-hour buckets per agent
    store.write(Batch(samples=samples))
    raw = store.query_samples(0, T0 + 5 * 86400)
    with mariadb.root_connection(database=mariadb.database) as conn, conn.cursor() as cursor:
        cursor.execute("DROP TABLE `trends_6h`")
        cursor.execute("DELETE FROM `schema_version` WHERE `version` > 3")
        conn.commit()
    store.close()
    upgraded = MySQLStore(StorageConfig.model_validate(mariadb.storage_section()))
    try:
        upgraded.init_schema()
        assert_rollups_equal(upgraded.query_trends(SIX_HOURS, 0, T0 + 5 * 86400), rollup(raw, SIX_HOURS.width))
        # a start interrupted after the schema said 4: the progress row makes the next one finish the work
        with mariadb.root_connection(database=mariadb.database) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT COUNT(*) FROM `trends_progress` WHERE `name` = 'six_hours'")
            assert cursor.fetchone() == (0,)
            cursor.execute("DELETE FROM `trends_6h` WHERE `bucket` >= %s", (T0 + 12 * 3600,))
            cursor.execute("INSERT INTO `trends_progress` VALUES ('six_hours', %s)", (T0 + 12 * 3600,))
            conn.commit()
    finally:
        upgraded.close()
    resumed = MySQLStore(StorageConfig.model_validate(mariadb.storage_section()))
    try:
        resumed.init_schema()
        assert_rollups_equal(resumed.query_trends(SIX_HOURS, 0, T0 + 5 * 86400), rollup(raw, SIX_HOURS.width))
    finally:
        resumed.close()


def test_purge_removes_only_what_is_older_in_small_batches(store: MySQLStore) -> None:
    store.write(Batch(samples=make_samples(2, 2, 60.0, seed=5)))
    cutoff = T0 + 3600
    removed = []
    for _ in range(100):
        n = store.purge("metrics", cutoff, 25)
        removed.append(n)
        if n < 25:
            break
    assert sum(removed) == 120 and max(removed) == 25
    assert store.query_samples(0, cutoff - 1e-6).empty
    assert len(store.query_samples(cutoff, T0 + 86400)) == 120
    assert store.purge("trends_5m", cutoff, 1000) == 24
    assert store.purge("trends_6h", T0 + 6 * 3600, 1000) == 2  # a 6-hour bucket goes once it is all older
    with pytest.raises(ValueError, match="purgeable"):
        store.purge("audit_records", cutoff, 10)


def test_two_collectors_storing_one_agent_count_each_sample_once(store: MySQLStore, mariadb: MariaDBServer) -> None:
    """A takeover under --shard auto: for a while both collectors poll and back-fill the same agent."""
    other = MySQLStore(StorageConfig.model_validate(mariadb.storage_section()))
    try:
        samples = sorted(make_samples(1, 1.5, 30.0, seed=9), key=lambda s: s.timestamp)
        for i in range(0, len(samples), 4):
            store.write(Batch(samples=samples[i : i + 4]))
            other.write(Batch(samples=samples[max(0, i - 8) : i + 2]))  # overlapping, behind
        raw = store.query_samples(0, T0 + 86400)
        assert len(raw) == len(samples)
        assert_rollups_equal(store.query_trends(FIVE_MINUTES, 0, T0 + 86400), rollup(raw, 300))
        assert_rollups_equal(other.query_trends(HOURLY, 0, T0 + 86400), rollup(raw, 3600))
    finally:
        other.close()


def test_latest_statuses_are_the_newest_and_the_newest_up_of_each_agent(store: MySQLStore) -> None:
    """What the dashboard's table shows of a long window, without reading every state of it."""
    from storage import AgentStatus

    statuses = []
    for a, tail in enumerate(("up", "timeout", "tls_failure")):
        for i in range(50):
            statuses.append(AgentStatus(agent=f"srv-{a:02d}", timestamp=T0 + i * 30, state="up", latency_ms=1.0))
        statuses.append(AgentStatus(agent=f"srv-{a:02d}", timestamp=T0 + 50 * 30, state=tail, detail="x"))
    store.write(Batch(statuses=statuses))
    everything = store.query_statuses(0, T0 + 86400)
    latest = store.latest_statuses(0, T0 + 86400)
    newest = everything.sort_values("timestamp").groupby("agent").tail(1)
    newest_up = everything[everything["state"] == "up"].sort_values("timestamp").groupby("agent").tail(1)
    want = pd.concat([newest, newest_up]).drop_duplicates(["agent", "timestamp"])
    want = want.sort_values(["timestamp", "agent"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(latest, want)
    assert len(store.latest_statuses(0, T0 + 86400, "srv-01")) == 2
    assert store.latest_statuses(T0 + 86400, T0 + 2 * 86400).empty


# -- the packed fetch of merged rollups against the driver's own decoding -----------------------------------

_AGENTS = st.sampled_from(["srv-00", "a,b", "ünï\tcode", "x" * 64])
_FLOAT32 = st.one_of(st.none(), st.floats(width=32, allow_nan=False, allow_infinity=False))
_DOUBLE = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
                    st.integers(-(2**53), 2**53).map(float))


@st.composite
def _stored_rollups(draw: st.DrawFn) -> list[dict[str, object]]:
    """Hourly rows as any writer could store them: any value the columns hold, NULL anywhere it may be."""
    rows: dict[tuple[str, int], dict[str, object]] = {}
    for _ in range(draw(st.integers(1, 12))):
        agent, hour = draw(_AGENTS), draw(st.integers(0, 13))
        count = draw(st.integers(1, 16_000_000))
        row: dict[str, object] = {"agent": agent, "bucket": int(T0) + hour * 3600, "count": count,
                                  "threat_max": draw(st.integers(0, 3))}
        for metric in metrics():
            values = _DOUBLE if metric.integer else _FLOAT32
            mean, low, high, n = stat_columns(metric)
            row.update({mean: draw(values), low: draw(values), high: draw(values),
                        n: draw(st.one_of(st.none(), st.integers(0, count)))})
        rows[(agent, hour)] = row
    return list(rows.values())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_stored_rollups(), step_hours=st.sampled_from([1, 2, 6, 24]), one_agent=st.booleans())
def test_packed_merged_rollups_equal_the_drivers_decoding_of_each_column(
    store: MySQLStore, mariadb: MariaDBServer, rows: list[dict[str, object]], step_hours: int, one_agent: bool
) -> None:
    """``query_trends(..., step)`` reads merged rows packed into one text each and parses them with pyarrow
    (storage.mysqltrends.unpack): the same numbers, bit for bit, as PyMySQL decoding each column of the plain
    statement, for whatever the trend tables may hold (or more precise, where the text protocol writes a
    FLOAT result in six digits)."""
    store.init_schema()
    names = mysqltrends.names()
    agent = str(rows[0]["agent"]) if one_agent else None
    params: tuple[object, ...] = (T0, T0 + 14 * 3600) + ((agent,) if agent is not None else ())
    with mariadb.root_connection(database=mariadb.database) as conn, conn.cursor() as cursor:
        cursor.execute("DELETE FROM `trends_1h`")
        columns, marks = ", ".join(f"`{c}`" for c in names), ", ".join(["%s"] * len(names))
        insert = f"INSERT INTO `trends_1h` ({columns}) VALUES ({marks})"  # noqa: S608 - the catalog's names
        cursor.executemany(insert, [[row[c] for c in names] for row in rows])
        conn.commit()
        cursor.execute(mysqltrends.steps_statement(HOURLY, step_hours * 3600, agent), params)
        plain = pd.DataFrame(list(cursor.fetchall()), columns=names)
        cursor.execute(mysqltrends.packed_steps_statement(HOURLY, step_hours * 3600, agent), params)
        packed = mysqltrends.unpack(cursor.fetchall())
    want = decode(plain).sort_values(["agent", "bucket"]).reset_index(drop=True)
    got = decode(packed).sort_values(["agent", "bucket"]).reset_index(drop=True)
    assert len(got) == len(want) > 0
    assert got["agent"].tolist() == want["agent"].tolist()
    for column in names[1:]:
        packed_values, plain_values = got[column].to_numpy(np.float64), want[column].to_numpy(np.float64)
        same = (packed_values == plain_values) | (np.isnan(packed_values) & np.isnan(plain_values))
        # where the server types a result FLOAT, its text protocol writes six significant digits
        # (3.40282e+38) while CONCAT writes the stored value whole (3.4028234663852886e38): the packed
        # value is then the more precise one, and equal to the plain one at six digits
        six = np.asarray([float(f"{value:.6g}") for value in packed_values])
        assert (same | (six == plain_values)).all(), (column, packed_values.tolist(), plain_values.tolist())
    # and what viz asks for: the same frame through the store
    through = store.query_trends(HOURLY, T0, T0 + 14 * 3600, agent, step_hours * 3600)
    pd.testing.assert_frame_equal(through.sort_values(["agent", "bucket"]).reset_index(drop=True), got,
                                  check_dtype=False)
