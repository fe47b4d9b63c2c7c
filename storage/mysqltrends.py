"""The trend rollups of the MySQL backend (:mod:`storage.trends`), as SQL the server runs.

Tables ``trends_5m``, ``trends_1h`` and ``trends_6h``: primary key (agent, bucket), one column per rollup
statistic (:func:`storage.trends.columns`), stored sparse. The server computes every rollup from its source
rows (``metrics`` for 5 minutes, ``trends_5m`` for the hour, ``trends_1h`` for 6 hours) with ``INSERT ...
SELECT ... GROUP BY ... ON DUPLICATE KEY UPDATE``: recomputing a bucket whole is what makes a replay, a
restart or two shards harmless, and the collector only sends three statements per sweep whatever the
fleet's size.

Statistics are ``FLOAT`` (7 significant digits, far finer than a plot) except for the integer metrics'
(``DOUBLE``: counts up to 2^31 stay exact); a minimum or maximum within that precision of the mean is
stored as NULL.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv

from storage.catalog import Metric
from storage.trends import ALL_LEVELS, FIVE_MINUTES, HOURLY, SIX_HOURS, Level, metrics, stat_columns

_REL = {False: "1e-6", True: "1e-12"}
PACKED_SEP = ","
"""Between the numbers of a packed row (:func:`packed_steps_statement`); no number the server writes holds it."""


TABLE_LEVELS: tuple[Level, ...] = ALL_LEVELS
"""Each has its table."""


def table(level: Level) -> str:
    return f"trends_{level.name}"


def _kind(metric: Metric) -> str:
    return "DOUBLE" if metric.integer else "FLOAT"


def metric_columns(metric: Metric) -> list[str]:
    """The column definitions of ``metric``'s statistics in a trends table."""
    mean, low, high, n = stat_columns(metric)
    kind = _kind(metric)
    return [f"`{mean}` {kind} NULL", f"`{low}` {kind} NULL", f"`{high}` {kind} NULL", f"`{n}` MEDIUMINT UNSIGNED NULL"]


def create_statement(level: Level) -> str:
    columns = [
        "`agent` VARCHAR(64) NOT NULL",
        "`bucket` BIGINT NOT NULL",
        "`count` MEDIUMINT UNSIGNED NOT NULL",
        "`threat_max` TINYINT UNSIGNED NOT NULL DEFAULT 0",
    ]
    for metric in metrics():
        columns.extend(metric_columns(metric))
    body = ",\n    ".join([*columns, "PRIMARY KEY (`agent`, `bucket`)", f"KEY `ix_{table(level)}_bucket` (`bucket`)"])
    return (
        f"CREATE TABLE IF NOT EXISTS `{table(level)}` (\n    {body}\n"
        ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin ROW_FORMAT=DYNAMIC"
    )


def _names() -> list[str]:
    names = ["agent", "bucket", "count", "threat_max"]
    for metric in metrics():
        names.extend(stat_columns(metric))
    return names


def _sparse(metric: Metric) -> list[str]:
    """The stored (sparse) statistics of ``metric`` from a grouped row ``g`` holding the full ones."""
    mean, low, high, n = stat_columns(metric)
    rel = _REL[metric.integer]
    return [
        f"g.`{mean}`",
        f"IF(ABS(g.`{low}` - g.`{mean}`) <= {rel} * ABS(g.`{mean}`), NULL, g.`{low}`)",
        f"IF(ABS(g.`{high}` - g.`{mean}`) <= {rel} * ABS(g.`{mean}`), NULL, g.`{high}`)",
        f"IF(g.`{n}` = g.`count`, NULL, g.`{n}`)",
    ]


def _from_samples(level: Level) -> str:
    width = level.width
    parts = [
        "`agent`",
        f"FLOOR(`timestamp` / {width}) * {width} AS `b`",
        "COUNT(*) AS `count`",
        "MAX(`threat_level` + 0) - 1 AS `threat_max`",
    ]
    for metric in metrics():
        mean, low, high, n = stat_columns(metric)
        m = metric.name
        parts += [f"AVG(`{m}`) AS `{mean}`", f"MIN(`{m}`) AS `{low}`", f"MAX(`{m}`) AS `{high}`",
                  f"COUNT(`{m}`) AS `{n}`"]
    # fixed identifiers from the catalog; {where} holds %s placeholders only
    return "SELECT " + ", ".join(parts) + " FROM `metrics` WHERE {where} GROUP BY `agent`, `b`"  # noqa: S608


