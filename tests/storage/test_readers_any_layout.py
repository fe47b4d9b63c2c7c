"""Every reader of the file backend returns exactly what ``json.loads`` of each line gives (issue 15, item 1).

Lines are written in any valid JSON-lines layout: keys in any order, whitespace around separators, extra
keys anywhere, ``\\u`` escapes, numbers as ``1e2``, ``100``, ``-0.0`` or ``1.5E-3``. The reference is
``json.loads`` of each line, framed by :func:`storage.frames.from_rows`. Checked for the frame parser
(:func:`storage.jsonlines.parse`), one agent's lines (:func:`storage.lineindex.lines_of`, and through the
index a file written by us and appended to by another tool), and the store's queries with ``agent`` and
time bounds.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storage import frames, jsonlines, lineindex
from storage.base import Batch
from storage.file import FileStore
from storage.frames import SAMPLES, STATUSES, FrameSpec
from storage.models import AGENT_NAME_PATTERN, AgentStatus, Sample

AGENTS = ["srv-007", "web-1", "web-10", "db.2"]
_cases = itertools.count()
FLOAT_COLUMNS = SAMPLES.of("float")
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
texts = st.text(st.characters(codec="utf-8"), max_size=12)


def _number(value: float, style: int) -> str:
    """A JSON number text for ``value`` that json.loads reads back as exactly ``value`` (or its int)."""
    if style == 1 and value.is_integer() and abs(value) < 1e15:
        return str(int(value))  # "-0" is outside: json.loads reads it as the int 0, arrow as -0.0
    if style == 2:
        return f"{value:.17e}"
    if style == 3:
        return repr(value).upper() if "e" in repr(value) else repr(value)
    return repr(value)


@st.composite
def records(draw: st.DrawFn, timestamp: float) -> dict[str, Any]:
    record: dict[str, Any] = {"agent": draw(st.sampled_from(AGENTS)), "timestamp": timestamp}
    for column in FLOAT_COLUMNS:
        if column != "timestamp" and draw(st.booleans()):
            record[column] = draw(st.none() | finite)
    if draw(st.booleans()):
        record["security_issues"] = draw(st.integers(min_value=0, max_value=2**40))
    record["threat_level"] = draw(st.sampled_from(["none", "low", "medium", "high"]))
    if draw(st.booleans()):
        record["temperature_reason"] = draw(st.none() | texts)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):  # keys another tool adds
        record[draw(st.sampled_from(["note", "host", "findings", "extra", "x"]))] = draw(
            st.none() | texts | st.integers() | st.lists(st.integers(), max_size=2)
        )
    return record


def _value_text(value: Any, style: int, ensure_ascii: bool) -> str:
    if isinstance(value, float):
        return _number(value, style)
    return json.dumps(value, ensure_ascii=ensure_ascii)


@st.composite
def layouts(draw: st.DrawFn, record: dict[str, Any]) -> bytes:
    """One line of ``record`` in a random valid layout."""
    keys = list(record)
    if draw(st.booleans()):
        keys = draw(st.permutations(keys))
    comma = draw(st.sampled_from([",", ", ", " ,", " , "]))
    colon = draw(st.sampled_from([":", ": ", " :", " : "]))
    ensure_ascii = draw(st.booleans())
    style = draw(st.integers(min_value=0, max_value=3))
    inner = comma.join(
        f"{json.dumps(key, ensure_ascii=ensure_ascii)}{colon}{_value_text(record[key], style, ensure_ascii)}"
        for key in keys
    )
    pad = draw(st.sampled_from(["", " "]))
    return f"{{{pad}{inner}{pad}}}".encode()


def _canonical(record: dict[str, Any]) -> bytes:
    """What our writer's layout looks like: compact, the frame's columns first in order."""
    ordered = {c: record.get(c) for c in SAMPLES.columns if c in record}
    ordered.update({k: v for k, v in record.items() if k not in ordered})
    return json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()


@st.composite
def files(draw: st.DrawFn) -> list[bytes]:
    count = draw(st.integers(min_value=0, max_value=25))
    lines = []
    for index in range(count):
        record = draw(records(1_800_000_000.0 + index))
        ours = draw(st.booleans())
        lines.append(_canonical(record) if ours and set(SAMPLES.columns) <= set(record) else draw(layouts(record)))
    return lines


def _reference(lines: list[bytes], spec: FrameSpec, agent: str | None = None) -> pd.DataFrame:
    decoded = [json.loads(line) for line in lines]
    rows = [[record.get(column) for column in spec.columns] for record in decoded
            if agent is None or record["agent"] == agent]
    return frames.from_rows(rows, spec)


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["timestamp"], kind="stable").reset_index(drop=True)


def _same(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(_sorted(got), _sorted(expected), check_exact=True)
    for column in FLOAT_COLUMNS:  # the sign of zero too
        signs = [math.copysign(1, v) for v in _sorted(got)[column] if v == 0]
        assert signs == [math.copysign(1, v) for v in _sorted(expected)[column] if v == 0], column


@settings(max_examples=100, deadline=None)
@given(files())
def test_the_frame_parser_reads_every_layout_as_json_loads_does(lines: list[bytes]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    _same(jsonlines.parse(data, SAMPLES), _reference(lines, SAMPLES))  # small: json alone
    _same(jsonlines.parse(data, SAMPLES, small=0), _reference(lines, SAMPLES))  # pyarrow, as a day of a fleet


@settings(max_examples=100, deadline=None)
@given(files(), st.sampled_from(AGENTS))
def test_one_agents_lines_are_found_in_every_layout(lines: list[bytes], agent: str) -> None:
    data = b"".join(line + b"\n" for line in lines)
    found = lineindex.lines_of(data, agent)
    expected = [line + b"\n" for line in lines if json.loads(line)["agent"] == agent]
    assert sorted(found.splitlines(keepends=True)) == sorted(expected)
    _same(jsonlines.parse(found, SAMPLES, small=0), _reference(lines, SAMPLES, agent))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files(), st.sampled_from(AGENTS))
def test_the_store_reads_our_lines_and_another_tools_alike(tmp_path: Path, lines: list[bytes], agent: str) -> None:
    """Our writer's file (with its line index), then lines another tool appended in its own layout."""
    folder = tmp_path / f"case{next(_cases)}"
    json_file = folder / "metrics.json"
    ours = [Sample(agent=AGENTS[i % len(AGENTS)], timestamp=1_700_000_000.0 + i, cpu_usage=float(i)) for i in range(9)]
    store = FileStore(json_file, fsync=False)
    statuses = tuple(AgentStatus(agent=s.agent, timestamp=s.timestamp, state="up") for s in ours)
    store.write(Batch(tuple(ours), (), statuses))
    store.close()
    with open(json_file, "ab") as handle:
        handle.write(b"".join(line + b"\n" for line in lines))
    reader = FileStore(json_file, readonly=True)
    ours_lines = [s.model_dump_json().encode() for s in ours]
    everything = ours_lines + lines
    for who in (None, agent):
        got = reader.query_samples(0, 2e9, agent=who)
        expected = frames.finish(_reference(everything, SAMPLES, who), SAMPLES, 0, 2e9, who)
        _same(got, expected)
    start, end = 1_700_000_003.0, 1_800_000_010.0
    got = reader.query_samples(start, end, agent=agent)
    _same(got, frames.finish(_reference(everything, SAMPLES, agent), SAMPLES, start, end, agent))


