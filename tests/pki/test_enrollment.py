"""Token enrollment at a real enrollment service (docs/enrollment.md), and every refusal audited.

A host enrolls with a single-use token (``make-certs --enroll --token-file``) and an agent started with what it
wrote serves a collector. A token used twice, expired, revoked, tampered with, for another name, or presented
with a CSR asking for more is refused (403, nothing on the wire says why) and each refusal is in the service's
hash-chained audit log with its reason. Renewal over mutual TLS signs only the presented certificate's name,
addresses and purpose, for a new key, and only for the certificate the CA holds now.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pki import ca as ca_lib
from pki import csr as csr_lib
from pki import enroll_client, make_certs
from pki.configfile import load_config
from pki.enroll_service import MAX_BODY_BYTES, RateLimiter, enroll_dir, source_network
from pki.enroll_tokens import TokenStore, decode, encode
from pki.errors import ConfigError
from pki.tls import service_client_context
from secure_agent.config import AgentConfig
from secure_collector.config import CollectorConfig
from tests.pki.enrollment import audit_records, issue, running_service, url
from tests.plugins.agent import StartAgent, agent_config_data, rpc_call
from tests.plugins.pki import TestPKI

AGENT = ("--agent", "web1=localhost,127.0.0.1")


def _post(service_url: str, ca: Path, body: dict[str, str], path: str = "/v1/enroll") -> int:
    """The status the service answers ``body`` with (200, or the refusal's)."""
    try:
        enroll_client.post(service_url, path, body, service_client_context(ca.read_bytes()), 10.0)
    except enroll_client.EnrollmentFailed as exc:
        assert exc.status is not None, exc
        return exc.status
    return 200


def _csr(name: str, role: ca_lib.Role, hosts: tuple[str, ...] = ()) -> str:
    return csr_lib.request_pem(csr_lib.make_request(name, role, hosts)[1]).decode("ascii")


def _last_refusal(ca_dir: Path) -> dict[str, object]:
    record = audit_records(ca_dir)[-1]
    assert record["outcome"] == "refused", record
    return record


def test_a_host_enrolls_with_a_token_and_its_agent_serves(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "ca", agents=["web1=localhost,127.0.0.1"], collectors=["collector"])
    os.unlink(pki.root / "agents" / "web1.key")  # this agent's key is to be made on its host
    host = tmp_path / "host"
    with running_service(pki.root) as service:
        token_id = issue(pki.root, service, tmp_path / "web1.token", *AGENT)
        argv = ["--enroll", "--token-file", str(tmp_path / "web1.token"), "--out", str(host)]
        assert make_certs.main(argv) == 0
    assert (host / "web1.key").stat().st_mode & 0o777 == 0o600
    assert not (pki.root / "agents" / "web1.key").exists()  # the key never was on the CA machine
    issued = x509.load_pem_x509_certificate((host / "web1.crt").read_bytes())
    lifetime = issued.not_valid_after_utc - issued.not_valid_before_utc
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=31)  # the enrollment default: 30 days
    assert (pki.root / "agents" / "web1.crt").read_bytes() == (host / "web1.crt").read_bytes()  # the CA's copy
    record = audit_records(pki.root)[-1]
    assert (record["event"], record["outcome"], record["token"]) == ("enroll", "issued", token_id)
    assert record["serial"] == format(issued.serial_number, "x")

    tls = {"cert": str(host / "web1.crt"), "key": str(host / "web1.key"), "ca": str(host / "ca.crt")}
    agent = start_agent(pki, "web1", tls={**tls, "crl": str(host / "crl.pem")})
    assert rpc_call(agent, pki, "ping") == "pong"


@pytest.fixture
def pki(make_pki: Callable[..., TestPKI], tmp_path: Path) -> TestPKI:
    return make_pki(tmp_path / "ca", agents=["web1=localhost,127.0.0.1"], collectors=["collector"])


def test_a_token_used_twice_is_refused_and_audited(pki: TestPKI, tmp_path: Path) -> None:
    with running_service(pki.root) as service:
        issue(pki.root, service, tmp_path / "t", *AGENT)
        token = (tmp_path / "t").read_text().strip()
        body = {"token": token, "csr": _csr("web1", "server", ("localhost", "127.0.0.1"))}
        assert _post(url(service), pki.ca, body) == 200
        body["csr"] = _csr("web1", "server", ("localhost", "127.0.0.1"))  # the same token, another key
        assert _post(url(service), pki.ca, body) == 403
    assert _last_refusal(pki.root)["reason"] == "token used"
    assert TokenStore(enroll_dir(pki.root)).list()[0].state == "used"


