"""docs/benchmarks.md from the benchmarks' results: machine, goals met or missed, every table, profiles.

Rendering is generic: a result's ``tables`` become Markdown tables (columns in the order they first
appear), its ``goals`` join the summary at the top, its ``notes`` become bullets and its ``profile``
(py-spy shares per function) a table of the functions that dominate. A benchmark that printed no
``BENCH_RESULT`` line is shown with its output verbatim.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from bench.result import goal

MAX_VERBATIM_LINES = 80


class Outcome(NamedTuple):
    """One benchmark program's run."""

    name: str
    module: str
    status: str  # "ok", "failed (exit 1)", "timed out after 120 s", "not available: ..."
    seconds: float
    result: dict[str, Any] | None
    stdout: str
    stderr: str


class Expected(NamedTuple):
    """A goal of the issue, and where its number comes from when the benchmark did not judge it."""

    bench: str
    match: str  # lowercase words that a goal's name from that benchmark contains
    name: str
    op: str
    target: float
    unit: str
    keys: tuple[str, ...] = ()  # else: the first number under one of these keys in the result


EXPECTED = (
    Expected("agent", "p50, kept-alive", "agent get_metrics p50, kept-alive", "<", 1.0, "ms"),
    Expected("agent", "p50, new tls", "agent get_metrics p50, new TLS connection", "<", 3.0, "ms"),
    Expected("agent", "cpu per get_metrics", "agent CPU per get_metrics call", "<=", 0.5, "ms"),
    Expected("agent", "faster than glances", "at least 4x faster than Glances getAll", ">=", 4.0, "x"),
    Expected("agent", "faster than node_exporter", "at least 4x faster than node_exporter", ">=", 4.0, "x"),
    Expected(
        "collector",
        "polls",
        "collector polls/s per core (signing, validation, storage)",
        ">=",
        1700.0,
        "polls/s/core",
        ("polls_per_s_per_core", "polls_per_second_per_core", "polls_per_core", "polls_s_core"),
    ),
    Expected("idle", "idle cpu", "agent idle CPU at a 30 s poll interval", "<", 0.1, "% of a core"),
    Expected("idle", "resident memory", "agent idle resident memory", "<", 60.0, "MB"),
)


def find_number(value: Any, keys: Sequence[str]) -> float | None:
    """The first number stored under one of ``keys`` anywhere in a JSON value (depth-first)."""
    if isinstance(value, Mapping):
        for key in keys:
            found = value.get(key)
            if isinstance(found, int | float) and not isinstance(found, bool):
                return float(found)
        children: Iterable[Any] = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return None
    for child in children:
        number = find_number(child, keys)
        if number is not None:
            return number
    return None


