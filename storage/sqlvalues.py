"""Multi-row ``INSERT ... VALUES`` statements, their literals made column by column.

pymysql's ``executemany`` escapes every value through a type dispatch in Python, which for a sample's
columns is most of the time of a 1,000-row insert (docs/benchmarks.md). Here each column's type is known from
the model, so each column is turned into literals by one comprehension:

* floats: ``repr(float(v))`` (the shortest string that reads back as the same double) with ``e0``
  appended, as pymysql does, so the server reads a DOUBLE, never a DECIMAL; a non-finite value is
  refused (the models already forbid them);
* integers: ``str(int(v))``;
* strings: quoted, escaped by the connection's own ``escape_string`` (which knows the server's
  ``NO_BACKSLASH_ESCAPES`` mode; the session runs in utf8mb4, where backslash escaping is sound);
* ``None``: ``NULL``.

Nothing else reaches the SQL text; statements stay under ``max_bytes`` (the server's packet limit).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

SqlKind = Literal["float", "int", "opt_int", "str", "opt_str"]
MAX_STATEMENT_BYTES = 1_000_000
"""Like pymysql's ``max_stmt_length``: far below MariaDB's default 16 MB ``max_allowed_packet``."""


def _floats(column: Sequence[Any]) -> list[str]:
    present = [float(v) for v in column if v is not None]
    if not all(map(math.isfinite, present)):
        raise ValueError("a float column holds a value that is not finite")
    return [
        "NULL" if v is None else (text if "e" in (text := repr(float(v))) else text + "e0") for v in column
    ]


def _ints(column: Sequence[Any]) -> list[str]:
    return [str(int(v)) for v in column]


def _optional_ints(column: Sequence[Any]) -> list[str]:
    return ["NULL" if v is None else str(int(v)) for v in column]


def literal_columns(
    rows: Sequence[Sequence[Any]], kinds: Sequence[SqlKind], escape: Callable[[str], str]
) -> list[list[str]]:
    """The SQL literals of ``rows``, column by column."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in kinds]
    if len(columns) != len(kinds):
        raise ValueError(f"rows have {len(columns)} columns, expected {len(kinds)}")
    out: list[list[str]] = []
    for kind, column in zip(kinds, columns, strict=True):
        if kind == "float":
            out.append(_floats(column))
        elif kind == "int":
            out.append(_ints(column))
        elif kind == "opt_int":
            out.append(_optional_ints(column))
        elif kind == "str":
            out.append(["'" + escape(str(v)) + "'" for v in column])
        else:
            out.append(["NULL" if v is None else "'" + escape(str(v)) + "'" for v in column])
    return out


def insert_statements(
    head: str,
    tail: str,
    rows: Sequence[Sequence[Any]],
    kinds: Sequence[SqlKind],
    escape: Callable[[str], str],
    max_bytes: int = MAX_STATEMENT_BYTES,
) -> list[str]:
    """``head`` + ``(row),(row),...`` + ``tail`` statements holding every row, each under ``max_bytes``.

    ``head`` is ``INSERT INTO t (cols) VALUES `` and ``tail`` e.g. `` ON DUPLICATE KEY UPDATE ...``.
    """
    if not rows:
        return []
    tuples = ["(" + ",".join(values) + ")" for values in zip(*literal_columns(rows, kinds, escape), strict=True)]
    statements: list[str] = []
    chunk: list[str] = []
    size = len(head) + len(tail)
    for item in tuples:
        if chunk and size + len(item) + 1 > max_bytes:
            statements.append(head + ",".join(chunk) + tail)
            chunk, size = [], len(head) + len(tail)
        chunk.append(item)
        size += len(item) + 1
    statements.append(head + ",".join(chunk) + tail)
    return statements