def test_an_expired_token_is_refused_and_audited(pki: TestPKI, tmp_path: Path) -> None:
    with running_service(pki.root) as service:
        an_hour_ago = TokenStore(enroll_dir(pki.root), clock=lambda: time.time() - 3600)
        token = an_hour_ago.issue("web1", "agent", ("localhost", "127.0.0.1"), 60, url(service), pki.ca.read_bytes())
        body = {"token": encode(token), "csr": _csr("web1", "server", ("localhost", "127.0.0.1"))}
        assert _post(url(service), pki.ca, body) == 403
    assert _last_refusal(pki.root)["reason"] == "token expired"
    assert TokenStore(enroll_dir(pki.root)).list()[0].status(time.time()) == "expired"


def test_a_revoked_token_is_refused_and_audited(
    pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_service(pki.root) as service:
        token_id = issue(pki.root, service, tmp_path / "t", *AGENT)
        assert make_certs.main(["--out", str(pki.root), "--revoke-token", token_id]) == 0
        assert make_certs.main(["--out", str(pki.root), "--list-tokens"]) == 0
        assert f"{token_id}  revoked" in capsys.readouterr().out
        argv = ["--enroll", "--token-file", str(tmp_path / "t"), "--out", str(tmp_path / "host")]
        assert make_certs.main(argv) == 2
    assert "403" in capsys.readouterr().err
    records = audit_records(pki.root)
    assert (records[-2]["event"], records[-2]["outcome"]) == ("token", "revoked")
    assert _last_refusal(pki.root)["reason"] == "token revoked"
    assert not (tmp_path / "host" / "web1.crt").exists()


@pytest.mark.parametrize(
    ("name", "hosts", "role", "reason"),
    [
        ("web2", ("localhost", "127.0.0.1"), "server", "csr: it asks for the subject 'CN=web2', not CN=web1"),
        ("web1", ("localhost", "127.0.0.1", "10.0.0.9"), "server", "csr: it asks for other host names or addresses"),
        ("web1", ("localhost", "127.0.0.1"), "client", "csr: it asks for clientAuth"),
    ],
    ids=["another-name", "an-extra-address", "another-purpose"],
)
def test_a_csr_asking_for_another_name_or_more_is_refused_and_audited(
    pki: TestPKI, tmp_path: Path, name: str, hosts: tuple[str, ...], role: ca_lib.Role, reason: str
) -> None:
    with running_service(pki.root) as service:
        token_id = issue(pki.root, service, tmp_path / "t", *AGENT)
        token = (tmp_path / "t").read_text().strip()
        assert _post(url(service), pki.ca, {"token": token, "csr": _csr(name, role, hosts)}) == 403
        refusal = _last_refusal(pki.root)
        assert str(refusal["reason"]).startswith(reason) and refusal["token"] == token_id
        assert not (pki.root / "agents" / "web2.crt").exists()
        # the refusal did not spend the token: what it entitles is still to be had, once
        good = {"token": token, "csr": _csr("web1", "server", ("localhost", "127.0.0.1"))}
        assert _post(url(service), pki.ca, good) == 200


def test_a_token_for_another_name_is_not_spent_by_enroll(
    pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_service(pki.root) as service:
        issue(pki.root, service, tmp_path / "t", *AGENT)
        argv = ["--enroll", "--token-file", str(tmp_path / "t"), "--out", str(tmp_path / "h"), "--agent", "web2=h2"]
        assert make_certs.main(argv) == 2
        assert "the token is for web1, not web2" in capsys.readouterr().err
    assert TokenStore(enroll_dir(pki.root)).list()[0].state == "unused"


def test_a_tampered_or_unknown_token_is_refused_and_audited(pki: TestPKI, tmp_path: Path) -> None:
    with running_service(pki.root) as service:
        issue(pki.root, service, tmp_path / "t", *AGENT)
        real = decode((tmp_path / "t").read_text())
        forged = encode(real._replace(secret="x" * 43))
        csr = _csr("web1", "server", ("localhost", "127.0.0.1"))
        assert _post(url(service), pki.ca, {"token": forged, "csr": csr}) == 403
        assert _last_refusal(pki.root)["reason"] == "token wrong_secret"
        assert _post(url(service), pki.ca, {"token": encode(real._replace(id="0" * 16)), "csr": csr}) == 403
        assert _last_refusal(pki.root)["reason"] == "token unknown"
        assert _post(url(service), pki.ca, {"token": "smon-enroll-1.e30", "csr": csr}) == 403
        assert _last_refusal(pki.root)["reason"] == "token malformed"
    assert TokenStore(enroll_dir(pki.root)).list()[0].state == "unused"


def _enrolled(pki: TestPKI, service_url: str, tmp_path: Path, *entity: str) -> Path:
    host = tmp_path / "host"
    token_file = tmp_path / f"{entity[1]}.token"
    argv = ["--out", str(pki.root), "--issue-token", *entity, "--url", service_url, "--token-file", str(token_file)]
    assert make_certs.main(argv) == 0
    assert make_certs.main(["--enroll", "--token-file", str(token_file), "--out", str(host)]) == 0
    return host


def test_renewal_signs_only_what_the_presented_certificate_is_for_a_new_key(pki: TestPKI, tmp_path: Path) -> None:
    with running_service(pki.root) as service:
        host = _enrolled(pki, url(service), tmp_path, *AGENT)
        cert, key, ca = host / "web1.crt", host / "web1.key", host / "ca.crt"
        context = service_client_context(ca.read_bytes(), cert, key)

        def renew_with(csr: str) -> int:
            try:
                enroll_client.post(url(service), "/v1/renew", {"csr": csr}, context, 10.0)
            except enroll_client.EnrollmentFailed as exc:
                assert exc.status is not None
                return exc.status
            return 200

        assert renew_with(_csr("web2", "server", ("localhost", "127.0.0.1"))) == 403
        assert str(_last_refusal(pki.root)["reason"]).startswith("csr: it asks for the subject")
        assert renew_with(_csr("web1", "server", ("localhost", "127.0.0.1", "10.1.1.1"))) == 403
        assert str(_last_refusal(pki.root)["reason"]).startswith("csr: it asks for other host names")
        own = x509.load_pem_x509_certificate(cert.read_bytes())
        # no client certificate: enrollment's context, on the renewal path
        assert _post(url(service), ca, {"csr": _csr("web1", "server", ("localhost", "127.0.0.1"))}, "/v1/renew") == 403
        assert _last_refusal(pki.root)["reason"] == "no client certificate presented"

        answer = enroll_client.renew(url(service), cert, key, ca)
        assert answer.cert.serial_number != own.serial_number
        assert answer.cert.public_key() != own.public_key()
        assert audit_records(pki.root)[-1]["outcome"] == "issued"
        # the old certificate is superseded now: a second renewal with it is refused
        assert renew_with(_csr("web1", "server", ("localhost", "127.0.0.1"))) == 403
        assert str(_last_refusal(pki.root)["reason"]).startswith("presented certificate is superseded")
        enroll_client.install_pair(cert, key, answer)

        make_certs.revoke(pki.root, "web1")  # the current one, revoked: renewal with it is refused
        with pytest.raises(enroll_client.EnrollmentFailed) as refused:
            enroll_client.renew(url(service), cert, key, ca)
        assert refused.value.status == 403
        assert _last_refusal(pki.root)["reason"] == "presented certificate is revoked"


def test_renewal_refuses_a_csr_for_the_same_key(pki: TestPKI, tmp_path: Path) -> None:
    with running_service(pki.root) as service:
        host = _enrolled(pki, url(service), tmp_path, "--collector", "collector")
        cert, key, ca = host / "collector.crt", host / "collector.key", host / "ca.crt"
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "collector")])
        )
        same = builder.sign(private, hashes.SHA256())
        context = service_client_context(ca.read_bytes(), cert, key)
        with pytest.raises(enroll_client.EnrollmentFailed) as refused:
            enroll_client.post(url(service), "/v1/renew", {"csr": csr_lib.request_pem(same).decode()}, context, 10.0)
        assert refused.value.status == 403
    assert str(_last_refusal(pki.root)["reason"]).startswith("csr: the same key")


