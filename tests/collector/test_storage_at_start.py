"""Issue 15: storage unusable when the collector starts is an outage like any other, and ``--check``.

A file where ``json_file``'s directory should be made ``secure-collector --once`` exit 2 and poll nothing.
Now the collector polls and spools, retries, and replays exactly once when storage is usable again; only
``--check`` (and the log) say storage is unusable. ``--check`` writes, locks and creates nothing, so it
runs beside the service of the same files.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.collector.test_cli import RUN_TIMEOUT, _program, _run
from tests.collector.test_once_beside_service import _tree, _wait_for
from tests.plugins.agent import StartAgent
from tests.plugins.pki import TestPKI


def test_a_collector_started_with_its_storage_directory_blocked_spools_then_stores_everything_once(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki, security={"rate_limit": {"per_second": 100, "burst": 100}})
    blocker = tmp_path / "store"
    blocker.write_text("a file where the storage directory should be")
    data = collector_data(test_pki, tmp_path, [("localhost", agent.host, agent.port)], poll_interval=0.2)
    data["storage"]["json_file"] = str(blocker / "data" / "metrics.json")
    data["storage"]["metrics_file"] = str(blocker / "data" / "metrics.log")
    path = write_config(tmp_path, data)
    check = _run("--config", str(path), "--check")
    assert check.returncode == 2 and "storage: storage.json_file:" in check.stderr and "not a directory" in check.stderr
    once = _run("--config", str(path), "--once")
    assert once.returncode == 3, once.stderr  # every agent answered; the sweep waits in the spool
    assert once.stdout.split()[:2] == ["localhost", "up"]
    service = subprocess.Popen([*_program(), "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        spool = Path(data["spool_dir"])

        def spooled() -> int:  # batches waiting: the --once sweep, then one per sweep of the service
            return sum(p.read_bytes().count(b"\n") for p in spool.glob("*.spool"))

        _wait_for(lambda: spooled() >= 6, service, "spool sweeps")
        blocker.unlink()  # the operator fixes it; the collector notices on its next retry
        store_file = Path(data["storage"]["json_file"])
        _wait_for(lambda: store_file.exists() and store_file.read_bytes().count(b"\n") >= 10, service, "store again")
        service.send_signal(signal.SIGTERM)
        _, stderr = service.communicate(timeout=RUN_TIMEOUT)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert service.returncode == 0, stderr
    assert "storage unavailable at start" in stderr and "Traceback" not in stderr
    store = read_store(load(data))
    samples = store.query_samples(*WIDE, agent="localhost")
    statuses = store.query_statuses(*WIDE, agent="localhost")
    stamps = list(samples["timestamp"])
    assert len(stamps) == len(set(stamps))  # nothing stored twice
    up = set(statuses.loc[statuses["state"] == "up", "timestamp"])
    assert set(stamps) == up and len(stamps) >= 10, stderr  # every good poll, spooled or live, stored once


def test_check_passes_and_names_every_problem(test_pki: TestPKI, tmp_path: Path) -> None:
    data = collector_data(test_pki, tmp_path, [("a1", "127.0.0.1", 9)])
    good = _run("--config", str(write_config(tmp_path, data)), "--check")
    assert good.returncode == 0, good.stderr
    assert "ok: file storage writable at" in good.stdout and "ok: spool_dir" in good.stdout
    assert not Path(data["spool_dir"]).exists() and not (tmp_path / "data").exists()  # created nothing
    (tmp_path / "spoolfile").write_text("")
    bad = {**data, "spool_dir": str(tmp_path / "spoolfile" / "x"), "hmac": {**data["hmac"], "key_id": "someone"}}
    result = _run("--config", str(write_config(tmp_path, bad, "bad.json")), "--check")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("secure-collector: ") for line in lines)
    assert "hmac.key_id: 'someone' is not this collector's" in lines[0] and "spool_dir:" in lines[1]


def test_check_beside_the_running_service_touches_none_of_its_state(
    test_pki: TestPKI, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = start_agent(test_pki)
    data = collector_data(
        test_pki,
        tmp_path,
        [("localhost", agent.host, agent.port)],
        poll_interval=3600,
        thresholds={"cpu_usage": 0},
    )
    path = write_config(tmp_path, data)
    spool_dir, data_dir = Path(data["spool_dir"]), Path(data["storage"]["json_file"]).parent
    service = subprocess.Popen([*_program(), "--config", str(path)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for((spool_dir / "alert-state.json").exists, service, "store its first sweep")
        before = _tree(spool_dir, data_dir)
        result = _run("--config", str(path), "--check")
        assert result.returncode == 0, result.stderr
        assert _tree(spool_dir, data_dir) == before
        assert json.loads((spool_dir / "alert-state.json").read_text())["agents"]["localhost"]
        assert service.poll() is None
        service.send_signal(signal.SIGTERM)
        service.communicate(timeout=RUN_TIMEOUT)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert service.returncode == 0
