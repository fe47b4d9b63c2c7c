"""The one machine-readable line a benchmark prints last: ``BENCH_RESULT {json}``.

Shape (every key optional except ``bench``; ``run_all`` renders what is there, see bench/README.md)::

    {"bench": "agent", "title": "...", "params": {...},
     "tables": [{"title": "...", "rows": [{"column": value, ...}, ...]}],
     "goals": [{"name": "...", "value": 0.8, "op": "<", "target": 1.0, "unit": "ms",
                "met": true, "miss": null, "detail": "..."}],
     "notes": ["..."], "profile": {...}}
"""

from __future__ import annotations

import json
import math
from typing import Any, NotRequired, TypedDict

PREFIX = "BENCH_RESULT "


class Goal(TypedDict):
    name: str
    value: float | None
    op: str
    target: float
    unit: str
    met: bool | None  # None: not measured
    miss: str | None  # by how much it is missed, in words
    detail: str
    profile: NotRequired[str]  # the key in the result's "profile" that explains this goal


def _met(value: float, op: str, target: float) -> bool:
    if op == "<":
        return value < target
    if op == "<=":
        return value <= target
    if op == ">":
        return value > target
    if op == ">=":
        return value >= target
    raise ValueError(f"unknown comparison {op!r}")


def goal(
    name: str,
    value: float | None,
    op: str,
    target: float,
    unit: str,
    detail: str = "",
    *,
    profile: str | None = None,
) -> Goal:
    """A goal and whether ``value`` meets it; ``miss`` says by how much it does not.

    ``profile`` names the entry of the result's ``profile`` that shows where the time went.
    """
    made = _judge(name, value, op, target, unit, detail)
    if profile is not None:
        made["profile"] = profile
    return made


def _judge(name: str, value: float | None, op: str, target: float, unit: str, detail: str) -> Goal:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Goal(name=name, value=None, op=op, target=target, unit=unit, met=None, miss=None, detail=detail)
    met = _met(value, op, target)
    miss = None
    if not met:
        if op in ("<", "<="):
            ratio = f" ({value / target:.2f}x the goal)" if target else ""
            miss = f"{value - target:.3g} {unit} over{ratio}"
        else:
            ratio = f" ({value / target:.0%} of the goal)" if target else ""
            miss = f"{target - value:.3g} {unit} short{ratio}"
    return Goal(name=name, value=value, op=op, target=target, unit=unit, met=met, miss=miss, detail=detail)


def show(result: dict[str, Any]) -> None:
    """The result's tables and goals for a reader, then the ``BENCH_RESULT`` line (:func:`emit`)."""
    for table in result.get("tables", []):
        print(table["title"])
        for row in table["rows"]:
            print("  " + ", ".join(f"{key}: {value}" for key, value in row.items()))
    for item in result.get("goals", []):
        value = "not measured" if item["value"] is None else f"{item['value']:.3g} {item['unit']}"
        print(f"{item['name']}: {value} (goal {item['op']} {item['target']})")
    emit(result)


def emit(result: dict[str, Any]) -> None:
    """Print the result line (last, on stdout, one line)."""
    print(PREFIX + json.dumps(result, separators=(",", ":"), default=str), flush=True)


def parse(stdout: str) -> dict[str, Any] | None:
    """The last ``BENCH_RESULT`` line of a benchmark's output, if it printed one that parses."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(PREFIX):
            try:
                value = json.loads(line[len(PREFIX) :])
            except ValueError:
                return None
            return value if isinstance(value, dict) else {"value": value}
    return None