def _rollup_parts(level: Level) -> list[tuple[str, str]]:
    """``(expression, name)`` of each column of ``level`` computed from a finer level's rows, in :func:`names`
    order (``b``: the bucket)."""
    width = level.width
    parts = [
        ("`agent`", "agent"),
        (f"FLOOR(`bucket` / {width}) * {width}", "b"),
        ("SUM(`count`)", "count"),
        ("MAX(`threat_max`)", "threat_max"),
    ]
    for metric in metrics():
        mean, low, high, n = stat_columns(metric)
        weight = f"IF(`{mean}` IS NULL, 0, COALESCE(`{n}`, `count`))"
        parts += [
            (f"SUM(`{mean}` * {weight}) / NULLIF(SUM({weight}), 0)", mean),
            (f"MIN(COALESCE(`{low}`, `{mean}`))", low),
            (f"MAX(COALESCE(`{high}`, `{mean}`))", high),
            (f"SUM({weight})", n),
        ]
    return parts


def _from_rollups(level: Level, source: Level) -> str:
    selected = ", ".join(f"{expression} AS `{name}`" for expression, name in _rollup_parts(level))
    return f"SELECT {selected} FROM `{table(source)}` WHERE {{where}} GROUP BY `agent`, `b`"  # noqa: S608


def _upsert(level: Level, grouped: str) -> str:
    names = _names()
    selected = ["g.`agent`", "g.`b`", "g.`count`", "g.`threat_max`"]
    for metric in metrics():
        selected.extend(_sparse(metric))
    updates = ", ".join(f"`{c}` = VALUES(`{c}`)" for c in names[2:])
    return (
        f"INSERT INTO `{table(level)}` (" + ", ".join(f"`{c}`" for c in names) + ") "  # noqa: S608 - fixed names
        + "SELECT " + ", ".join(selected) + f" FROM ({grouped}) g ON DUPLICATE KEY UPDATE {updates}"
    )


def _where(spans: Mapping[str, tuple[float, float]], column: str) -> tuple[str, list[Any]]:
    """``(agent IN (...) AND column >= x AND column < y) OR ...``, one clause per distinct span."""
    by_span: dict[tuple[float, float], list[str]] = {}
    for agent, span in spans.items():
        by_span.setdefault(span, []).append(agent)
    clauses: list[str] = []
    params: list[Any] = []
    for (low, high), agents in sorted(by_span.items()):
        marks = ", ".join(["%s"] * len(agents))
        clauses.append(f"(`{column}` >= %s AND `{column}` < %s AND `agent` IN ({marks}))")
        params += [low, high, *sorted(agents)]
    return " OR ".join(clauses), params


def refresh_statements(spans: Mapping[str, tuple[float, float]]) -> list[tuple[str, list[Any]]]:
    """The statements that recompute every bucket of every level that ``spans`` (agent -> [start, end) of
    new samples) reach."""
    if not spans:
        return []
    statements: list[tuple[str, list[Any]]] = []
    widened = {agent: _widen(span, FIVE_MINUTES) for agent, span in spans.items()}
    where, params = _where(widened, "timestamp")
    statements.append((_upsert(FIVE_MINUTES, _from_samples(FIVE_MINUTES).format(where=where)), params))
    hourly = {agent: _widen(span, HOURLY) for agent, span in spans.items()}
    where, params = _where(hourly, "bucket")
    statements.append((_upsert(HOURLY, _from_rollups(HOURLY, FIVE_MINUTES).format(where=where)), params))
    six = {agent: _widen(span, SIX_HOURS) for agent, span in spans.items()}
    where, params = _where(six, "bucket")
    statements.append((_upsert(SIX_HOURS, _from_rollups(SIX_HOURS, HOURLY).format(where=where)), params))
    return statements


def range_statements(start: float, end: float, agents: Sequence[str] | None = None) -> list[tuple[str, list[Any]]]:
    """Rebuild every level over ``[start, end)`` (whole hours; the 6-hour buckets they touch whole), for the
    back-fill command."""
    low, high = _widen((start, end), HOURLY)
    agent_clause, agent_params = _agents_clause(agents)
    five = _from_samples(FIVE_MINUTES).format(where="`timestamp` >= %s AND `timestamp` < %s" + agent_clause)
    hour = _from_rollups(HOURLY, FIVE_MINUTES).format(where="`bucket` >= %s AND `bucket` < %s" + agent_clause)
    return [
        (_upsert(FIVE_MINUTES, five), [low, high, *agent_params]),
        (_upsert(HOURLY, hour), [low, high, *agent_params]),
        *six_hours_statements(low, high, agents),
    ]


