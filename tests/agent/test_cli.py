"""``secure-agent`` as a program: refusals to start (cases 2, 30), --check, signals, restart, fail closed."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from secure_agent.audit import verify_file
from tests.agent import wire
from tests.plugins.agent import RPCStatusError, agent_config_data, rpc_call
from tests.plugins.pki import TestPKI

START_TIMEOUT = 20.0
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def _config(pki: TestPKI, folder: Path, **overrides: Any) -> Path:
    path = folder / "agent.json"
    path.write_text(json.dumps(agent_config_data(pki, "localhost", folder, **overrides)))
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "secure_agent", *args], capture_output=True, text=True, timeout=60
    )


def _assert_one_line_refusal(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_check_passes_on_a_good_setup(test_pki: TestPKI, tmp_path: Path) -> None:
    result = _run("--config", str(_config(test_pki, tmp_path)), "--check")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "audit.log").exists()  # --check changes nothing


@pytest.mark.parametrize(
    ("allowed", "check"),
    [
        (["0.0.0.0/0"], False),
        (["0.0.0.0/0"], True),
        (["::/0"], True),
        ([], False),
        ([], True),
        (["10.0.0.1", "0.0.0.0/0"], True),
    ],
)
def test_open_or_empty_allowlist_refused(test_pki: TestPKI, tmp_path: Path, allowed: list[str], check: bool) -> None:
    config = _config(test_pki, tmp_path, security={"allowed_ips": allowed})
    result = _run("--config", str(config), *(["--check"] if check else []))
    _assert_one_line_refusal(result, str(config), "security.allowed_ips")


@pytest.mark.parametrize("which", ["agent_key", "hmac_key"])
@pytest.mark.parametrize("mode", [0o640, 0o604])
def test_key_readable_by_others_refused(
    make_pki: Any, tmp_path: Path, which: str, mode: int
) -> None:
    pki = make_pki(tmp_path / "pki")
    path = pki.agent_files()[1] if which == "agent_key" else pki.collector_files()[2]
    path.chmod(mode)
    config = _config(pki, tmp_path)
    for args in (["--check"], []):
        _assert_one_line_refusal(_run("--config", str(config), *args), str(path), "chmod 600")
    assert not (tmp_path / "audit.log").exists()


@pytest.mark.parametrize("key", ["cert", "key", "ca", "crl"])
def test_missing_tls_material_refused(test_pki: TestPKI, tmp_path: Path, key: str) -> None:
    missing = tmp_path / f"missing-{key}.pem"
    config = _config(test_pki, tmp_path, tls={key: str(missing)})
    _assert_one_line_refusal(_run("--config", str(config), "--check"), str(missing))
    if key == "cert":
        _assert_one_line_refusal(_run("--config", str(config)), str(missing))


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{", "not valid JSON"), ("[]", "JSON object")],
)
def test_bad_config_refused(tmp_path: Path, content: str, needle: str) -> None:
    config = tmp_path / "agent.json"
    config.write_text(content)
    _assert_one_line_refusal(_run("--config", str(config), "--check"), str(config), needle)


def test_every_missing_section_named_at_once(tmp_path: Path) -> None:
    config = tmp_path / "agent.json"
    config.write_text('{"name": "x"}')
    result = _run("--config", str(config), "--check")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"secure-agent: {config}: {key}: is required" for key in ("tls", "security", "audit_log")
    ]


def test_unknown_key_and_bad_limits_refused(test_pki: TestPKI, tmp_path: Path) -> None:
    config = _config(test_pki, tmp_path, server={"max_connections": 4, "max_connections_per_ip": 8})
    _assert_one_line_refusal(_run("--config", str(config), "--check"), "server")
    config = _config(test_pki, tmp_path, surprise=1)
    _assert_one_line_refusal(_run("--config", str(config), "--check"), "surprise", "unknown key")


def test_missing_config_and_help() -> None:
    _assert_one_line_refusal(_run("--config", "/nonexistent/agent.json"), "/nonexistent/agent.json")
    assert _run("--help").returncode == 0


@dataclass
class Process:
    process: subprocess.Popen[str]
    lines: queue.Queue[str]
    pump: threading.Thread
    name: str = "localhost"
    host: str = ""
    port: int = 0

    def wait_for(self, pattern: re.Pattern[str], timeout: float = START_TIMEOUT) -> re.Match[str]:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern.pattern} within {timeout} s") from None
            match = pattern.search(line)
            if match:
                return match


def _start(config: Path, *, preexec: str = "") -> Process:
    code = f"import sys; {preexec}\nfrom secure_agent.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--config", str(config)], stderr=subprocess.PIPE, text=True
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    running = Process(process, lines, reader)
    match = running.wait_for(_LISTENING)
    running.host, running.port = match.group(1), int(match.group(2))
    return running


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for running in started:
        if running.process.poll() is None:
            running.process.kill()
        running.process.wait(timeout=10)
        running.pump.join(timeout=10)
        if running.process.stderr is not None:
            running.process.stderr.close()


def _signal_and_wait(running: Process, signum: int) -> int:
    running.process.send_signal(signum)
    return running.process.wait(timeout=15)


def test_serve_reload_stop(test_pki: TestPKI, tmp_path: Path, processes: list[Process]) -> None:
    config = _config(test_pki, tmp_path)
    running = _start(config)
    processes.append(running)
    assert rpc_call(running, test_pki, "ping") == "pong"
    running.process.send_signal(signal.SIGHUP)
    running.wait_for(re.compile("reloaded"))
    assert rpc_call(running, test_pki, "ping") == "pong"
    assert _signal_and_wait(running, signal.SIGTERM) == 0
    events = [json.loads(line)["event"] for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert events == ["start", "call", "reload", "call", "stop"]
    assert verify_file(tmp_path / "audit.log").ok


def test_sigint_stops_cleanly(test_pki: TestPKI, tmp_path: Path, processes: list[Process]) -> None:
    running = _start(_config(test_pki, tmp_path))
    processes.append(running)
    assert _signal_and_wait(running, signal.SIGINT) == 0
    assert json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])["event"] == "stop"


def test_restart_does_not_reopen_a_replay_window(test_pki: TestPKI, tmp_path: Path, processes: list[Process]) -> None:
    config = _config(test_pki, tmp_path)
    first = _start(config)
    processes.append(first)
    captured = wire.signed_request(first, test_pki, "ping")
    with wire.tls(first, wire.collector_context(test_pki)) as sock:
        assert wire.exchange(sock, captured).status == 200
    assert _signal_and_wait(first, signal.SIGTERM) == 0
    second = _start(config)  # at once: quite possibly within the same second
    processes.append(second)
    with wire.tls(second, wire.collector_context(test_pki)) as sock:
        assert wire.exchange(sock, captured).status == 401
    assert _signal_and_wait(second, signal.SIGTERM) == 0
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "call", "stop", "start", "token_refused", "stop"]
    assert records[4]["reason"] == "stale"
    assert verify_file(tmp_path / "audit.log").ok  # one chain across both runs


def test_audit_log_failure_refuses_calls(test_pki: TestPKI, tmp_path: Path, processes: list[Process]) -> None:
    """Fail closed: once the audit log cannot be written (here: a file size limit), calls are refused."""
    config = _config(test_pki, tmp_path)
    limit = 4096
    running = _start(config, preexec=f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))")
    processes.append(running)
    statuses: list[int] = []
    for _ in range(20):  # each served call adds a record of ~600 bytes: the limit is hit within 8
        try:
            rpc_call(running, test_pki, "ping")
            statuses.append(200)
        except RPCStatusError as refused:
            statuses.append(refused.status)
    assert 200 in statuses and 503 in statuses
    first_refusal = statuses.index(503)
    assert set(statuses[first_refusal:]) == {503}  # never served again once the log failed
    lines = (tmp_path / "audit.log").read_bytes().split(b"\n")
    served = sum(1 for line in lines if b'"outcome":"served"' in line)
    assert served == statuses.count(200)  # every answer given has its record
    assert _signal_and_wait(running, signal.SIGTERM) == 0
    assert os.path.getsize(tmp_path / "audit.log") <= limit


def test_check_fails_when_the_port_is_taken(test_pki: TestPKI, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _run("--config", str(_config(test_pki, tmp_path, port=port)), "--check")
        _assert_one_line_refusal(result, f"127.0.0.1:{port}", "in use by another process")
    result = _run("--config", str(_config(test_pki, tmp_path, port=port)), "--check")  # released: usable again
    assert result.returncode == 0, result.stderr


def test_check_beside_the_running_agent_itself_passes(test_pki: TestPKI, tmp_path: Path) -> None:
    # the unit's advice: edit the config, --check, then reload; the running agent holds the port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = _config(test_pki, tmp_path, port=port)
    agent = subprocess.Popen([sys.executable, "-m", "secure_agent", "--config", str(config)],
                             stderr=subprocess.PIPE, text=True)
    try:
        assert agent.stderr is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:  # bounded: the agent logs "listening on" once it has bound
            line = agent.stderr.readline()
            if not line or _LISTENING.search(line):
                break
        result = _run("--config", str(config), "--check")
        assert result.returncode == 0, result.stderr
        assert f"127.0.0.1:{port} is this agent's, running as pid {agent.pid}" in result.stdout
        other = tmp_path / "other"
        other.mkdir()
        stranger = _config(test_pki, other, port=port)  # another config wanting the same port
        refusal = _run("--config", str(stranger), "--check")
        _assert_one_line_refusal(refusal, f"in use by another process (pid {agent.pid})")
    finally:
        agent.terminate()
        agent.communicate(timeout=15)
