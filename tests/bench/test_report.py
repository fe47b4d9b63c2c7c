"""The benchmark harness's own logic: statistics, goals, result lines, the report, py-spy summaries.

The benchmarks themselves are not tests (they take minutes and need Glances and node_exporter);
what decides their verdicts is, and runs here in well under a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import pyspy, report, run_all
from bench.measure import cpu_times, percentile, process_tree, summarize, threads
from bench.result import emit, goal, parse


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


@settings(max_examples=50)
@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=200))
def test_summary_is_ordered(samples: list[int]) -> None:
    summary = summarize(samples)
    assert summary.n == len(samples)
    assert summary.minimum <= summary.median <= summary.p99 <= summary.maximum
    assert summary.minimum - 1e-9 <= summary.mean <= summary.maximum + 1e-9  # a mean of equal floats may round


def test_goal_met_and_missed_by_how_much() -> None:
    met = goal("p50", 0.8, "<", 1.0, "ms")
    assert met["met"] is True and met["miss"] is None
    over = goal("p50", 1.5, "<", 1.0, "ms", "why", profile="kept-alive")
    assert over["met"] is False
    assert over["miss"] == "0.5 ms over (1.50x the goal)"
    assert over["profile"] == "kept-alive" and over["detail"] == "why"
    short = goal("rate", 850.0, ">=", 1700.0, "polls/s")
    assert short["met"] is False and short["miss"] == "850 polls/s short (50% of the goal)"
    assert goal("failed calls", 2, "<=", 0, "calls")["miss"] == "2 calls over"
    unmeasured = goal("p50", None, "<", 1.0, "ms", "not built")
    assert unmeasured["met"] is None and unmeasured["value"] is None
    with pytest.raises(ValueError):
        goal("x", 1.0, "~", 1.0, "ms")


def test_result_line_round_trips_and_the_last_one_wins(capsys: pytest.CaptureFixture[str]) -> None:
    emit({"bench": "a", "value": 1})
    emit({"bench": "b", "value": 2})
    out = capsys.readouterr().out
    assert parse("noise\n" + out) == {"bench": "b", "value": 2}
    assert parse("no result here") is None
    assert parse("BENCH_RESULT {not json") is None


def _outcome(name: str, result: dict[str, Any] | None, status: str = "ok") -> report.Outcome:
    return report.Outcome(name, f"bench.bench_{name}", status, 1.0, result, "plain output\n", "")


def test_goals_come_in_the_issues_order_with_what_is_missing_said() -> None:
    agent = {"bench": "agent", "goals": [goal("agent get_metrics p50, kept-alive", 0.7, "<", 1.0, "ms")]}
    collector = {"bench": "collector", "tables": [{"rows": [{"polls_per_second_per_core": 1800.0}]}]}
    extra = {"bench": "storage", "goals": [goal("rows per second", 30_000.0, ">=", 25_000.0, "rows/s")]}
    rows = report.collect_goals(
        [
            _outcome("agent", agent),
            _outcome("collector", collector),
            _outcome("idle", None, "failed (exit 1)"),
            _outcome("storage", extra),
        ]
    )
    by_name = {row["name"]: row for row in rows}
    assert rows[0]["name"] == "agent get_metrics p50, kept-alive" and rows[0]["met"] is True
    assert by_name["agent get_metrics p50, new TLS connection"]["detail"] == "bench agent reported no figure for it"
    derived = by_name["collector polls/s per core (signing, validation, storage)"]
    assert derived["value"] == 1800.0 and derived["met"] is True
    assert "failed (exit 1)" in by_name["agent idle resident memory"]["detail"]
    assert by_name["rows per second"]["bench"] == "storage"


def test_find_number_searches_nested_values() -> None:
    value = {"a": [{"b": {"polls_per_core": 12}}], "c": True}
    assert report.find_number(value, ("polls_per_core",)) == 12.0
    assert report.find_number({"flag": True}, ("flag",)) is None


def test_markdown_table_escapes_and_unions_columns() -> None:
    lines = report.table([{"a": 1, "b": "x|y"}, {"c": 2.5}])
    assert lines[0] == "| a | b | c |"
    assert lines[2] == "| 1 | x\\|y |  |"
    assert lines[3] == "|  |  | 2.5 |"


def test_a_benchmark_without_result_line_is_shown_verbatim() -> None:
    lines = report.bench_section(_outcome("viz", None, "failed (exit 1)")._replace(stderr="KeyError: 'x'\n"), "")
    assert "plain output" in lines
    assert "KeyError: 'x'" in lines  # why it failed, from stderr
    assert any("failed (exit 1)" in line for line in lines)
    quiet = report.bench_section(_outcome("viz", None)._replace(stderr="progress\n"), "")
    assert "progress" not in quiet


def test_pyspy_summary_counts_self_and_total() -> None:
    raw = [
        "Thread._bootstrap (threading.py:1002);serve (secure_agent/server.py:10);parse (secure_agent/x.py:5) 3",
        "Thread._bootstrap (threading.py:1002);serve (secure_agent/server.py:10) 1",
        "garbage line",
    ]
    summary = pyspy.summarize(raw)
    assert summary["samples"] == 4
    assert summary["self"][0] == ["parse (secure_agent/x.py)", 75.0]
    total = dict((name, share) for name, share in summary["total"])
    assert total["serve (secure_agent/server.py)"] == 100.0
    assert not any(name.startswith("Thread._bootstrap") for name in total)
    assert pyspy.summarize([]) == {"samples": 0, "self": [], "total": []}


def test_proc_readings_of_this_process() -> None:
    me = os.getpid()
    assert process_tree(me)[0] == me
    spent = cpu_times(me)
    assert spent.total > 0 and spent.minus(spent).total == 0
    assert me in threads(me)


def test_report_is_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "docs" / "benchmarks.md"
    run_all.write_atomic(target, "first\n")
    run_all.write_atomic(target, "second\n")
    assert target.read_text() == "second\n"
    assert [p.name for p in target.parent.iterdir()] == ["benchmarks.md"]


def _running(code: str, seconds: float) -> run_all.Running:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    now = time.monotonic()
    return run_all.Running(run_all.Bench("demo", seconds), process, now, now + seconds)


def test_a_failing_benchmark_is_reported_with_its_result() -> None:
    code = "import json; print('BENCH_RESULT ' + json.dumps({'bench': 'demo'})); raise SystemExit(3)"
    outcome = run_all._finish(_running(code, 30))
    assert outcome.status == "failed (exit 3)"
    assert outcome.result == {"bench": "demo"}


def test_a_benchmark_past_its_time_is_stopped_with_its_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_all, "KILL_GRACE", 0.5)  # how long a SIGTERM is given before SIGKILL
    # a grandchild that ignores SIGTERM, as a stuck server might
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    code = (
        "import subprocess, sys, time; "
        f"child = subprocess.Popen([sys.executable, '-c', {stubborn!r}]); print(child.pid, flush=True); time.sleep(60)"
    )
    outcome = run_all._finish(_running(code, 1.5))
    assert outcome.status == "timed out after 2 s"
    assert outcome.seconds < 10
    grandchild = int(outcome.stdout.split()[0])
    stat = Path(f"/proc/{grandchild}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z"