def six_hours_statements(start: float, end: float, agents: Sequence[str] | None = None) -> list[tuple[str, list[Any]]]:
    """Recompute the 6-hour rollups over ``[start, end)`` (widened to whole 6-hour buckets) from the hourly
    ones: after a back-fill, and once when a database made before the level gets it."""
    low, high = _widen((start, end), SIX_HOURS)
    agent_clause, agent_params = _agents_clause(agents)
    six = _from_rollups(SIX_HOURS, HOURLY).format(where="`bucket` >= %s AND `bucket` < %s" + agent_clause)
    return [(_upsert(SIX_HOURS, six), [low, high, *agent_params])]


def _agents_clause(agents: Sequence[str] | None) -> tuple[str, list[Any]]:
    """`` AND agent IN (%s, ...)`` and its parameters (nothing for None or no agents: all of them)."""
    if not agents:
        return "", []
    return " AND `agent` IN (" + ", ".join(["%s"] * len(agents)) + ")", list(agents)


def _widen(span: tuple[float, float], level: Level) -> tuple[float, float]:
    low, high = span
    start = (low // level.width) * level.width
    end = -(-high // level.width) * level.width
    return float(start), float(max(end, start + level.width))


def _steps_level(level: Level, step: int) -> Level:
    if step % level.width:
        raise ValueError(f"a step of {step} s is not a whole number of {level.name} buckets")
    return Level(f"{step}s", step)


def _steps_where(agent: str | None) -> str:
    return "`bucket` >= %s AND `bucket` < %s" + (" AND `agent` = %s" if agent is not None else "")


def steps_statement(level: Level, step: int, agent: str | None) -> str:
    """The rollups of ``level`` starting in ``[%s, %s)`` merged into bins of ``step`` seconds, full (not sparse),
    in :func:`names` order."""
    return _from_rollups(_steps_level(level, step), level).format(where=_steps_where(agent))


def packed_steps_statement(level: Level, step: int, agent: str | None) -> str:
    """:func:`steps_statement`'s rows as two fields, the agent and the other columns as one text (``PACKED_SEP``
    between them, an empty field for NULL), which :func:`unpack` parses in C: the driver
    decoding 68 fields a row in Python was most of a month's query (2.1 of 3.5 s for 36,000 merged rows).
    Every statistic is cast to DOUBLE first, so each number comes whole: where the text protocol writes a
    FLOAT-typed result in six digits, this is the more precise of the two (a property test holds them equal
    otherwise)."""
    parts = _rollup_parts(_steps_level(level, step))
    # as DOUBLE: CONCAT writes a FLOAT-typed result (a MIN or MAX of FLOAT columns) in six digits
    fields = [parts[1][0], parts[2][0], parts[3][0]]
    fields += [f"IFNULL(CAST({expression} AS DOUBLE), '')" for expression, _ in parts[4:]]
    packed = f"CONCAT_WS('{PACKED_SEP}', " + ", ".join(fields) + ")"
    group = parts[1][0]
    # SQL_BIG_RESULT: group by sorting; the in-memory temporary table of tens of thousands of wide rows
    # outgrew tmp_table_size and went to disk (a month 2.8 -> 1.8 s, a year of hourly rows 16 -> 7 s)
    return (f"SELECT SQL_BIG_RESULT `agent`, {packed} FROM `{table(level)}` "  # noqa: S608 - fixed names
            f"WHERE {_steps_where(agent)} GROUP BY `agent`, {group}")


def select_statement(level: Level, agent: str | None) -> str:
    names = ", ".join(f"`{c}`" for c in _names())
    sql = f"SELECT {names} FROM `{table(level)}` WHERE `bucket` > %s AND `bucket` <= %s"  # noqa: S608 - fixed
    if agent is not None:
        sql += " AND `agent` = %s"
    return sql


def names() -> list[str]:
    """Columns of a trends table in :func:`select_statement`'s order."""
    return _names()


def unpack(rows: Sequence[tuple[Any, ...]]) -> pd.DataFrame:
    """The rows of :func:`packed_steps_statement` as a frame of :func:`names` (numbers as float64, NULL as NaN),
    the packed texts parsed by pyarrow's CSV reader."""
    if not rows:
        return pd.DataFrame(columns=_names())
    numbers = _names()[1:]
    text = "\n".join(str(row[1]) for row in rows).encode("ascii")
    table = pcsv.read_csv(
        io.BytesIO(text),
        read_options=pcsv.ReadOptions(column_names=numbers),
        parse_options=pcsv.ParseOptions(delimiter=PACKED_SEP, quote_char=False),
        convert_options=pcsv.ConvertOptions(column_types=dict.fromkeys(numbers, pa.float64()), null_values=[""]),
    )
    if table.num_rows != len(rows):
        raise ValueError(f"{len(rows)} packed rows parsed as {table.num_rows}")
    frame: pd.DataFrame = table.to_pandas()
    frame.insert(0, "agent", [str(row[0]) for row in rows])
    return frame
