"""Acceptance of issue 13: one agent cannot stop, silence or fool the collector.

End to end, one test per finding: real agents, the real collector (``secure-collector`` as ``cli``
builds it), and hostile TLS agents (:class:`~tests.collector.fakeagent.FakeAgent`, a small TLS server with
an agent certificate of the test CA). Each shows the honest outcome:

1. an answer with ``Content-Length: 1²``, then fuzzed answers: the loop goes on storing the honest agent;
2. alerts ``alert_command`` did not take before a ``--once`` exit arrive at the next run, all of them;
3. one agent flooding findings: another agent's critical alert still reaches the command, early;
4. newlines and controls in what an agent sends: one status line per agent, no forged log record;
5. two slow-but-valid agents with ``max_workers: 2``: the healthy agent is polled at every tick;
6. audit records that never link: one new central copy a sweep at most, a few log lines, one alert.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from secure_collector import cli
from secure_collector.hook import FLOOD_METRIC, SUMMARY_METRIC
from secure_collector.outbox import alert_id
from storage.models import Alert
from tests.collector.answers import good_answer
from tests.collector.fakeagent import FakeAgent, Reply, answering, http, xmlrpc_answer
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.collector.mutations import hostile_answer
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI

RECEIVER = """#!/bin/sh
# an alert receiver: appends each document to received; refuses (exit 1) once "limit" documents are in
here=$(dirname "$0")
if [ -f "$here/limit" ] && [ "$(wc -l < "$here/received" 2>/dev/null || echo 0)" -ge "$(cat "$here/limit")" ]; then
    exit 1
