"""Automatic renewal with certificates of a few minutes: an enrolled agent and an enrolled collector renew
themselves over mutual TLS, each time with a new key, while the collector polls the agent twice a second,
and no poll fails.

Both enroll with a token (``make-certs --enroll``), run with ``tls.renew.url``, and renew at a small share of
a three-minute lifetime (:class:`pki.renewal.RenewalTiming`: the share is what tests shorten; the lifetime is
a real one of the service) so that several renewals happen within seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from pki import make_certs, tls
from pki.enroll_service import RateLimiter
from pki.errors import PKIError
from pki.renewal import RenewalTiming, Renewer, check_installable
from secure_agent.config import AgentConfig
from secure_agent.lifecycle import Agent
from secure_collector import cli
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.pki.enrollment import audit_records, running_service, url
from tests.plugins.agent import agent_config_data
from tests.plugins.pki import TestPKI

LIFETIME = dt.timedelta(minutes=3)
FAST = RenewalTiming(at=0.025, jitter=0.1, retry_first=0.5, retry_max=2.0)  # about every 4.5 s
RENEWALS = 2  # each side renews this many times at least
DEADLINE = 60.0  # seconds: a hang guard, far above the ~10 s the renewals take


def _enroll(pki: TestPKI, service_url: str, folder: Path, *entity: str) -> Path:
    token = folder.parent / f"{entity[1].partition('=')[0]}.token"
    argv = ["--out", str(pki.root), "--issue-token", *entity, "--url", service_url, "--token-file", str(token)]
    assert make_certs.main(argv) == 0
    assert make_certs.main(["--enroll", "--token-file", str(token), "--out", str(folder)]) == 0
    return folder


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _presented_serial(agent: Agent, collector_host: Path) -> int:
    """The serial of the certificate the agent shows a new connection (made with the collector's files)."""
    folder = collector_host
    context = tls.client_context(folder / "collector.crt", folder / "collector.key", folder / "ca.crt")
    host, port = agent.address
    with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw, server_hostname=host) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _wait_for(condition: Callable[[], bool], deadline: float, stop: threading.Event) -> bool:
    """Until ``condition`` holds (True) or ``deadline`` (monotonic) passes (False); checked ten times a second."""
    while time.monotonic() < deadline:
        if condition():
            return True
        stop.wait(0.1)
    return condition()


