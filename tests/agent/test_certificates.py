"""docs/hostile-inputs.md "Certificates": mutual TLS and client identity (cases 6 to 13)."""

from __future__ import annotations

import datetime as dt
import http.client
import ssl
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.agent import wire
from tests.plugins.agent import RunningAgent, StartAgent, rpc_call
from tests.plugins.pki import TestPKI

NOW = dt.datetime.now(dt.UTC)
LOCAL_AGENT = "localhost=localhost,127.0.0.1,::1"


def _refused_at_tls(agent: RunningAgent, pki: TestPKI, context: ssl.SSLContext) -> None:
    """The connection dies in or right after the handshake: no HTTP answer, nothing served."""
    served = wire.served_calls(agent)
    try:
        with wire.tls(agent, context) as sock:
            reply = wire.exchange(sock, wire.signed_request(agent, pki, "ping"))
    except (ssl.SSLError, ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine):
        pass
    else:
        raise AssertionError(f"expected a TLS refusal, got HTTP {reply.status}")
    assert wire.served_calls(agent) == served


def _refused_as_revoked(agent: RunningAgent, pki: TestPKI, collector: str) -> None:
    """A revoked certificate gets through the handshake (the agent checks the CRL itself, after it) and
    no further: 403 before any request is read, nothing served, an ``identity_refused`` record."""
    served = wire.served_calls(agent)
    with wire.tls(agent, wire.collector_context(pki, collector)) as sock:
        reply = wire.exchange(sock, wire.signed_request(agent, pki, "ping", key_id=collector))
    assert reply.status == 403
    assert reply.body == b"forbidden\n"
    record = wire.wait_for_record(agent, wire.event("identity_refused", reason="certificate_revoked"))
    assert record["common_name"] == collector
    assert wire.served_calls(agent) == served


def _failed_handshake(agent: RunningAgent) -> dict[str, object]:
    return wire.wait_for_record(agent, wire.event("handshake_failed"))


def test_no_client_certificate(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    _refused_at_tls(agent, test_pki, wire.tls_context(test_pki))
    record = _failed_handshake(agent)
    assert "CERTIFICATE" in str(record["reason"]).upper()


def test_certificate_of_another_ca_with_an_allowed_name(
    start_agent: StartAgent, test_pki: TestPKI, make_pki: Callable[..., TestPKI], tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other")  # its collector is also called "collector"
    agent = start_agent(test_pki)
    cert, key, _ = other.collector_files()
    _refused_at_tls(agent, test_pki, wire.tls_context(test_pki, cert, key))
    assert "certificate" in str(_failed_handshake(agent)["reason"])


@pytest.mark.parametrize(
    ("label", "not_before", "not_after"),
    [
        ("expired", NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)),
        ("future", NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=30)),
    ],
)
def test_expired_or_not_yet_valid(
    start_agent: StartAgent, test_pki: TestPKI, label: str, not_before: dt.datetime, not_after: dt.datetime
) -> None:
    cert, key = test_pki.issue("collector", not_before=not_before, not_after=not_after, folder=f"{label}-collector")
    agent = start_agent(test_pki)
    _refused_at_tls(agent, test_pki, wire.tls_context(test_pki, cert, key))
    reason = str(_failed_handshake(agent)["reason"])
    assert ("expired" if label == "expired" else "not yet valid") in reason


def test_agent_certificate_used_as_a_client(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, security={"allowed_clients": ["collector", "localhost", "server-only"]})
    cert, key = test_pki.agent_files("localhost")
    _refused_at_tls(agent, test_pki, wire.tls_context(test_pki, cert, key))
    assert "purpose" in str(_failed_handshake(agent)["reason"])
    # a certificate of our CA with an allowed name but only the serverAuth purpose
    cert, key = test_pki.issue("server-only", usages=[ExtendedKeyUsageOID.SERVER_AUTH], folder="server-only")
    _refused_at_tls(agent, test_pki, wire.tls_context(test_pki, cert, key))


