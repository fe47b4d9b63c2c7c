"""The hand-built INSERT literals: exact numbers, escaped strings, bounded statements."""

from __future__ import annotations

from typing import Any

import pymysql.converters
import pytest

from storage.sqlvalues import insert_statements, literal_columns
from tests.plugins.mariadb import MariaDBServer

HOSTILE = ["'", "\\", "\\'", "\x00", "\x1a", '"', "%s", "ünï 🙂", "'); DROP TABLE t; --", "a\nb\r\tc", ""]


def test_numbers_are_exact_double_literals_and_none_is_null() -> None:
    columns = literal_columns(
        [(0.1, 3, None, "x", None), (1e-300, 0, 7, "y", "z")],
        ["float", "int", "opt_int", "str", "opt_str"],
        pymysql.converters.escape_string,
    )
    assert columns == [["0.1e0", "1e-300"], ["3", "0"], ["NULL", "7"], ["'x'", "'y'"], ["NULL", "'z'"]]


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_floats_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="not finite"):
        literal_columns([(bad,)], ["float"], pymysql.converters.escape_string)


def test_a_number_column_cannot_carry_sql() -> None:
    with pytest.raises(ValueError):
        literal_columns([("1); DROP TABLE t; --",)], ["int"], pymysql.converters.escape_string)


def test_statements_stay_under_the_limit_and_hold_every_row() -> None:
    rows = [(float(i), "x" * 50) for i in range(100)]
    statements = insert_statements("INSERT INTO t (a, b) VALUES ", "", rows, ["float", "str"],
                                   pymysql.converters.escape_string, max_bytes=1000)
    assert len(statements) > 5
    assert all(len(s) <= 1000 for s in statements)
    assert sum(s.count("'x") for s in statements) == 100


@pytest.mark.mysql
@pytest.mark.parametrize("mode", ["", "NO_BACKSLASH_ESCAPES"])
def test_hostile_strings_round_trip_through_the_server(mariadb: MariaDBServer, mode: str) -> None:
    from storage.mysql import _escaper

    mariadb.start()
    with mariadb.root_connection(database=mariadb.database) as conn, conn.cursor() as cursor:
        cursor.execute("SET SESSION sql_mode = %s", (mode,))
        cursor.execute("CREATE TEMPORARY TABLE lits (n INT, s VARCHAR(64) CHARACTER SET utf8mb4, d DOUBLE)")
        rows: list[tuple[Any, ...]] = [(i, text, 0.1 * i) for i, text in enumerate(HOSTILE)]
        escape = _escaper(conn)
        for statement in insert_statements("INSERT INTO lits (n, s, d) VALUES ", "", rows,
                                           ["int", "str", "float"], escape):
            cursor.execute(statement)
        cursor.execute("SELECT n, s, d FROM lits ORDER BY n")
        assert cursor.fetchall() == tuple(rows)
