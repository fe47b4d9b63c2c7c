"""Rotating the CA with no failed poll: a new CA trusted alongside the old one for a transition window.

docs/runbook.md ("Rotating the CA"): ``tls.ca`` holds both CAs and ``tls.crl`` a CRL of each; agents reload,
the collector restarts with its new certificate, agents move to certificates of the new CA and reload, and
finally the old CA is dropped everywhere. A collector polls five times a second throughout.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pki import make_certs
from secure_collector import cli
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.plugins.agent import RPCStatusError, RunningAgent, StartAgent, connect, rpc_call
from tests.plugins.pki import TestPKI

AGENT = "web1=localhost,127.0.0.1"


@contextlib.contextmanager
def polling(config: Path, sweeps: int) -> Iterator[None]:
    """A collector service polling in a thread while the block runs, for ``sweeps`` sweeps at most."""
    collector = cli.build(cli._arguments(["--config", str(config)]), [])
    runner = threading.Thread(target=collector.poller.run, kwargs={"max_sweeps": sweeps})
    runner.start()
    try:
        yield
    finally:
        runner.join(timeout=60)
        collector.close()
    assert not runner.is_alive()


def _issuer(agent: RunningAgent, pki: TestPKI) -> str:
    conn = connect(agent, pki)
    try:
        conn.connect()
        assert conn.sock is not None
        der = conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    assert der is not None
    return x509.load_der_x509_certificate(der).issuer.rfc4514_string()


def _two_cas(make_pki: Callable[..., TestPKI], tmp_path: Path, *, revoke_new: str | None = None) -> tuple[
    TestPKI, TestPKI, Path, Path
]:
    """The old and the new PKI, and the bundles of the window: both CAs, a CRL of each."""
    old = make_pki(tmp_path / "old", agents=[AGENT], collectors=["collector"])
    new = make_pki(tmp_path / "new", agents=[AGENT], collectors=["collector"])
    if revoke_new is not None:
        new.revoke(revoke_new)
    bundle = tmp_path / "ca-bundle.crt"
    bundle.write_bytes(old.ca.read_bytes() + new.ca.read_bytes())
    crls = tmp_path / "crl-bundle.pem"
    crls.write_bytes(old.crl.read_bytes() + new.crl.read_bytes())
    return old, new, bundle, crls


def test_moving_every_host_to_a_new_ca_fails_no_poll(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path
) -> None:
    old, new, bundle, crls = _two_cas(make_pki, tmp_path)
    limits = {"rate_limit": {"per_second": 50, "burst": 100}}
    agent = start_agent(old, "web1", tls={"crl": str(old.crl)}, security=limits)
    polled = [("web1", agent.host, agent.port)]
    old_issuer = _issuer(agent, old)

    def collector(name: str, pki: TestPKI, ca: Path, crl: Path) -> Path:
        cert, key, _ = pki.collector_files()
        folder = tmp_path / name
        folder.mkdir()
        overrides: dict[str, Any] = {"tls": {"cert": str(cert), "key": str(key), "ca": str(ca), "crl": str(crl)}}
        data = collector_data(old, tmp_path / "data", polled, poll_interval=0.2, **overrides)  # one store, old HMAC key
        return write_config(folder, data)

    def agent_uses(**tls: Path) -> None:
        agent.rewrite_config(tls={key: str(value) for key, value in tls.items()})
        assert agent.reload()

    (tmp_path / "data").mkdir()
    with polling(collector("c1", old, old.ca, old.crl), sweeps=8):
        agent_uses(ca=bundle, crl=crls)  # 1. agents trust both CAs
    new_cert, new_key = new.agent_files("web1")
    with polling(collector("c2", new, bundle, crls), sweeps=12):  # 2. the collector restarts on the new CA
        agent_uses(cert=new_cert, key=new_key)  # 3. agents move to certificates of the new CA
        agent_uses(ca=new.ca, crl=new.crl)  # 4. agents drop the old CA
    with polling(collector("c3", new, new.ca, new.crl), sweeps=4):  # 5. and so does the collector
        pass

    assert _issuer(agent, new) != old_issuer
    statuses = read_store(load(collector_data(old, tmp_path / "data", polled))).query_statuses(*WIDE)
    # a tick whose poll overran the 0.2 s interval (a loaded machine) is skipped, never failed
    assert (8 + 12 + 4) // 2 <= len(statuses) <= 8 + 12 + 4
    assert set(statuses["state"]) == {"up"}, statuses[["state", "detail"]].to_string()


def test_during_the_window_each_cas_crl_is_honoured_and_a_ca_without_one_is_refused(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path
) -> None:
    old, new, bundle, crls = _two_cas(make_pki, tmp_path, revoke_new="collector")  # the new CA revokes its collector
    agent = start_agent(old, "web1", tls={"ca": str(bundle), "crl": str(crls)})
    assert rpc_call(agent, old, "ping") == "pong"  # the old CA's collector: admitted
    cert, key, _ = new.collector_files()
    (old.root / "collectors" / "revoked.crt").write_bytes(cert.read_bytes())
    (old.root / "collectors" / "revoked.key").write_bytes(key.read_bytes())
    (old.root / "collectors" / "revoked.key").chmod(0o600)
    (old.root / "collectors" / "revoked.hmac").write_bytes(old.collector_files()[2].read_bytes())
    (old.root / "collectors" / "revoked.hmac").chmod(0o600)
    with pytest.raises(RPCStatusError) as refused:
        rpc_call(agent, old, "ping", collector="revoked")
    assert refused.value.status == 403  # revoked by the new CA's CRL in the bundle

    crls.write_bytes(old.crl.read_bytes())  # the new CA has no CRL here
    agent.rewrite_config(tls={"crl": str(crls)})
    assert not agent.reload()  # refused: the old material stays in force


def test_refreshing_the_crl_from_cron_while_polled_fails_no_poll(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", agents=[AGENT], collectors=["collector"])
    limits = {"rate_limit": {"per_second": 50, "burst": 100}}
    agent = start_agent(pki, "web1", tls={"crl": str(pki.crl)}, security=limits)
    before = pki.crl.read_bytes()
    (tmp_path / "c").mkdir()
    data = collector_data(pki, tmp_path / "data", [("web1", agent.host, agent.port)], poll_interval=0.2)
    (tmp_path / "data").mkdir()
    with polling(write_config(tmp_path / "c", data), sweeps=8):
        assert make_certs.main(["--out", str(pki.root), "--refresh-crl"]) == 0  # what the cron job runs
        assert agent.reload()
    assert pki.crl.read_bytes() != before  # re-signed (and reloaded by the agent, no poll failing)
    statuses = read_store(load(data)).query_statuses(*WIDE)
    assert 4 <= len(statuses) <= 8 and set(statuses["state"]) == {"up"}  # (overrun ticks are skipped)