def test_revoked_certificate_with_crl(
    start_agent: StartAgent, make_pki: Callable[..., TestPKI], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", agents=[LOCAL_AGENT], collectors=["collector", "second"])
    pki.revoke("second")
    agent = start_agent(pki)
    assert agent.config.tls.crl is not None
    _refused_as_revoked(agent, pki, "second")
    assert rpc_call(agent, pki, "ping") == "pong"  # a valid one still passes with the CRL loaded


def test_name_not_in_allowed_clients(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    cert, key = test_pki.issue("intruder", folder="intruder")
    with wire.tls(agent, wire.tls_context(test_pki, cert, key)) as sock:
        reply = wire.exchange(sock, wire.signed_request(agent, test_pki, "ping"))
    assert reply.status == 403
    assert reply.body == b"forbidden\n"
    record = wire.wait_for_record(agent, wire.event("identity_refused"))
    assert record["common_name"] == "intruder"
    assert record["subject"] == "CN=intruder"
    fingerprint = x509.load_pem_x509_certificate(cert.read_bytes()).fingerprint(hashes.SHA256())
    assert record["fingerprint"] == fingerprint.hex()
    wire.assert_nothing_served(agent)


def _tls12_context(pki: TestPKI, ciphers: str) -> ssl.SSLContext:
    context = wire.collector_context(pki)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(ciphers)
    return context


def test_tls11_refused(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, tls={"min_version": "TLSv1.2"})
    context = wire.collector_context(test_pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # we mean to speak the deprecated version
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let our client offer it, so that the agent must refuse
    with pytest.raises((ssl.SSLError, ConnectionError)):
        wire.tls(agent, context).close()
    assert _failed_handshake(agent)["reason"] != "timeout"  # refused on sight, not left to time out


@pytest.mark.parametrize(
    "cipher",
    [
        "AES128-GCM-SHA256",  # no forward secrecy (RSA key exchange)
        "ECDHE-ECDSA-AES128-SHA",  # forward secrecy but CBC, not AEAD
        "ECDHE-ECDSA-AES256-SHA384",
    ],
)
def test_tls12_weak_cipher_refused(start_agent: StartAgent, test_pki: TestPKI, cipher: str) -> None:
    agent = start_agent(test_pki, tls={"min_version": "TLSv1.2"})
    context = _tls12_context(test_pki, f"{cipher}:@SECLEVEL=0")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        wire.tls(agent, context).close()
    assert _failed_handshake(agent)["reason"] != "timeout"


def test_tls12_strong_cipher_accepted_and_default_floor_is_13(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, tls={"min_version": "TLSv1.2"})
    with wire.tls(agent, _tls12_context(test_pki, "ECDHE-ECDSA-AES128-GCM-SHA256")) as sock:
        assert sock.version() == "TLSv1.2"
        assert wire.exchange(sock, wire.signed_request(agent, test_pki, "ping")).status == 200
    default = start_agent(test_pki)  # min_version TLSv1.3 by default
    with pytest.raises((ssl.SSLError, ConnectionError)):
        wire.tls(default, _tls12_context(test_pki, "ECDHE-ECDSA-AES128-GCM-SHA256")).close()


def test_reload_replaces_certificates_and_crl(
    start_agent: StartAgent, make_pki: Callable[..., TestPKI], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", agents=[LOCAL_AGENT], collectors=["collector", "second"])
    agent = start_agent(pki)
    assert rpc_call(agent, pki, "ping", collector="second", key_id="second") == "pong"
    with wire.tls(agent, wire.collector_context(pki)) as sock:
        old_serial = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"").serial_number

    # new agent certificate and a CRL revoking "second", then SIGHUP
    cert_path, key_path = pki.agent_files()
    new_cert, new_key = pki.issue("localhost", "server", hosts=["localhost", "127.0.0.1", "::1"], folder="renewed")
    cert_path.write_bytes(new_cert.read_bytes())
    key_path.write_bytes(new_key.read_bytes())
    pki.revoke("second")
    assert agent.reload()
    with wire.tls(agent, wire.collector_context(pki)) as sock:
        new_serial = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"").serial_number
    assert new_serial != old_serial
    _refused_as_revoked(agent, pki, "second")
    assert rpc_call(agent, pki, "ping") == "pong"
    assert wire.wait_for_record(agent, wire.event("reload", outcome="ok"))

    # a broken replacement: the old set stays in force, the failure is logged and audited
    good_crl = pki.crl.read_bytes()
    pki.crl.write_bytes(b"-----BEGIN X509 CRL-----\ngarbage\n-----END X509 CRL-----\n")
    assert not agent.reload()
    failed = wire.wait_for_record(agent, wire.event("reload", outcome="failed"))
    assert str(pki.crl) in str(failed["detail"])
    assert rpc_call(agent, pki, "ping") == "pong"
    _refused_as_revoked(agent, pki, "second")  # still revoked: old CRL in force
    pki.crl.write_bytes(good_crl)
    wire.assert_chain_intact(agent)


def test_a_kept_alive_connection_is_judged_again_after_a_reload(
    start_agent: StartAgent, make_pki: Callable[..., TestPKI], tmp_path: Path
) -> None:
    """Still admitted: it carries on; revoked since its handshake: its next request gets 403 and a record."""
    pki = make_pki(tmp_path / "pki", agents=[LOCAL_AGENT], collectors=["collector", "second"])
    agent = start_agent(pki, server={"idle_timeout": 10.0})
    with (
        wire.tls(agent, wire.collector_context(pki)) as kept,
        wire.tls(agent, wire.collector_context(pki, "second")) as sock,
    ):
        assert wire.exchange(kept, wire.signed_request(agent, pki, "ping")).status == 200
        assert wire.exchange(sock, wire.signed_request(agent, pki, "ping", key_id="second")).status == 200
        pki.revoke("second")
        assert agent.reload()
        # the admitted client goes on on the same connection
        assert wire.exchange(kept, wire.signed_request(agent, pki, "ping")).status == 200
        assert wire.exchange(kept, wire.signed_request(agent, pki, "ping")).status == 200
        # the revoked one gets an answer, not a closed connection
        assert wire.exchange(sock, wire.signed_request(agent, pki, "ping", key_id="second")).status == 403
    record = wire.wait_for_record(agent, wire.event("identity_refused", reason="certificate_revoked"))
    assert (record["common_name"], record["detail"], record["status"]) == ("second", "judged again after a reload", 403)
    _refused_as_revoked(agent, pki, "second")  # and a new connection meets the new CRL
    calls = [r["common_name"] for r in wire.records(agent) if r["event"] == "call"]
    assert calls == ["collector", "second", "collector", "collector"]


def test_a_new_ca_refuses_connections_made_under_the_old_one(
    start_agent: StartAgent, make_pki: Callable[..., TestPKI], tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", agents=[LOCAL_AGENT])
    other = make_pki(tmp_path / "other", agents=[LOCAL_AGENT])
    agent = start_agent(pki, server={"idle_timeout": 10.0})
    with wire.tls(agent, wire.collector_context(pki)) as sock:
        assert wire.exchange(sock, wire.signed_request(agent, pki, "ping")).status == 200
        agent.rewrite_config(tls={"ca": str(other.ca), "crl": str(other.crl)})
        assert agent.reload()
        assert wire.exchange(sock, wire.signed_request(agent, pki, "ping")).status == 403
    record = wire.wait_for_record(agent, wire.event("identity_refused", detail="judged again after a reload"))
    assert record["reason"] == "certificate: not issued by tls.ca"


def test_reloading_every_20_ms_drops_no_call_on_kept_alive_connections(
    start_agent: StartAgent, test_pki: TestPKI
) -> None:
    """Issue 14: 5 of 40 calls failed with RemoteDisconnected while reloading every 20 ms."""
    limit = {"per_second": 1000, "burst": 1000}  # the calls' pace is not what this tests
    agent = start_agent(test_pki, server={"idle_timeout": 10.0}, security={"rate_limit": limit})
    stop = threading.Event()
    reloads = 0

    def reload_often() -> None:
        nonlocal reloads
        while not stop.wait(0.02):  # the issue's pace; bounded by the calls below
            assert agent.reload()
            reloads += 1

    reloader = threading.Thread(target=reload_often, daemon=True)
    reloader.start()
    statuses = []
    try:
        for _ in range(4):  # four kept-alive connections, ten calls each
            with wire.tls(agent, wire.collector_context(test_pki)) as sock:
                for _ in range(10):
                    statuses.append(wire.exchange(sock, wire.signed_request(agent, test_pki, "ping")).status)
    finally:
        stop.set()
        reloader.join(timeout=30)
    assert statuses == [200] * 40
    assert reloads >= 1