def test_the_service_limits_rate_and_size_and_leaks_no_reason(pki: TestPKI, tmp_path: Path) -> None:
    with running_service(pki.root, limiter=RateLimiter(per_second=0.01, burst=3)) as service:
        context = service_client_context(pki.ca.read_bytes())
        statuses: list[tuple[int, str | None, bytes]] = []
        for body in (b"x" * (MAX_BODY_BYTES + 1), b'{"token": 1}', b'{"csr": "x", "token": "y"}', b"{}"):
            connection = http.client.HTTPSConnection("127.0.0.1", service.port, context=context, timeout=10)
            try:
                connection.request("POST", "/v1/enroll", body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                statuses.append((response.status, response.getheader("Retry-After"), response.read()))
            finally:
                connection.close()
    assert [s for s, _, _ in statuses] == [413, 400, 403, 429]
    assert statuses[-1][1] is not None and int(statuses[-1][1]) >= 1
    assert statuses[2][2] == b"403 Forbidden\n"  # why (a malformed token) is in the audit log only
    records = audit_records(pki.root)
    assert records[-2]["reason"] == "token malformed"
    assert (records[-1]["reason"], records[-1]["count"]) == ("rate_limited", 1)


@pytest.mark.parametrize(
    ("renew", "needle"),
    [
        ({"url": "http://ca.example:8443"}, "tls.renew.url: enrollment URL 'http://ca.example:8443' must be https"),
        ({"url": "https://ca.example:8443", "every": 3}, "tls.renew.every"),
    ],
    ids=["not-https", "unknown-key"],
)
def test_a_bad_renewal_setting_is_refused_with_its_key_path(
    pki: TestPKI, tmp_path: Path, renew: dict[str, object], needle: str
) -> None:
    for model, data in (
        (AgentConfig, agent_config_data(pki, "web1", tmp_path, tls={"renew": renew})),
        (CollectorConfig, {**json.loads((pki.root / "collector.json").read_text()), "tls": {
            **json.loads((pki.root / "collector.json").read_text())["tls"], "renew": renew}}),
    ):
        path = tmp_path / "config.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError) as refused:
            load_config(path, model)
        assert needle in str(refused.value)


def test_enroll_reads_the_token_from_a_private_file_or_stdin_only(
    pki: TestPKI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_service(pki.root) as service:
        issue(pki.root, service, tmp_path / "t", *AGENT)
        assert make_certs.main(["--enroll", "--out", str(tmp_path / "h")]) == 2
        assert "never from the command line" in capsys.readouterr().err
        (tmp_path / "t").chmod(0o644)
        assert make_certs.main(["--enroll", "--token-file", str(tmp_path / "t"), "--out", str(tmp_path / "h")]) == 2
        error = capsys.readouterr().err
        assert "chmod 600" in error and len(error.strip().splitlines()) == 1 and "Traceback" not in error
        with pytest.raises(SystemExit):
            make_certs.main(["--enroll", "--token", (tmp_path / "t").read_text(), "--out", str(tmp_path / "h")])
    assert TokenStore(enroll_dir(pki.root)).list()[0].state == "unused"


def _tls_to(service_port: int, ca: Path) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", service_port), timeout=10)
    return service_client_context(ca.read_bytes()).wrap_socket(raw, server_hostname="127.0.0.1")


def test_an_oversized_head_or_a_trickling_client_is_cut_off(pki: TestPKI) -> None:
    with running_service(pki.root, deadline=1.0) as service:
        with _tls_to(service.port, pki.ca) as sock:  # 16 KiB of headers: more than the service reads
            head = b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 16384 + b"\r\n\r\n"
            with contextlib.suppress(OSError):
                sock.sendall(head)
            with contextlib.suppress(OSError):
                assert not sock.recv(100).startswith(b"HTTP/1.1 2")
        with _tls_to(service.port, pki.ca) as sock:  # half a request, then nothing: shut at the deadline
            sock.sendall(b"POST /v1/enroll HTTP/1.1\r\nContent-")
            started = time.monotonic()
            with contextlib.suppress(OSError):
                assert sock.recv(100) == b""
            assert time.monotonic() - started < 5.0  # the deadline (1 s), not the 10 s read timeout
    assert not (enroll_dir(pki.root) / "audit.log").exists()  # nothing was decided, nothing issued


def test_two_renewals_with_one_certificate_at_once_give_one_certificate(pki: TestPKI, tmp_path: Path) -> None:
    with running_service(pki.root) as service:
        host = _enrolled(pki, url(service), tmp_path, *AGENT)
        outcomes: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(4)

        def renew() -> None:
            start.wait(timeout=10)
            try:
                enroll_client.renew(url(service), host / "web1.crt", host / "web1.key", host / "ca.crt")
                outcome = "issued"
            except enroll_client.EnrollmentFailed as exc:
                outcome = str(exc.status)
            with lock:
                outcomes.append(outcome)

        threads = [threading.Thread(target=renew) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert sorted(outcomes) == ["403", "403", "403", "issued"]
    renewals = [r for r in audit_records(pki.root) if r["event"] == "renew"]
    assert [r["outcome"] for r in renewals].count("issued") == 1
    refusals = [str(r["reason"]) for r in renewals if r["outcome"] == "refused"]
    assert len(refusals) == 3 and all(reason.startswith("presented certificate is superseded") for reason in refusals)


def test_the_rate_limit_counts_a_network_not_an_address(pki: TestPKI) -> None:
    """Many addresses of one /24 (or one /64: a single IPv6 host may hold all of it) share one bucket."""
    assert source_network("192.0.2.7") == source_network("192.0.2.200") == "192.0.2.0/24"
    assert source_network("2001:db8:1:2::1") == source_network("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_network("::ffff:192.0.2.7") == "192.0.2.0/24"
    assert source_network("2001:db8:1:3::1") != source_network("2001:db8:1:2::1")
    with running_service(pki.root, limiter=RateLimiter(per_second=0.01, burst=2)) as service:
        context = service_client_context(pki.ca.read_bytes())
        statuses = []
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            connection = http.client.HTTPSConnection("127.0.0.1", service.port, context=context, timeout=10,
                                                     source_address=(source, 0))
            try:
                connection.request("POST", "/v1/enroll", b"{}", {"Content-Type": "application/json"})
                statuses.append(connection.getresponse().status)
            finally:
                connection.close()
    assert statuses == [400, 400, 429]