def test_agent_and_collector_renew_themselves_with_new_keys_and_no_poll_fails(
    make_pki: Callable[..., TestPKI], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "ca", agents=["web1=localhost,127.0.0.1"], collectors=["collector"])
    with running_service(pki.root, lifetime=LIFETIME) as service:
        agent_host = _enroll(pki, url(service), tmp_path / "agent-host", "--agent", "web1=localhost,127.0.0.1")
        collector_host = _enroll(pki, url(service), tmp_path / "collector-host", "--collector", "collector")
        first_agent_key = (agent_host / "web1.key").read_bytes()
        first_collector_key = (collector_host / "collector.key").read_bytes()
        first_collector_serial = _serial(collector_host / "collector.crt")

        renew = {"url": url(service)}
        files = {"ca": str(agent_host / "ca.crt"), "crl": str(agent_host / "crl.pem"), "renew": renew}
        tls = {"cert": str(agent_host / "web1.crt"), "key": str(agent_host / "web1.key"), **files}
        (tmp_path / "agent").mkdir()
        data = agent_config_data(
            pki, "web1", tmp_path / "agent", tls=tls, security={"rate_limit": {"per_second": 50, "burst": 100}}
        )
        config_path = tmp_path / "agent" / "agent.json"
        config_path.write_text(json.dumps(data))
        agent = Agent(AgentConfig.model_validate(data), config_path=config_path, renewal=FAST)
        agent.start()
        try:
            first_presented = _presented_serial(agent, collector_host)
            collector_tls = {
                "cert": str(collector_host / "collector.crt"),
                "key": str(collector_host / "collector.key"),
                "ca": str(collector_host / "ca.crt"),
                "crl": str(collector_host / "crl.pem"),
                "renew": renew,
            }
            polled = [("web1", *agent.address)]
            collector_config = collector_data(pki, tmp_path, polled, poll_interval=0.5, tls=collector_tls)
            collector = cli.build(
                cli._arguments(["--config", str(write_config(tmp_path, collector_config))]), [], renewal=FAST
            )
            runner = threading.Thread(target=collector.poller.run, kwargs={"max_sweeps": int(DEADLINE / 0.5)})
            runner.start()
            stop = threading.Event()
            try:
                assert agent.renewer is not None and collector.renewer is not None
                agent_renewer, collector_renewer = agent.renewer, collector.renewer
                renewed = _wait_for(
                    lambda: agent_renewer.renewals >= RENEWALS and collector_renewer.renewals >= RENEWALS,
                    time.monotonic() + DEADLINE,
                    stop,
                )
                # and a few polls more, so that the last renewals are polled through too
                sweeps = collector.poller.sweeps
                _wait_for(lambda: collector.poller.sweeps >= sweeps + 3, time.monotonic() + 10, stop)
            finally:
                collector.poller.stop()
                runner.join(timeout=30)
                collector.close()
            assert not runner.is_alive()
            assert renewed, (agent_renewer.last_error, collector_renewer.last_error)
            assert agent_renewer.failures == 0 and collector_renewer.failures == 0
            agent_renewer.stop()  # no renewal between the two reads below (a short lifetime renews every few s)
            now_presented = _presented_serial(agent, collector_host)
        finally:
            agent.stop(timeout=2.0)

    # the keys changed, and what each side presents now is its latest certificate
    assert (agent_host / "web1.key").read_bytes() != first_agent_key
    assert (collector_host / "collector.key").read_bytes() != first_collector_key
    assert now_presented != first_presented and now_presented == _serial(agent_host / "web1.crt")
    new_collector_serial = format(_serial(collector_host / "collector.crt"), "x")
    calls = [json.loads(line) for line in (tmp_path / "agent" / "audit.log").read_text().splitlines()]
    presented = [record.get("serial") for record in calls if record.get("event") == "call"]
    assert format(first_collector_serial, "x") in presented and new_collector_serial in presented
    assert sum(1 for record in calls if record.get("event") == "certificate_renewed") >= RENEWALS

    # every renewal is in the service's audit log, and no poll failed
    renewals = [r for r in audit_records(pki.root) if r["event"] == "renew"]
    assert {r["outcome"] for r in renewals} == {"issued"} and len(renewals) >= 2 * RENEWALS
    statuses = read_store(load(collector_config)).query_statuses(*WIDE)
    assert len(statuses) >= 10
    assert set(statuses["state"]) == {"up"}, statuses[["state", "detail"]].to_string()


def test_a_refused_renewal_is_tried_again_after_retry_after_and_then_succeeds(
    make_pki: Callable[..., TestPKI], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "ca", agents=["web1=localhost,127.0.0.1"], collectors=["collector"])
    limiter = RateLimiter(per_second=1.0, burst=1)
    with running_service(pki.root, lifetime=LIFETIME, limiter=limiter) as service:
        host = _enroll(pki, url(service), tmp_path / "host", "--collector", "collector")
        limiter.take("127.0.0.1", time.monotonic())  # the bucket is empty: the first renewal gets 429
        renewed = threading.Event()
        renewer = Renewer(
            url(service), host / "collector.crt", host / "collector.key", host / "ca.crt", renewed.set,
            timing=RenewalTiming(at=0.001, jitter=0.0, retry_first=0.1, retry_max=0.2),
        )
        renewer.start()
        try:
            assert renewed.wait(DEADLINE)
        finally:
            renewer.stop()
    assert renewer.failures >= 1 and "429" in str(renewer.last_error)
    assert renewer.renewals >= 1
    records = audit_records(pki.root)
    assert any(r.get("reason") == "rate_limited" for r in records)
    assert records[-1]["event"] == "renew" and records[-1]["outcome"] == "issued"



def test_renewal_into_a_directory_it_cannot_write_is_refused_in_one_line(tmp_path: Path) -> None:
    check_installable(tmp_path / "web1.crt", tmp_path / "web1.key")  # writable: fine
    gone = tmp_path / "gone"  # as a read-only /etc under systemd: os.access says no (root included)
    with pytest.raises(PKIError, match=f"tls.renew: {gone} is not writable: .*ReadWritePaths") as refused:
        check_installable(gone / "web1.crt", gone / "web1.key")
    assert "\n" not in str(refused.value)
