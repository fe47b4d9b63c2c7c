"""Real TLS handshakes between contexts from pki.tls: the good path and each way it must fail."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import warnings
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki import tls
from pki.errors import InsecurePermissions, MaterialError
from tests.pki.handshake import handshake
from tests.plugins.pki import TestPKI, build_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return build_pki(tmp_path_factory.mktemp("tls") / "pki")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return build_pki(tmp_path_factory.mktemp("other") / "pki")


def server_ctx(pki: TestPKI, *, crl: bool = False, min_version: tls.TLSVersionName = "TLSv1.3") -> ssl.SSLContext:
    cert, key = pki.agent_files()
    return tls.server_context(cert, key, pki.ca, pki.crl if crl else None, min_version)


def client_ctx(pki: TestPKI, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    default_cert, default_key, _ = pki.collector_files()
    return tls.client_context(cert or default_cert, key or default_key, pki.ca)


def raw_client(pki: TestPKI, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context that presents any certificate, bypassing the factory's own checks."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca))
    context.load_cert_chain(str(cert), str(key))
    return context


def test_good_path_is_tls13_with_the_collector_identity(pki: TestPKI) -> None:
    outcome = handshake(server_ctx(pki, crl=True), client_ctx(pki))
    assert outcome.ok, outcome
    assert outcome.version == "TLSv1.3"
    assert outcome.peer_cn == "collector"


def test_dns_name_in_san_verifies(pki: TestPKI) -> None:
    assert handshake(server_ctx(pki), client_ctx(pki), server_hostname="localhost").ok


def test_ipv6_address_in_san_verifies(pki: TestPKI) -> None:
    assert handshake(server_ctx(pki), client_ctx(pki), server_hostname="::1").ok


def test_client_certificate_from_another_ca_is_refused(pki: TestPKI, other_pki: TestPKI) -> None:
    cert, key, _ = other_pki.collector_files()
    outcome = handshake(server_ctx(pki), raw_client(pki, cert, key))
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "unable to get local issuer certificate" in str(outcome.server_error)


def test_no_client_certificate_is_refused(pki: TestPKI) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(pki.ca))
    outcome = handshake(server_ctx(pki), context)
    assert outcome.server_error is not None
    assert "certificate" in str(outcome.server_error).lower()


def test_expired_client_certificate_is_refused(pki: TestPKI) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, key = pki.issue("expired", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1))
    outcome = handshake(server_ctx(pki), raw_client(pki, cert, key))
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "expired" in str(outcome.server_error)


def test_not_yet_valid_client_certificate_is_refused(pki: TestPKI) -> None:
    now = dt.datetime.now(dt.UTC)
    cert, key = pki.issue("future", not_before=now + dt.timedelta(days=1), not_after=now + dt.timedelta(days=30))
    outcome = handshake(server_ctx(pki), raw_client(pki, cert, key))
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "not yet valid" in str(outcome.server_error)


def test_agent_certificate_used_as_client_is_refused(pki: TestPKI) -> None:
    cert, key = pki.agent_files()  # serverAuth only
    outcome = handshake(server_ctx(pki), raw_client(pki, cert, key))
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "unsuitable certificate purpose" in str(outcome.server_error)


def test_client_factory_refuses_a_certificate_without_client_auth(pki: TestPKI) -> None:
    cert, key = pki.issue("server-only", "client", usages=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(MaterialError, match=r"server-only\.crt.*clientAuth"):
        tls.client_context(cert, key, pki.ca)


def test_revoked_client_is_refused_and_others_still_pass(tmp_path: Path) -> None:
    pki = build_pki(tmp_path / "pki", agents=["localhost=localhost,127.0.0.1"], collectors=["good", "bad"])
    pki.revoke("bad")
    server = server_ctx(pki, crl=True)
    bad_cert, bad_key, _ = pki.collector_files("bad")
    refused = handshake(server, raw_client(pki, bad_cert, bad_key))
    assert isinstance(refused.server_error, ssl.SSLCertVerificationError)
    assert "revoked" in str(refused.server_error)
    good_cert, good_key, _ = pki.collector_files("good")
    assert handshake(server, client_ctx(pki, good_cert, good_key)).ok


def test_crl_checking_without_a_matching_crl_fails_closed(pki: TestPKI, other_pki: TestPKI) -> None:
    cert, key = pki.agent_files()
    with pytest.raises(MaterialError, match=r"crl\.pem.*not signed by the configured CA"):
        tls.server_context(cert, key, pki.ca, other_pki.crl)
    server = server_ctx(pki)
    server.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF  # checking on, no CRL loaded
    outcome = handshake(server, client_ctx(pki))
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "unable to get certificate CRL" in str(outcome.server_error)


def test_tls11_is_refused(pki: TestPKI) -> None:
    client = client_ctx(pki)
    with warnings.catch_warnings():  # the ssl module deprecates TLS 1.1, which is the point here
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        client.maximum_version = ssl.TLSVersion.TLSv1_1
        client.set_ciphers("DEFAULT:@SECLEVEL=0")
        outcome = handshake(server_ctx(pki, min_version="TLSv1.2"), client)
    assert outcome.server_error is not None and outcome.client_error is not None


def test_tls12_floor_negotiates_ecdhe_aead_only(pki: TestPKI) -> None:
    client = client_ctx(pki)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert not handshake(server_ctx(pki), client).ok  # default floor is 1.3
    outcome = handshake(server_ctx(pki, min_version="TLSv1.2"), client)
    assert outcome.ok and outcome.version == "TLSv1.2"
    weak = client_ctx(pki)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA256:AES128-SHA:ECDHE-ECDSA-AES128-SHA")  # no forward secrecy or no AEAD
    assert not handshake(server_ctx(pki, min_version="TLSv1.2"), weak).ok


@pytest.mark.parametrize(("group", "accepted"), [("X25519", True), ("secp384r1", True), ("secp521r1", False)])
def test_key_exchange_groups_are_limited(pki: TestPKI, group: str, accepted: bool) -> None:
    client = client_ctx(pki)
    client.set_ecdh_curve(group)  # OpenSSL 3: the client offers this group only
    assert handshake(server_ctx(pki), client).ok is accepted


def _mode(context: ssl.SSLContext) -> int:
    import _ssl
    import ctypes

    ctrl = ctypes.CDLL(_ssl.__file__).SSL_CTX_ctrl
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    ctrl.restype = ctypes.c_long
    pointer = tls._ssl_ctx_pointer(context)
    assert pointer is not None
    return int(ctrl(pointer, tls._SSL_CTRL_MODE, 0, None))  # adding no bits reads the mode back


def test_each_side_sends_its_leaf_alone_and_still_verifies(pki: TestPKI) -> None:
    """SSL_MODE_NO_AUTO_CHAIN: no chain building (a full verification of our own certificate) per handshake."""
    server, client = server_ctx(pki, crl=True), client_ctx(pki)
    for context in (server, client):
        assert _mode(context) & tls._SSL_MODE_NO_AUTO_CHAIN
    outcome = handshake(server, client)
    assert outcome.ok and outcome.peer_cn == "collector"


def test_host_mismatch_is_refused_by_the_client(pki: TestPKI) -> None:
    outcome = handshake(server_ctx(pki), client_ctx(pki), server_hostname="other.example")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "Hostname mismatch" in str(outcome.client_error)


def test_agent_trusting_another_ca_is_refused_by_the_client(pki: TestPKI, other_pki: TestPKI) -> None:
    outcome = handshake(server_ctx(other_pki), client_ctx(pki))
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)


def test_contexts_never_trust_the_system_store(pki: TestPKI) -> None:
    for context in (server_ctx(pki), client_ctx(pki)):
        assert len(context.get_ca_certs()) == 1
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.options & ssl.OP_NO_COMPRESSION and context.options & ssl.OP_NO_RENEGOTIATION


def test_missing_and_mismatched_files_name_the_path(pki: TestPKI, tmp_path: Path) -> None:
    cert, key = pki.agent_files()
    missing = tmp_path / "nope.crt"
    with pytest.raises(MaterialError, match=str(missing)):
        tls.server_context(missing, key, pki.ca)
    _, other_key, _ = pki.collector_files()
    with pytest.raises(MaterialError, match=str(other_key)):
        tls.server_context(cert, other_key, pki.ca)
    with pytest.raises(MaterialError, match=r"not a CA"):
        tls.server_context(cert, key, cert)


def test_group_readable_private_key_is_refused(pki: TestPKI, tmp_path: Path) -> None:
    cert, key = pki.agent_files()
    loose = tmp_path / "loose.key"
    loose.write_bytes(key.read_bytes())
    os.chmod(loose, 0o640)
    with pytest.raises(InsecurePermissions, match=r"loose\.key.*chmod 600"):
        tls.server_context(cert, loose, pki.ca)


def test_collector_with_a_crl_refuses_a_revoked_agent(tmp_path: Path) -> None:
    pki = build_pki(tmp_path / "pki", agents=["localhost=localhost,127.0.0.1"], collectors=["collector"])
    cert, key, _ = pki.collector_files()
    client = tls.client_context(cert, key, pki.ca, pki.crl)
    assert handshake(server_ctx(pki), client).ok
    pki.revoke("localhost")
    outcome = handshake(server_ctx(pki), tls.client_context(cert, key, pki.ca, pki.crl))
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "revoked" in str(outcome.client_error)


def test_revocations_are_loaded_once_and_looked_up_by_serial(tmp_path: Path, other_pki: TestPKI) -> None:
    """The agent's own CRL check (pki.tls.Revocations): the same verdicts OpenSSL's check gives."""
    from cryptography import x509

    pki = build_pki(tmp_path / "pki", agents=["localhost=localhost,127.0.0.1"], collectors=["good", "bad"])
    pki.revoke("bad")
    revocations = tls.load_revocations(pki.crl, pki.ca)

    def serial(name: str) -> str:
        cert = x509.load_pem_x509_certificate(pki.collector_files(name)[0].read_bytes())
        return format(cert.serial_number, "x")

    now = revocations.next_update - 60
    assert revocations.refusal(serial("bad"), now) == "certificate_revoked"
    assert revocations.refusal(serial("good"), now) is None
    # past its nextUpdate a CRL vouches for nobody: everyone is refused, as OpenSSL does
    assert revocations.refusal(serial("good"), revocations.next_update) == "crl_expired"
    with pytest.raises(MaterialError, match=r"crl\.pem.*not signed by the configured CA"):
        tls.load_revocations(other_pki.crl, pki.ca)
    with pytest.raises(MaterialError, match=r"is not a PEM CRL"):
        tls.load_revocations(pki.ca, pki.ca)
