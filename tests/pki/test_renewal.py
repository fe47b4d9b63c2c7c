"""Renewing an agent's certificate with a new key made on its host, while a collector polls it, misses no poll.

The runbook's procedure (docs/runbook.md, "Renewing certificates"): a new key and CSR on the host, signed
on the CA machine, the pair installed by renames, SIGHUP (here: ``reload()``). The old certificate serves
until the reload; kept-alive connections are judged again at their next request; every poll succeeds.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from pki import make_certs
from secure_collector import cli
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.plugins.agent import StartAgent, connect
from tests.plugins.pki import TestPKI

AGENT = "web1=localhost,127.0.0.1"
SWEEPS = 20


def _presented_serial(agent: object, pki: TestPKI) -> int:
    conn = connect(agent, pki)  # type: ignore[arg-type]
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_new_key_and_certificate_installed_and_reloaded_while_polled_five_times_a_second(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", agents=[AGENT], collectors=["collector"])
    host = tmp_path / "host"
    host.mkdir()
    for suffix in ("crt", "key"):  # the agent host's own copy of its material
        shutil.copy2(pki.root / "agents" / f"web1.{suffix}", host / f"web1.{suffix}")
    agent = start_agent(
        pki,
        "web1",
        tls={"cert": str(host / "web1.crt"), "key": str(host / "web1.key")},
        security={"rate_limit": {"per_second": 50, "burst": 100}},  # two calls a poll, five polls a second
    )
    before = _presented_serial(agent, pki)

    data = collector_data(pki, tmp_path, [("web1", agent.host, agent.port)], poll_interval=0.2)
    collector = cli.build(cli._arguments(["--config", str(write_config(tmp_path, data))]), [])
    runner = threading.Thread(target=collector.poller.run, kwargs={"max_sweeps": SWEEPS})
    runner.start()
    try:
        staged = host / "new"
        assert make_certs.main(["--request", "--out", str(staged), "--agent", AGENT]) == 0
        ca = ["--out", str(pki.root), "--sign", str(staged / "web1.csr"), "--agent", AGENT, "--force"]
        assert make_certs.main(ca) == 0
        shutil.copy2(pki.root / "agents" / "web1.crt", staged / "web1.crt")
        os.replace(staged / "web1.key", host / "web1.key")  # the pair, by renames: never a half-written file
        os.replace(staged / "web1.crt", host / "web1.crt")
        assert agent.reload()
        reloaded = time.time()
    finally:
        runner.join(timeout=60)
        collector.close()
    assert not runner.is_alive()

    after = _presented_serial(agent, pki)
    assert after != before
    assert after == x509.load_pem_x509_certificate((host / "web1.crt").read_bytes()).serial_number
    statuses = read_store(load(data)).query_statuses(*WIDE)
    assert set(statuses["state"]) == {"up"}, statuses[["state", "detail"]].to_string()  # no poll failed
    assert (statuses["timestamp"] < reloaded).any() and (statuses["timestamp"] > reloaded).sum() >= 3