def test_viz_agent_filter_over_a_json_dumps_style_file(tmp_path: Path) -> None:
    """The finding: ``--agent srv-007`` said "no data" over a file written with json.dumps defaults."""
    json_file = tmp_path / "metrics.json"
    records_ = [
        {"agent": name, "timestamp": 1_800_000_000.0 + i, "cpu_usage": 50.0 + i, "memory_usage": 5.0,
         "threat_level": "none", "security_issues": 0}
        for i, name in enumerate(["srv-007", "web-1"] * 5)
    ]
    json_file.write_text("".join(json.dumps(r) + "\n" for r in records_))
    reader = FileStore(json_file, readonly=True)
    frame = reader.query_samples(0, 2e9, agent="srv-007")
    assert list(frame["cpu_usage"]) == [50.0, 52.0, 54.0, 56.0, 58.0]
    # keys in another order never swap columns
    swapped = tmp_path / "swapped.json"
    swapped.write_text('{"agent":"a1","timestamp":1800000000.0,"memory_usage":5.0,"cpu_usage":95.0,'
                       '"threat_level":"none","security_issues":0}\n')
    row = FileStore(swapped, readonly=True).query_samples(0, 2e9).iloc[0]
    assert (row["cpu_usage"], row["memory_usage"]) == (95.0, 5.0)


def test_statuses_too(tmp_path: Path) -> None:
    lines = [b'{"state": "up", "agent": "a1", "timestamp": 1.5, "detail": "x", "latency_ms": 2}',
             b'{"agent":"a1","timestamp":2.5,"state":"timeout","detail":"","latency_ms":null}']
    data = b"".join(line + b"\n" for line in lines)
    _same_statuses = jsonlines.parse(data, STATUSES, small=0)
    pd.testing.assert_frame_equal(_sorted(_same_statuses), _sorted(_reference(lines, STATUSES)), check_exact=True)
    assert AGENT_NAME_PATTERN  # the agents above follow the config's pattern
