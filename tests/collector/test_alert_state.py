"""What is firing survives restarts: ``--once`` runs in a row fire an alert once; a bad state file is ignored."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_collector import cli
from secure_collector.alerts import AlertEngine
from secure_collector.alertstate import FILE_NAME, MAX_BYTES, MAX_METRICS, AlertState, state_path
from secure_collector.config import Thresholds
from storage.models import Sample
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI

# Always in breach on any host: a load average and a memory use are never below 0.
BREACH = {"system_load": 0.0, "memory_usage": 0.0}


def _sample(agent: str = "web1", timestamp: float = 1.0, **fields: Any) -> Sample:
    return Sample(agent=agent, timestamp=timestamp, **fields)


def _document(agents: dict[str, Any], **changes: Any) -> bytes:
    return json.dumps({"format": "secure-collector alert state", "version": 1, "agents": agents, **changes}).encode()


# -- the engine's state and the file -------------------------------------------------------------
def test_saved_state_restores_into_a_new_engine_and_nothing_fires_again(tmp_path: Path) -> None:
    first = AlertEngine(Thresholds(cpu_usage=80))
    state = AlertState(tmp_path / FILE_NAME)
    assert [a.metric for a in first.evaluate(_sample(cpu_usage=95))] == ["cpu_usage"]
    assert [a.metric for a in first.evaluate_state("web2", "timeout", 1.0)] == ["agent_state"]
    state.save(first)
    info = (tmp_path / FILE_NAME).stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name != FILE_NAME]  # no temporary left behind

    second = AlertEngine(Thresholds(cpu_usage=80))
    AlertState(tmp_path / FILE_NAME).load(second, {"web1", "web2"})
    assert second.export() == {"web1": {"cpu_usage": "critical"}, "web2": {"agent_state": "warning"}}
    assert second.evaluate(_sample(cpu_usage=96, timestamp=2.0)) == []
    assert second.evaluate_state("web2", "timeout", 2.0) == []
    cleared = second.evaluate(_sample(cpu_usage=10, timestamp=3.0))
    assert [(a.metric, a.state) for a in cleared] == [("cpu_usage", "cleared")]


def test_written_only_when_what_is_firing_changed(tmp_path: Path) -> None:
    engine = AlertEngine(Thresholds(cpu_usage=80))
    path = tmp_path / FILE_NAME
    state = AlertState(path)
    engine.evaluate(_sample(cpu_usage=95))
    state.save(engine)
    path.unlink()
    engine.evaluate(_sample(cpu_usage=97, timestamp=2.0))  # still firing, same severity: no change
    state.save(engine)
    assert not path.exists()
    engine.evaluate(_sample(cpu_usage=10, timestamp=3.0))  # cleared: a change
    state.save(engine)
    assert json.loads(path.read_text())["agents"] == {}


def test_agents_no_longer_polled_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(_document({"kept": {"cpu_usage": "warning"}, "gone": {"disk_usage": "critical"}}))
    engine = AlertEngine(Thresholds())
    state = AlertState(path)
    with caplog.at_level(logging.INFO):
        state.load(engine, {"kept", "other"})
    assert engine.export() == {"kept": {"cpu_usage": "warning"}}
    assert "1 agents no longer polled" in caplog.text
    state.save(engine)  # rewritten without them, though nothing fired since
    assert json.loads(path.read_text())["agents"] == {"kept": {"cpu_usage": "warning"}}


def test_shards_keep_their_own_files(tmp_path: Path) -> None:
    assert state_path(tmp_path) == tmp_path / FILE_NAME
    assert state_path(tmp_path, (2, 3)) == tmp_path / "alert-state-2of3.json"


def _too_many_metrics() -> bytes:
    return _document({"web1": {f"security.x.{i:010x}": "info" for i in range(MAX_METRICS + 1)}})


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\x00garbage{", "not an alert state file"),
        (b"", "not an alert state file"),
        (b"[" * 100_000 + b"]" * 100_000, "not an alert state file"),
        (_document({}, format="another program"), "not an alert state file"),
        (_document({}, version=2), "not an alert state file"),
        (_document({}, extra=1), "not an alert state file"),
        (_document({"../etc": {"cpu_usage": "warning"}}), "not an alert state file"),
        (_document({"web1": {"cpu_usage": "fatal"}}), "not an alert state file"),
        (_document({"web1": {"rm -rf": "warning"}}), "not an alert state file"),
        (_document({"web1": {"cpu_usage": 1}}), "not an alert state file"),
        (_document({"web1": ["cpu_usage"]}), "not an alert state file"),
        (_too_many_metrics(), "not an alert state file"),
    ],
)
def test_a_corrupt_or_foreign_file_is_logged_and_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes, reason: str
) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    engine = AlertEngine(Thresholds())
    AlertState(path).load(engine, {"web1"})
    assert engine.export() == {}
    assert f"{path}: {reason}" in caplog.text and "ignored" in caplog.text


def test_an_oversized_directory_or_symlinked_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    valid = _document({"web1": {"cpu_usage": "warning"}})
    big = tmp_path / "big" / FILE_NAME
    big.parent.mkdir()
    with open(big, "wb") as handle:
        handle.write(valid)
        handle.truncate(MAX_BYTES + 1)  # sparse: costs no disk
    folder = tmp_path / "dir" / FILE_NAME
    folder.mkdir(parents=True)
    link = tmp_path / "link" / FILE_NAME
    link.parent.mkdir()
    (tmp_path / "elsewhere.json").write_bytes(valid)
    link.symlink_to(tmp_path / "elsewhere.json")
    for path, reason in ((big, "larger than"), (folder, "not a regular file"), (link, "cannot read")):
        engine = AlertEngine(Thresholds())
        AlertState(path).load(engine, {"web1"})
        assert engine.export() == {}
        assert f"{path}: {reason}" in caplog.text


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300) | st.text(max_size=200).map(lambda t: _document({"web1": {t: "warning"}})))
def test_any_bytes_load_without_raising(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    engine = AlertEngine(Thresholds())
    AlertState(path).load(engine, {"web1"})
    for metrics in engine.export().values():
        assert all(len(metric) <= 64 for metric in metrics)


def test_a_state_that_cannot_be_saved_is_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "missing" / FILE_NAME
    engine = AlertEngine(Thresholds(cpu_usage=80))
    state = AlertState(path)
    engine.evaluate(_sample(cpu_usage=95))
    state.save(engine)  # the directory is gone: logged, no exception
    assert "cannot save the alert state" in caplog.text
    path.parent.mkdir()
    state.save(engine)
    assert json.loads(path.read_text())["agents"] == {"web1": {"cpu_usage": "critical"}}


# -- the program, against a real agent -----------------------------------------------------------
def _once(config: Path) -> int:
    return cli.main(["--config", str(config), "--once"])


def _firing(data: dict[str, Any], metric: str) -> list[str]:
    alerts = read_store(load(data)).query_alerts(*WIDE)
    return list(alerts[alerts["metric"] == metric]["state"])


def test_once_runs_in_a_row_fire_an_alert_once_and_clear_it_after_a_restart(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki)
    polled = [("localhost", agent.host, agent.port)]
    breach = collector_data(test_pki, tmp_path, polled, thresholds=BREACH)
    path = write_config(tmp_path, breach)
    assert _once(path) == 0
    assert _once(path) == 0
    assert _firing(breach, "system_load") == ["firing"]  # across both runs: once
    assert _firing(breach, "memory_usage") == ["firing"]
    saved = json.loads((tmp_path / "spool" / FILE_NAME).read_text())
    assert saved["agents"]["localhost"]["system_load"] in ("warning", "critical")

    recovered = collector_data(test_pki, tmp_path, polled, thresholds=dict(BREACH, system_load=1e9))
    assert _once(write_config(tmp_path, recovered, "recovered.json")) == 0
    assert _firing(breach, "system_load") == ["firing", "cleared"]
    assert _firing(breach, "memory_usage") == ["firing"]  # still in breach: still not repeated
    assert "system_load" not in json.loads((tmp_path / "spool" / FILE_NAME).read_text())["agents"]["localhost"]


def test_once_with_a_corrupt_state_file_logs_it_and_runs(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = start_agent(test_pki)
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)], thresholds=BREACH)
    state = tmp_path / "spool" / FILE_NAME
    state.parent.mkdir(mode=0o700)
    state.write_bytes(b'{"format": "secure-collector alert state", "version": 1, "agents": {"localhost": ')
    os.chmod(state, 0o644)
    assert _once(write_config(tmp_path, data)) == 0
    assert f"{state}: not an alert state file of this collector" in caplog.text
    assert _firing(data, "system_load") == ["firing"]
    assert json.loads(state.read_text())["agents"]["localhost"]["system_load"] in ("warning", "critical")
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