fi
cat >> "$here/received"
echo >> "$here/received"
"""


def _receiver(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / "receive.sh"
    program.write_text(RECEIVER)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program


def _received(folder: Path) -> list[dict[str, Any]]:
    path = folder / "received"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _run(data: dict[str, Any], folder: Path, sweeps: int) -> cli.Collector:
    collector = cli.build(cli._arguments(["--config", str(write_config(folder, data))]), [])
    runner = threading.Thread(target=collector.poller.run, kwargs={"max_sweeps": sweeps})
    runner.start()
    runner.join(timeout=60)
    assert not runner.is_alive()
    collector.close()
    return collector


@pytest.fixture
def pki(make_pki: Callable[..., TestPKI], tmp_path: Path) -> TestPKI:
    names = ["honest", "hostile", "slow0", "slow1", *(f"web{n}" for n in range(5))]
    return make_pki(tmp_path / "pki", agents=[f"{n}=localhost,127.0.0.1" for n in names], collectors=["collector"])


def test_1_an_answer_with_content_length_1_squared_and_fuzzed_answers_do_not_stop_the_loop(
    pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    honest = start_agent(pki, "honest")
    rng = random.Random(13)
    calls = itertools.count()

    def answer(body: bytes) -> bytes | Reply:
        if next(calls) == 0:  # the answer that used to kill secure-collector
            return "HTTP/1.1 200 OK\r\nContent-Length: 1\u00b2\r\n\r\nx".encode("latin-1")
        return hostile_answer(rng, "hostile")

    hostile = FakeAgent(pki, answer, "hostile")
    try:
        polled = [("honest", honest.host, honest.port), ("hostile", hostile.host, hostile.port)]
        # backoff_max = poll_interval: the hostile agent is tried every sweep, fuzz after fuzz
        data = collector_data(pki, tmp_path, polled, poll_interval=0.25, timeout=0.5, backoff_max=1)
        collector = _run(data, tmp_path, 12)
    finally:
        hostile.stop()
    store = read_store(load(data))
    samples = store.query_samples(*WIDE)
    assert list(samples[samples["agent"] == "honest"]["timestamp"].diff().dropna() < 0.25 * 2.5).count(False) == 0
    assert (samples["agent"] == "honest").sum() == 12  # every sweep, before and after each hostile answer
    statuses = store.query_statuses(*WIDE)
    hostile_states = list(statuses[statuses["agent"] == "hostile"]["state"])
    assert hostile_states[0] == "bad_response" and hostile.requests >= 4
    assert collector.poller._engine.unexpected == 0  # no answer reached the last line of defence either


def test_2_alerts_not_taken_before_a_once_exit_arrive_at_the_next_run(
    pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    breach = {"cpu_usage": 99.0, "memory_usage": 99.0, "disk_usage": 99.0}
    peers = [
        FakeAgent(pki, answering(good_answer(f"web{n}", **breach)), f"web{n}")
        for n in range(5)
    ]
    rx = tmp_path / "rx"
    program = _receiver(rx)
    (rx / "limit").write_text("20\n")  # the receiver takes 20, then fails (as a pager service going down)
    try:
        data = collector_data(
            pki, tmp_path, [(p.name, p.host, p.port) for p in peers], alert_command=[str(program)]
        )
        path = str(write_config(tmp_path, data))
        assert cli.main(["--config", path, "--once"]) == 0
        first = capsys.readouterr()
        assert len(first.out.splitlines()) == 5
        assert re.search(r"10 alerts not delivered to alert_command yet; kept in \S+ and sent at the next start",
                         first.err)
        assert len(_received(rx)) == 20
        store = read_store(load(data))
        records = store.query_alerts(*WIDE).to_dict("records")
        alerts = [Alert.model_validate({k: None if v != v else v for k, v in r.items()}) for r in records]
        raised = [a for a in alerts if a.metric != "alert_delivery"]
        assert len(raised) == 30
        waiting = [a for a in alerts if a.metric == "alert_delivery"]
        assert sum(a.value or 0 for a in waiting) == 10  # storage says how many wait, per agent

        (rx / "limit").unlink()  # the receiver is back
        assert cli.main(["--config", path, "--once"]) == 0
    finally:
        for peer in peers:
            peer.stop()
    got = _received(rx)
    assert len(got) == 30
    assert sorted(d["id"] for d in got) == sorted(alert_id(a) for a in raised)  # each exactly once here
    assert not list((tmp_path / "spool" / "outbox").glob("*.alert"))


def test_3_one_agents_flood_does_not_keep_anothers_critical_alert_from_the_command(
    pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    honest = start_agent(pki, "honest")
    polls = itertools.count()

    def flood(body: bytes) -> bytes:
        base = next(polls) * 1000  # fresh paths each poll: 256 new findings and 256 gone, every poll
        findings = [
            {"kind": "exec_from_tmp", "severity": "high", "summary": "x", "evidence": {"path": f"/tmp/{base + n}"}}
            for n in range(256)
        ]
        answer = good_answer("hostile")
        answer["security"]["findings"] = findings
        return xmlrpc_answer(answer)

    hostile = FakeAgent(pki, flood, "hostile")
    rx = tmp_path / "rx"
    try:
        polled = [("hostile", hostile.host, hostile.port), ("honest", honest.host, honest.port)]
        # system_load 0: the honest agent's first sample raises a critical alert (load >= 2 x 0)
        data = collector_data(
            pki, tmp_path, polled, poll_interval=0.3, alert_command=[str(_receiver(rx))],
            thresholds={"system_load": 0},
        )
        _run(data, tmp_path, 4)
    finally:
        hostile.stop()
    got = _received(rx)
    order = [(d["agent"], d["metric"], d["severity"]) for d in got]
    honest_at = order.index(("honest", "system_load", "critical"))
    assert honest_at <= 2  # critical first, round robin among agents: not behind the flood
    assert ("hostile", FLOOD_METRIC, "critical") in order
    summaries = [d for d in got if d["agent"] == "hostile" and d["metric"] == SUMMARY_METRIC]
    assert summaries and all(d["value"] > 0 for d in summaries)
    store = read_store(load(data))
    alerts = store.query_alerts(*WIDE)
    per_poll = alerts[alerts["agent"] == "hostile"].groupby("timestamp").size()
    assert per_poll.max() <= 64 + 1  # the stored bound per agent and poll (+ the flood alert)
    assert ((alerts["agent"] == "honest") & (alerts["metric"] == "system_load")).sum() == 1


def test_4_newlines_and_controls_from_an_agent_forge_no_status_line_and_no_log_record(
    pki: TestPKI, start_agent: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    honest = start_agent(pki, "honest")
    forged = "\n2026-01-01 00:00:00,000 WARNING secure_collector: forged\r\nhonest  up  1.0 ms\x85\u2028\u202e"
    calls = itertools.count()

    def answer(body: bytes) -> bytes:
        if b"get_metrics" not in body:  # the audit trail's get_audit: nothing to copy
            return xmlrpc_answer({"records": [], "more": False, "gap": False})
        value = good_answer("hostile")
        if next(calls) % 2:  # a kind (an identifier) with a newline: refused, the detail quotes a path
            value["unavailable"] = {f"cpu{forged}": "x"}
        else:  # free text: kept, escaped wherever it is printed
            value["security"]["findings"][0]["summary"] = forged
            value["disks"][0]["mount"] = forged
        body_xml = xmlrpc_answer(value).split(b"\r\n\r\n", 1)[1]
        body_xml = body_xml.replace(b"\r", b"&#13;").replace("\x85".encode(), b"&#133;")
        return http(body_xml)

    hostile = FakeAgent(pki, answer, "hostile")
    log_file = tmp_path / "collector.log"
    try:
        polled = [("honest", honest.host, honest.port), ("hostile", hostile.host, hostile.port)]
        data = collector_data(pki, tmp_path, polled, log_file=str(log_file))
        path = str(write_config(tmp_path, data))
        lines: list[str] = []
        for _ in range(2):
            cli.main(["--config", path, "--once"])
            lines += capsys.readouterr().out.splitlines()
    finally:
        hostile.stop()
    assert len(lines) == 4 and [line.split()[0] for line in lines] == ["honest", "hostile"] * 2
    assert all(line.isprintable() for line in lines)
    assert lines[3].split()[1] == "bad_response"
    records = log_file.read_text().splitlines()
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [a-z_.]+: ")
    assert records and all(stamp.match(r) and r.isprintable() for r in records)
    assert not any(r.startswith("2026-01-01") for r in records)  # the forged record is not a record
    assert any("forged" in r for r in records)  # it is there, escaped, inside a real one
    metrics_log = Path(data["storage"]["metrics_file"]).read_text().splitlines()
    assert all(line.isprintable() for line in metrics_log)


def test_5_slow_but_valid_agents_leave_the_healthy_agent_polled_every_interval(
    pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    honest = start_agent(pki, "honest")
    timeout, interval = 1.0, 0.25

    def slow(name: str) -> Callable[[bytes], bytes]:
        def answer(body: bytes) -> bytes:
            time.sleep(0.7 * timeout)  # the peer's behaviour under test: valid, just before the deadline
            return xmlrpc_answer(good_answer(name))

        return answer

    peers = [FakeAgent(pki, slow(f"slow{n}"), f"slow{n}") for n in range(2)]
    try:
        polled = [(p.name, p.host, p.port) for p in peers] + [("honest", honest.host, honest.port)]
        data = collector_data(pki, tmp_path, polled, poll_interval=interval, timeout=timeout, max_workers=2)
        _run(data, tmp_path, 16)
    finally:
        for peer in peers:
            peer.stop()
    store = read_store(load(data))
    samples = store.query_samples(*WIDE)
    stamps = sorted(samples[samples["agent"] == "honest"]["timestamp"])
    settled = [t for t in stamps if t >= stamps[0] + timeout]  # after the first sweep judged the slow ones
    assert len(settled) >= 8
    assert max(b - a for a, b in itertools.pairwise(settled)) < interval * 2
    assert set(samples["agent"]) == {"honest", "slow0", "slow1"}  # the slow agents are polled too


def test_6_audit_records_that_never_link_start_one_copy_a_sweep_at_most(
    pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found: a hostile agent answering get_audit with sealed records each of which follows a record that is
    not there made every record a chain break, and every break closed the central copy and started a new one:
    a thousand files (or copy_ids) and a thousand log lines per page, 5000 a sweep, from one agent, with the
    storage thread (shared by the fleet) renaming and fsyncing them. Now a second break in one sweep ends
    that agent's fetch for the sweep: the records wait, one break (and at most one new copy) a sweep."""
    from hashlib import sha256

    from secure_agent.audit import seal

    made = itertools.count()

    def answer(body: bytes) -> bytes:
        if b"get_metrics" in body:
            return xmlrpc_answer(good_answer("hostile"))
        records = []
        for _ in range(1000):  # sealed, but each follows a record no one ever saw
            n = next(made)
            fields = {"event": "call", "outcome": "served", "agent": "hostile", "time": "2026-01-01T00:00:00.000000Z"}
            records.append(seal(fields, sha256(str(n).encode()).hexdigest(), n + 1).line)
        return xmlrpc_answer({"records": records, "more": True, "gap": False})

    hostile = FakeAgent(pki, answer, "hostile")
    log_file = tmp_path / "collector.log"
    try:
        data = collector_data(pki, tmp_path, [("hostile", hostile.host, hostile.port)], log_file=str(log_file),
                              audit_fetch={"max_records_per_sweep": 2000})
        path = str(write_config(tmp_path, data))
        outs = []
        for _ in range(2):
            cli.main(["--config", path, "--once"])
            outs.append(capsys.readouterr().out)
    finally:
        hostile.stop()
    assert [out.split()[1] for out in outs] == ["audit_broken", "audit_broken"]
    copies = sorted(p.name for p in load(data).storage.audit_directory.iterdir())
    assert 1 <= len(copies) <= 2, copies[:5]  # one copy a sweep at most
    breaks = [line for line in log_file.read_text().splitlines() if "audit chain broken" in line]
    assert 1 <= len(breaks) <= 6, len(breaks)
    store = read_store(load(data))
    alerts = store.query_alerts(*WIDE)
    assert list(alerts[alerts["metric"] == "audit_chain"]["state"]) == ["firing"] * 2  # one a sweep that broke
