"""The alert outbox and its delivery: durable, at least once, stable ids, backoff, fair between agents.

Every test runs the real ``alert_command`` path: a small program on disk that appends what it reads
on stdin to a file (and fails while a switch file exists).
"""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

from secure_collector.alerts import AlertEngine
from secure_collector.config import Thresholds
from secure_collector.hook import AGENT_SHARE, FLOOD_METRIC, SECURITY_BURST, SUMMARY_METRIC, AlertHook
from secure_collector.outbox import alert_id
from secure_collector.sink import STORED_PER_POLL, Delivery, PollResult, Recorder
from secure_collector.spool import Spool
from storage.memory import MemoryStore
from storage.models import Alert, Severity

RECEIVER = """
import os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
document = sys.stdin.buffer.read()
with open(os.path.join(here, "tries"), "ab") as tries:
    tries.write(b"%f\\n" % time.monotonic())
if os.path.exists(os.path.join(here, "down")):
    sys.exit(1)
with open(os.path.join(here, "received"), "ab") as out:
    out.write(document + b"\\n")
"""


def receiver(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "receiver.py"
    path.write_text(f"#!{sys.executable}\n{RECEIVER}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def received(folder: Path) -> list[dict[str, Any]]:
    path = folder / "received"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def alert(agent: str, n: int, severity: Severity = "warning", metric: str | None = None) -> Alert:
    return Alert(
        agent=agent,
        timestamp=1_800_000_000.0 + n,
        metric=metric or f"security.exec_from_tmp.{n:010x}",
        severity=severity,
        message=f"finding {n}",
    )


def test_what_the_command_did_not_take_waits_on_disk_and_goes_at_the_next_start_with_the_same_id(
    tmp_path: Path,
) -> None:
    """Why #2: alerts queued at exit were dropped while the state said they had fired."""
    program = receiver(tmp_path / "rx")
    (tmp_path / "rx" / "down").touch()
    alerts = [alert(f"web{n % 3}", n, metric=f"cpu_usage{n}") for n in range(30)]
    first = AlertHook([str(program)], tmp_path / "outbox")
    first.submit(alerts)
    assert first.close(timeout=0.5) == 30  # the receiver is down: nothing taken, everything kept
    assert received(tmp_path / "rx") == []
    assert len(list((tmp_path / "outbox").glob("*.alert"))) == 30
    failed = first.delivery_alerts(final=True)
    assert sorted((a.agent, a.metric, a.value, a.severity) for a in failed) == [
        (f"web{n}", "alert_delivery", 10, "warning") for n in range(3)
    ]

    (tmp_path / "rx" / "down").unlink()
    second = AlertHook([str(program)], tmp_path / "outbox")  # the next start
    assert second.close(timeout=30) == 0
    got = received(tmp_path / "rx")
    assert sorted(d["id"] for d in got) == sorted(alert_id(a) for a in alerts)  # all 30, ids stable
    assert sorted(d["metric"] for d in got) == sorted(a.metric for a in alerts)
    assert not list((tmp_path / "outbox").glob("*.alert"))
    assert [(a.metric, a.state) for a in second.delivery_alerts()] == []  # nothing failed in this run


def test_a_failing_command_is_retried_with_backoff_not_hammered(tmp_path: Path) -> None:
    program = receiver(tmp_path / "rx")
    (tmp_path / "rx" / "down").touch()
    hook = AlertHook([str(program)], tmp_path / "outbox")
    hook.submit([alert("web1", n, metric=f"m{n}") for n in range(10)])
    tries_file = tmp_path / "rx" / "tries"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not tries_file.exists() or len(tries_file.read_text().split()) < 3):
        time.sleep(0.05)  # waiting for the third try, bounded
    assert hook.close(timeout=0) == 10  # failing: nothing taken, nothing dropped, no backoff at exit
    tries = [float(t) for t in tries_file.read_text().split()]
    # ten alerts, but tries 1 s then 2 s apart (consecutive failures pause all deliveries), not ten at once
    assert len(tries) == 3
    assert tries[1] - tries[0] >= 0.9 and tries[2] - tries[1] >= 1.9
    stored = hook.delivery_alerts()
    assert [(a.metric, a.value) for a in stored] == [("alert_delivery", 3)]  # 3 different alerts failed once


def test_one_agents_flood_does_not_hold_back_anothers_critical_alert(tmp_path: Path) -> None:
    """Why #3: one queue for every agent let one agent's 512 alerts a poll keep an honest page out."""
    program = receiver(tmp_path / "rx")
    hook = AlertHook([str(program)], tmp_path / "outbox")
    flood = [alert("web-07", n, "critical") for n in range(500)]
    honest = alert("db-01", 0, "critical", metric="cpu_usage")
    raised = hook.submit([*flood, honest])
    assert [(a.agent, a.metric, a.severity) for a in raised] == [("web-07", FLOOD_METRIC, "critical")]
    waiting = list((tmp_path / "outbox").glob("*.alert"))
    assert len(waiting) == SECURITY_BURST + 1 + 1 + 1  # the burst, the flood alert, one summary, the honest one
    assert hook.close(timeout=60) == 0
    got = received(tmp_path / "rx")
    order = [(d["agent"], d["metric"]) for d in got]
    assert order.index(("db-01", "cpu_usage")) <= 1  # round robin among critical alerts: first or second
    summary = next(d for d in got if d["metric"] == SUMMARY_METRIC)
    assert summary["agent"] == "web-07" and summary["severity"] == "critical"
    assert summary["value"] == 500 - SECURITY_BURST
    assert summary["message"] == f"{500 - SECURITY_BURST} more alerts from web-07, most severe: critical"
    assert ("web-07", FLOOD_METRIC) in order
    assert len(got) == len(waiting)


def test_each_agent_has_a_bounded_share_of_the_outbox(tmp_path: Path) -> None:
    program = receiver(tmp_path / "rx")
    (tmp_path / "rx" / "down").touch()  # nothing leaves: what waits is what was admitted
    hook = AlertHook([str(program)], tmp_path / "outbox")
    hook.submit([alert("web-07", n, metric=f"cpu{n}") for n in range(100)] + [alert("db-01", 1, metric="disk")])
    hook.close(timeout=0)
    names = [json.loads(p.read_text())["alert"] for p in (tmp_path / "outbox").glob("*.alert")]
    per_agent = {a: [n for n in names if n["agent"] == a] for a in ("web-07", "db-01")}
    assert len(per_agent["web-07"]) == AGENT_SHARE + 1  # its share, and one summary of the rest
    summary = next(n for n in per_agent["web-07"] if n["metric"] == SUMMARY_METRIC)
    assert summary["value"] == 100 - AGENT_SHARE
    assert [n["metric"] for n in per_agent["db-01"]] == ["disk"]


def test_storage_keeps_the_most_severe_alerts_of_a_poll_and_counts_the_rest(tmp_path: Path) -> None:
    from secure_collector.validate import to_sample, validate_answer
    from tests.collector.answers import good_answer

    findings = [
        {"kind": "exec_from_tmp", "severity": "high" if n == 200 else "low", "evidence": {"path": f"/tmp/{n}"}}
        for n in range(256)
    ]
    answer = good_answer()
    answer["security"]["findings"] = findings
    sample = to_sample(validate_answer(answer, "localhost"), 1_800_000_000.0)
    store = MemoryStore()
    recorder = Recorder(Delivery(store, Spool(tmp_path / "spool", 1024 * 1024)), AlertEngine(Thresholds()))
    recorder.add(PollResult("localhost", 1_800_000_000.0, "up", "", 1.0, sample))
    recorder.flush()
    alerts = [a for a in store.alerts if a.agent == "localhost"]
    assert len(alerts) == STORED_PER_POLL
    summary = alerts[-1]
    assert summary.metric == SUMMARY_METRIC and summary.value is not None
    assert len(alerts) - 1 + summary.value >= 256 + 1  # every alert stored or counted (findings, threat level)
    assert any(a.severity == "critical" and a.metric.startswith("security.") for a in alerts)  # the worst is kept
