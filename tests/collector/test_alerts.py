"""Alerts fire on transitions with hysteresis, default to hardware limits, carry ATT&CK techniques; the hook."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from secure_collector.alerts import AlertEngine, finding_metric
from secure_collector.config import Thresholds
from secure_collector.errors import AlertHookError
from secure_collector.hook import AlertHook
from secure_collector.outbox import alert_id
from storage.models import Alert, Finding, Sample

_clock = iter(range(1, 10_000))


def _sample(**fields: Any) -> Sample:
    base: dict[str, Any] = {"agent": "web1", "timestamp": float(next(_clock))}
    base.update(fields)
    return Sample(**base)


def _fired(alerts: list[Alert]) -> list[tuple[str, str, str]]:
    return [(a.metric, a.state, a.severity) for a in alerts]


def test_fires_once_on_breach_escalates_and_clears_with_hysteresis() -> None:
    engine = AlertEngine(Thresholds(cpu_usage=80, hysteresis=0.05))
    assert engine.evaluate(_sample(cpu_usage=50)) == []
    assert _fired(engine.evaluate(_sample(cpu_usage=85))) == [("cpu_usage", "firing", "warning")]
    assert engine.evaluate(_sample(cpu_usage=86)) == []  # still in breach: nothing new
    assert engine.evaluate(_sample(cpu_usage=78)) == []  # below 80 but not below 76: no flapping
    assert _fired(engine.evaluate(_sample(cpu_usage=95))) == [("cpu_usage", "firing", "critical")]
    assert engine.evaluate(_sample(cpu_usage=85)) == []  # de-escalation is not news
    cleared = engine.evaluate(_sample(cpu_usage=70))
    assert _fired(cleared) == [("cpu_usage", "cleared", "info")]
    assert cleared[0].value == 70 and cleared[0].threshold == 80
    assert engine.evaluate(_sample(cpu_usage=70)) == []
    assert engine.firing("web1") == {}


def test_each_predecessor_threshold() -> None:
    engine = AlertEngine(Thresholds(cpu_usage=80, system_load=2.0, memory_usage=85, disk_usage=90))
    alerts = engine.evaluate(_sample(cpu_usage=81, load_1=2.5, memory_usage=86, disk_usage=91))
    assert {a.metric for a in alerts} == {"cpu_usage", "system_load", "memory_usage", "disk_usage"}
    assert all(a.state == "firing" and a.agent == "web1" for a in alerts)


def test_temperature_defaults_to_the_hardware_limits() -> None:
    engine = AlertEngine(Thresholds())
    assert engine.evaluate(_sample(cpu_temperature=80, temperature_high=84, temperature_critical=100)) == []
    alerts = engine.evaluate(_sample(cpu_temperature=85, temperature_high=84, temperature_critical=100))
    assert _fired(alerts) == [("cpu_temperature", "firing", "warning")] and alerts[0].threshold == 84
    alerts = engine.evaluate(_sample(cpu_temperature=100, temperature_high=84, temperature_critical=100))
    assert _fired(alerts) == [("cpu_temperature", "firing", "critical")]
    # no hardware limit reported: the predecessor's 70
    other = AlertEngine(Thresholds())
    assert other.evaluate(_sample(agent="pi", cpu_temperature=71))[0].threshold == 70
    # configured threshold wins over the hardware
    strict = AlertEngine(Thresholds(cpu_temperature=60))
    assert strict.evaluate(_sample(cpu_temperature=65, temperature_high=84))[0].threshold == 60


def test_no_sensor_means_no_transition() -> None:
    engine = AlertEngine(Thresholds())
    engine.evaluate(_sample(cpu_temperature=90))
    assert engine.evaluate(_sample(cpu_temperature=None)) == []
    assert "cpu_temperature" in engine.firing("web1")


def _finding(kind: str, technique: str, severity: str = "high", **evidence: Any) -> Finding:
    return Finding(kind=kind, severity=severity, technique=technique, summary=f"{kind} seen\x1b[31m", evidence=evidence)


def test_findings_fire_when_they_appear_and_clear_when_gone() -> None:
    engine = AlertEngine(Thresholds(threat_level="high"))
    brute = _finding("ssh_bruteforce", "T1110", "medium", address="10.0.0.5", count=7)
    dropped = _finding("exec_from_tmp", "T1059", pid=4242, path="/tmp/x")
    alerts = engine.evaluate(_sample(findings=(brute, dropped), threat_level="high", security_issues=2))
    by_metric = {a.metric: a for a in alerts}
    assert by_metric[finding_metric(brute)].technique == "T1110"
    assert by_metric[finding_metric(brute)].severity == "warning" and by_metric[finding_metric(brute)].value == 7
    assert by_metric[finding_metric(dropped)].technique == "T1059"
    assert by_metric["threat_level"].severity == "critical"
    assert "\x1b" not in by_metric[finding_metric(dropped)].message  # agent text is escaped
    # the count grows: same finding, no new alert
    grown = _finding("ssh_bruteforce", "T1110", "medium", address="10.0.0.5", count=50)
    assert engine.evaluate(_sample(findings=(grown, dropped), threat_level="high")) == []
    # the process is gone
    alerts = engine.evaluate(_sample(findings=(grown,), threat_level="medium"))
    assert sorted(_fired(alerts)) == sorted(
        [(finding_metric(dropped), "cleared", "info"), ("threat_level", "cleared", "info")]
    )


def test_agent_state_alerts_and_impostor_technique() -> None:
    engine = AlertEngine(Thresholds())
    assert engine.evaluate_state("web1", "up", 1.0) == []
    down = engine.evaluate_state("web1", "timeout", 2.0, "no answer")
    assert _fired(down) == [("agent_state", "firing", "warning")] and down[0].technique is None
    assert engine.evaluate_state("web1", "unreachable", 3.0) == []
    impostor = engine.evaluate_state("web1", "tls_failure", 4.0, "certificate rejected")
    assert _fired(impostor) == [("agent_state", "firing", "critical")] and impostor[0].technique == "T1557"
    assert _fired(engine.evaluate_state("web1", "up", 5.0)) == [("agent_state", "cleared", "info")]


def _script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "notify.py"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_hook_receives_alert_json_on_stdin_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "received"
    script = _script(
        tmp_path,
        f"import sys\nopen({str(out)!r}, 'ab').write(sys.argv[1].encode() + b' ' + sys.stdin.buffer.read() + b'\\n')",
    )
    pwned = tmp_path / "pwned"
    hook = AlertHook([str(script), f"$(touch {pwned}); `touch {pwned}`"], tmp_path / "outbox")
    alert = AlertEngine(Thresholds()).evaluate(_sample(cpu_usage=99))[0]
    hook.submit([alert])
    assert hook.close(timeout=30) == 0
    assert hook.delivered == 1 and hook.failed == 0
    argument, _, document = out.read_text().partition(" {")
    assert argument.startswith("$(touch") and not pwned.exists()  # an argument, never shell text
    received = json.loads("{" + document)
    assert received["agent"] == "web1" and received["metric"] == "cpu_usage" and received["state"] == "firing"
    assert received["id"] == alert_id(alert) and len(received["id"]) == 32
    assert not list((tmp_path / "outbox").iterdir())  # taken: nothing left waiting


def test_hook_that_hangs_is_killed_after_its_timeout(tmp_path: Path) -> None:
    script = _script(tmp_path, "import time\ntime.sleep(60)")
    hook = AlertHook([str(script)], tmp_path / "outbox", timeout=0.5)
    hook.submit(AlertEngine(Thresholds()).evaluate(_sample(cpu_usage=99))[:1])
    started = time.monotonic()
    assert hook.close(timeout=1.0) == 1  # killed, retried later: it waits in the outbox
    assert time.monotonic() - started < 10
    assert hook.failed == 1 and hook.delivered == 0
    assert len(list((tmp_path / "outbox").glob("*.alert"))) == 1


def test_hook_must_be_an_executable_program(tmp_path: Path) -> None:
    with pytest.raises(AlertHookError, match="alert_command"):
        AlertHook([str(tmp_path / "missing")], tmp_path / "outbox")
    with pytest.raises(AlertHookError, match="alert_command"):
        AlertHook([], tmp_path / "outbox")