def collect_goals(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """The issue's goals in a fixed order, each from its benchmark (or 'not measured' and why)."""
    by_name = {outcome.name: outcome for outcome in outcomes}
    rows: list[dict[str, Any]] = []
    used: set[int] = set()
    for expected in EXPECTED:
        outcome = by_name.get(expected.bench)
        result = outcome.result if outcome else None
        goals = result.get("goals", []) if result else []
        chosen = next(
            (g for g in goals if isinstance(g, dict) and expected.match in str(g.get("name", "")).lower()),
            None,
        )
        if chosen is not None:
            used.add(id(chosen))
            rows.append({**chosen, "bench": expected.bench})
            continue
        why = "benchmark did not run" if outcome is None else f"bench {expected.bench}: {outcome.status}"
        number = find_number(result, expected.keys) if result and expected.keys else None
        if result and number is None:
            why = f"bench {expected.bench} reported no figure for it"
        made = goal(expected.name, number, expected.op, expected.target, expected.unit, "" if number else why)
        rows.append({**made, "bench": expected.bench})
    for outcome in outcomes:  # goals a benchmark reports beyond the list
        for extra in (outcome.result or {}).get("goals", []):
            if isinstance(extra, dict) and id(extra) not in used:
                rows.append({**extra, "bench": outcome.name})
    return rows


def cell(value: Any) -> str:
    """A value as a Markdown table cell: 4 significant digits, pipes escaped, one line."""
    if value is None:
        return ""
    if isinstance(value, float):
        text = f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    elif isinstance(value, dict | list):
        text = json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A Markdown table of dict rows; columns in the order keys first appear."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    if not columns:
        return []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return lines


def _status(row: Mapping[str, Any]) -> str:
    met = row.get("met")
    return "**met**" if met is True else "**MISSED**" if met is False else "not measured"


def goals_section(goals: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| goal | target | measured | status | by how much | detail |", "|---|---|---|---|---|---|"]
    for row in goals:
        unit = row.get("unit", "")
        value = row.get("value")
        measured = "" if value is None else f"{cell(value)} {unit}"
        lines.append(
            f"| {cell(row.get('name'))} | {row.get('op', '')} {cell(row.get('target'))} {unit} | {measured} "
            f"| {_status(row)} | {cell(row.get('miss'))} | {cell(row.get('detail'))} |"
        )
    return lines


def profile_section(profile: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for phase, data in profile.items():
        if not isinstance(data, Mapping) or not ({"self", "total", "error"} & set(data)):
            text = json.dumps(data, indent=1, default=str)[:4000]
            lines += [f"Profile ({phase}):", "", "```json", text, "```", ""]
            continue
        if "error" in data:
            lines += [f"Profile ({phase}): not taken: {data['error']}", ""]
            continue
        busy = f", Python running {data['gil_busy_percent']}% of the time" if "gil_busy_percent" in data else ""
        lines += [
            f"Profile of our agent, {phase} (py-spy --gil: {data.get('samples', 0)} samples of the thread "
            f"running Python code{busy}; C work that releases the GIL, OpenSSL and system calls, is not sampled; "
            "*self* = in the function's own code, *total* = anywhere on the stack):",
            "",
            "| self % | function | | total % | function |",
            "|---:|---|---|---:|---|",
        ]
        own, total = data.get("self", []), data.get("total", [])
        for index in range(max(len(own), len(total))):
            left = own[index] if index < len(own) else ["", ""]
            right = total[index] if index < len(total) else ["", ""]
            lines.append(f"| {cell(left[1])} | {cell(left[0])} | | {cell(right[1])} | {cell(right[0])} |")
        lines.append("")
    return lines


def bench_section(outcome: Outcome, limits: str) -> list[str]:
    result = outcome.result
    title = str(result.get("title", outcome.name)) if result else outcome.name
    lines = [f"## {title}", "", f"`python -m {outcome.module}`: {outcome.status}, {outcome.seconds:.0f} s.", ""]
    if limits:
        lines += [f"What limits these figures: {limits}", ""]
    if result is None:
        streams = [("Output", outcome.stdout)]
        if outcome.status != "ok" or not outcome.stdout.strip():
            streams.append(("stderr", outcome.stderr))
        for label, text in streams:
            output = text.strip().splitlines()
            if not output:
                continue
            shown = output[-MAX_VERBATIM_LINES:]
            cut = f" (last {MAX_VERBATIM_LINES} lines)" if len(output) > len(shown) else ""
            lines += [f"{label}, verbatim{cut}:", "", "```", *shown, "```", ""]
        return lines
    if result.get("params"):
        lines += [f"Parameters: `{json.dumps(result['params'], separators=(', ', ': '))}`", ""]
    for item in result.get("tables", []):
        if isinstance(item, Mapping) and item.get("rows"):
            lines += [f"**{item.get('title', '')}**", "", *table(item["rows"]), ""]
    goals = [g for g in result.get("goals", []) if isinstance(g, Mapping)]
    if goals:
        lines += [*goals_section(goals), ""]
    lines += [f"- {cell(note)}" for note in result.get("notes", [])]
    if result.get("notes"):
        lines.append("")
    if isinstance(result.get("profile"), Mapping):
        lines += profile_section(result["profile"])
    known = {"bench", "title", "params", "tables", "goals", "notes", "profile"}
    rest = {key: value for key, value in result.items() if key not in known}
    if rest:
        lines += ["Further figures:", "", "```json", json.dumps(rest, indent=1, default=str)[:6000], "```", ""]
    if outcome.status != "ok" and outcome.stderr.strip():
        lines += ["stderr (last lines):", "", "```", *outcome.stderr.strip().splitlines()[-20:], "```", ""]
    return lines
