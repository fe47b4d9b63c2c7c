"""Keys made on their own host: ``make_certs --request`` there, ``--sign`` on the CA machine (issue 20, item 1).

Only the certificate crosses: the key is written once, mode 0600, never printed, and the CA signs only a CSR
that asks for exactly the name, addresses and purpose the operator restated. A CSR is untrusted input, so
each way one can differ is refused with exit 2 and one line saying what differs.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from pki import csr as csr_lib
from pki import make_certs
from secure_agent.config import AgentConfig
from secure_agent.lifecycle import Agent
from secure_collector import cli
from tests.collector.helpers import WIDE, collector_data, load, read_store, write_config
from tests.plugins.agent import TEST_SERVER_LIMITS
from tests.plugins.pki import TestPKI

HOSTS = "localhost,127.0.0.1"
ASKED_HOSTS = (x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
AGENT = f"web1={HOSTS}"


def run(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = make_certs.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def ca_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "ca"
    assert run(["--out", str(out)], capsys)[0] == 0
    return out


def test_request_writes_only_a_private_key_and_its_csr_and_prints_no_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = tmp_path / "host"
    code, out, err = run(["--request", "--out", str(host), "--agent", AGENT], capsys)
    assert code == 0, err
    assert sorted(p.name for p in host.iterdir()) == ["web1.csr", "web1.key"]
    assert stat.S_IMODE((host / "web1.key").stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in out + err and "web1.csr" in out
    request = x509.load_pem_x509_csr((host / "web1.csr").read_bytes())
    assert request.is_signature_valid
    # asked again, it does not replace the key the host already has
    code, _, err = run(["--request", "--out", str(host), "--agent", AGENT], capsys)
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1


def test_the_signed_certificate_is_for_the_hosts_key_and_what_was_asked(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = tmp_path / "host"
    assert run(["--request", "--out", str(host), "--agent", AGENT], capsys)[0] == 0
    code, _, err = run(["--out", str(ca_dir), "--sign", str(host / "web1.csr"), "--agent", AGENT], capsys)
    assert code == 0, err
    assert not (ca_dir / "agents" / "web1.key").exists()  # the key never came here
    cert = x509.load_pem_x509_certificate((ca_dir / "agents" / "web1.crt").read_bytes())
    key = serialization.load_pem_private_key((host / "web1.key").read_bytes(), password=None)
    assert cert.public_key() == key.public_key()
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "web1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v) for v in san.get_values_for_type(x509.DNSName)} == {"localhost"}
    assert [str(v) for v in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert json.loads((ca_dir / "agent-web1.json").read_text())["name"] == "web1"
    assert "web1" in {a["name"] for a in json.loads((ca_dir / "collector.json").read_text())["agents"]}


def test_an_agent_with_the_signed_certificate_and_its_own_key_serves_a_real_collector(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = tmp_path / "host"
    assert run(["--request", "--out", str(host), "--agent", AGENT], capsys)[0] == 0
    assert run(["--out", str(ca_dir), "--sign", str(host / "web1.csr"), "--agent", AGENT], capsys)[0] == 0
    # what the operator copies to the host: the certificate, the CA, the CRL and the agent's config
    for name in ("ca.crt", "crl.pem"):
        (host / name).write_bytes((ca_dir / name).read_bytes())
    (host / "web1.crt").write_bytes((ca_dir / "agents" / "web1.crt").read_bytes())
    data = json.loads((ca_dir / "agent-web1.json").read_text())
    data["tls"].update(cert=str(host / "web1.crt"), key=str(host / "web1.key"), ca=str(host / "ca.crt"))
    data["tls"]["crl"] = str(host / "crl.pem")
    data.update(port=0, audit_log=str(host / "audit.log"), server=TEST_SERVER_LIMITS)
    agent = Agent(AgentConfig.model_validate(data))
    agent.start()
    try:
        polled = [("web1", "127.0.0.1", agent.address[1])]
        collector = collector_data(TestPKI(ca_dir), tmp_path, polled)
        code = cli.main(["--config", str(write_config(tmp_path, collector)), "--once"])
        assert code == 0, capsys.readouterr()
        assert list(read_store(load(collector)).query_samples(*WIDE)["agent"]) == ["web1"]
    finally:
        agent.stop(timeout=2.0)


def _csr(
    name: str = "web1",
    hosts: Sequence[x509.GeneralName] = ASKED_HOSTS,
    usages: Sequence[x509.ObjectIdentifier] = (ExtendedKeyUsageOID.SERVER_AUTH,),
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(hosts)), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _tampered() -> bytes:
    request = x509.load_pem_x509_csr(_csr())
    der = bytearray(request.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature: it no longer verifies
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()


MISMATCHES: dict[str, tuple[Callable[[], bytes], str, str]] = {
    "another name": (lambda: _csr(name="web2"), AGENT, "subject"),
    "an extra address": (lambda: _csr(hosts=[x509.DNSName("localhost"), x509.DNSName("evil.example")]), AGENT, "also"),
    "a missing address": (lambda: _csr(hosts=[x509.DNSName("localhost")]), AGENT, "not 127.0.0.1"),
    "clientAuth asked by an agent": (
        lambda: _csr(usages=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), AGENT, "clientAuth"
    ),
    "serverAuth asked by a collector": (lambda: _csr(name="c2", hosts=()), "collector:c2", "serverAuth"),
    "an RSA key": (lambda: _csr(key=rsa.generate_private_key(65537, 2048)), AGENT, "P-256"),
    "another curve": (lambda: _csr(key=ec.generate_private_key(ec.SECP384R1())), AGENT, "P-256"),
    "a bad signature": (_tampered, AGENT, "signature"),
    "an oversized file": (lambda: _csr() + b"\n" * 20_000, AGENT, "larger than"),
    "not a CSR": (lambda: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", AGENT, "not a PEM"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_a_csr_asking_for_anything_else_is_refused_with_one_line(
    case: str, ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make, who, said = MISMATCHES[case]
    path = tmp_path / "request.csr"
    path.write_bytes(make())
    target = ["--collector", who.split(":", 1)[1]] if who.startswith("collector:") else ["--agent", who]
    before = sorted(p.relative_to(ca_dir) for p in ca_dir.rglob("*"))
    code, _, err = run(["--out", str(ca_dir), "--sign", str(path), *target], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and said in lines[0], lines
    assert sorted(p.relative_to(ca_dir) for p in ca_dir.rglob("*")) == before  # nothing written


def test_the_first_signing_makes_the_ca_and_a_directory_that_is_not_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "request.csr"
    path.write_bytes(_csr())
    code, _, err = run(["--out", str(tmp_path / "new"), "--sign", str(path), "--agent", AGENT], capsys)
    assert code == 0, err
    assert (tmp_path / "new" / "ca.crt").exists() and (tmp_path / "new" / "agents" / "web1.crt").exists()
    assert not (tmp_path / "new" / "agents" / "web1.key").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a PKI")
    code, _, err = run(["--out", str(other), "--sign", str(path), "--agent", AGENT], capsys)
    assert code == 2 and "no CA here" in err
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_a_collector_key_made_here_is_replaced_by_one_made_on_its_host_only_with_force(
    ca_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = tmp_path / "monitoring"
    assert run(["--request", "--out", str(host), "--collector", "collector"], capsys)[0] == 0
    sign = ["--out", str(ca_dir), "--sign", str(host / "collector.csr"), "--collector", "collector"]
    code, _, err = run(sign, capsys)
    assert code == 2 and "--force" in err and (ca_dir / "collectors" / "collector.key").exists()
    code, _, err = run([*sign, "--force"], capsys)
    assert code == 0, err
    assert not (ca_dir / "collectors" / "collector.key").exists()
    assert (ca_dir / "collectors" / "collector.hmac").exists()  # the agents' shared key stays
    cert = x509.load_pem_x509_certificate((ca_dir / "collectors" / "collector.crt").read_bytes())
    key = serialization.load_pem_private_key((host / "collector.key").read_bytes(), password=None)
    assert cert.public_key() == key.public_key()


GOOD = _csr()


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0, max_value=len(GOOD) - 1), value=st.integers(min_value=0, max_value=255))
def test_any_byte_of_a_csr_altered_is_signed_as_asked_or_refused_in_one_line(position: int, value: int) -> None:
    """Untrusted input: whatever a byte becomes, the CA signs exactly what was asked or refuses, never raises else."""
    data = bytearray(GOOD)
    data[position] = value
    try:
        public = csr_lib.check_request(bytes(data), "web1", "server", ["localhost", "127.0.0.1"])
    except csr_lib.RequestRefused as refused:
        assert "\n" not in str(refused) and str(refused)
        return
    assert isinstance(public, ec.EllipticCurvePublicKey)  # unaltered where it matters (base64 padding, PEM text)
