"""pki/make_certs.py as a user runs it: files, modes, extensions, lifetimes, re-runs and bad input."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pki import make_certs, tokens
from pki.configfile import load_config
from secure_agent.config import AgentConfig
from secure_collector.config import CollectorConfig

SCRIPT = Path(__file__).resolve().parents[2] / "pki" / "make_certs.py"


def run(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    command = ["sh", "-c", 'umask "$0" && exec "$@"', f"{umask:03o}", sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mode)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mc") / "pki"
    result = run("--out", str(root), umask=0)
    assert result.returncode == 0, result.stderr
    return root


def test_writes_what_the_contract_lists(out: Path) -> None:
    expected = {
        "ca.crt",
        "ca.key",
        "crl.pem",
        "agents/localhost.crt",
        "agents/localhost.key",
        "collectors/collector.crt",
        "collectors/collector.key",
        "collectors/collector.hmac",
        "agent-localhost.json",
        "collector.json",
    }
    assert expected <= set(snapshot(out))


def test_private_files_are_0600_under_umask_000(out: Path) -> None:
    for name in ("ca.key", "agents/localhost.key", "collectors/collector.key", "collectors/collector.hmac"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600, name
    for name in ("ca.crt", "crl.pem", "agent-localhost.json", "collector.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) & 0o002 == 0, name
    assert stat.S_IMODE(out.stat().st_mode) & 0o077 in (0, 0o050)


def test_ca_extensions_and_lifetime(out: Path) -> None:
    ca = load(out / "ca.crt")
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.name == "secp256r1"
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)


def test_agent_leaf_has_server_auth_and_typed_sans(out: Path) -> None:
    ca, leaf = load(out / "ca.crt"), load(out / "agents/localhost.crt")
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=89) < lifetime < dt.timedelta(days=91)
    leaf.verify_directly_issued_by(ca)


def test_collector_leaf_has_client_auth_and_random_serials(out: Path) -> None:
    leaf = load(out / "collectors/collector.crt")
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert leaf.serial_number.bit_length() > 100
    assert leaf.serial_number != load(out / "agents/localhost.crt").serial_number


def test_crl_has_a_next_update(out: Path) -> None:
    crl = x509.load_pem_x509_crl((out / "crl.pem").read_bytes())
    assert crl.next_update_utc is not None and crl.next_update_utc > dt.datetime.now(dt.UTC)
    assert crl.is_signature_valid(load(out / "ca.crt").public_key())  # type: ignore[arg-type]


def test_hmac_key_is_32_random_bytes_as_hex(out: Path) -> None:
    text = (out / "collectors/collector.hmac").read_text().strip()
    assert len(text) == 64 and int(text, 16) >= 0
    assert len(tokens.load_key(out / "collectors/collector.hmac")) == 32


def test_configs_are_ready_to_run(out: Path) -> None:
    agent = load_config(out / "agent-localhost.json", AgentConfig)
    collector = load_config(out / "collector.json", CollectorConfig)
    assert agent.name == "localhost" and agent.tls.crl == out / "crl.pem"
    assert set(agent.security.hmac_keys) == {"collector"}
    assert collector.hmac.key_id == "collector"
    assert [a.name for a in collector.agents] == ["localhost"]
    assert collector.storage.type == "file" and collector.storage.json_file.parent == out / "data"


def test_second_run_changes_no_file(out: Path) -> None:
    before = snapshot(out)
    result = run("--out", str(out))
    assert result.returncode == 0, result.stderr
    assert snapshot(out) == before


def test_rerun_adds_agents_and_collectors_and_keeps_the_ca(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    assert run("--out", str(root)).returncode == 0
    before = snapshot(root)
    result = run("--out", str(root), "--agent", "web=web.example.com,10.0.0.5", "--collector", "backup")
    assert result.returncode == 0, result.stderr
    after = snapshot(root)
    for kept in ("ca.crt", "ca.key", "agents/localhost.key", "collectors/collector.key", "collectors/collector.hmac"):
        assert after[kept] == before[kept]
    web = load(root / "agents/web.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert web.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    collector = json.loads((root / "collector.json").read_text())
    assert [a["name"] for a in collector["agents"]] == ["localhost", "web"]
    agent = json.loads((root / "agent-localhost.json").read_text())
    assert set(agent["security"]["hmac_keys"]) == {"collector", "backup"}
    assert json.loads((root / "collector-backup.json").read_text())["hmac"]["key_id"] == "backup"


def test_force_reissues_named_leaves_but_never_the_ca(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    assert run("--out", str(root)).returncode == 0
    before = snapshot(root)
    assert run("--out", str(root), "--collector", "collector", "--force").returncode == 0
    after = snapshot(root)
    assert after["ca.key"] == before["ca.key"]
    assert after["collectors/collector.key"] != before["collectors/collector.key"]
    assert after["collectors/collector.hmac"] == before["collectors/collector.hmac"]
    rotated = run("--out", str(root), "--collector", "collector", "--rotate-hmac")
    assert rotated.returncode == 0, rotated.stderr
    after = snapshot(root)
    assert after["collectors/collector.hmac"] == before["collectors/collector.hmac"]  # the old key stays
    [new] = [
        name
        for name in after
        if name.startswith("collectors/collector.") and name.endswith(".hmac") and name != "collectors/collector.hmac"
    ]
    label = new.removeprefix("collectors/collector.").removesuffix(".hmac")
    agent = json.loads((root / "agent-localhost.json").read_text())["security"]["hmac_keys"]
    assert set(agent) == {"collector", f"collector/{label}"}  # agents accept both during the overlap
    collector = json.loads((root / "collector.json").read_text())["hmac"]
    assert collector == {"key_id": f"collector/{label}", "key_file": str(root / new)}
    again = run("--out", str(root), "--collector", "collector", "--rotate-hmac")  # same day: a new label
    assert again.returncode == 0, again.stderr
    assert json.loads((root / "collector.json").read_text())["hmac"]["key_id"] == f"collector/{label}-2"


def test_revoke_lists_the_serial(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    assert run("--out", str(root)).returncode == 0
    result = run("--out", str(root), "--revoke", "collector")
    assert result.returncode == 0, result.stderr
    crl = x509.load_pem_x509_crl((root / "crl.pem").read_bytes())
    serial = load(root / "collectors/collector.crt").serial_number
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--agent", "web=not a host"], "neither an IP address nor a valid host name"),
        (["--agent", "../evil=localhost"], "no path separators"),
        (["--collector", "a/b"], "no path separators"),
        (["--agent", "web"], "expected NAME=HOST"),
        (["--days", "400"], "--days must be 1..397"),
        (["--revoke", "ghost"], "no CA here"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, args: list[str], needle: str) -> None:
    root = tmp_path / "pki"
    result = run("--out", str(root), *args)
    assert result.returncode != 0
    assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert not root.exists() or not any(root.rglob("*.key"))


def test_unwritable_out_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run("--out", str(blocker / "pki"))
    assert result.returncode == 2
    assert str(blocker) in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_in_process_main_matches_the_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_certs.main(["--out", str(tmp_path / "p")]) == 0
    assert "PKI ready" in capsys.readouterr().out


# --- bootstrap that never writes a config that cannot run (issue 21) ------------------------------------


def _agent(root: Path, name: str) -> AgentConfig:
    return load_config(root / f"agent-{name}.json", AgentConfig)


def test_agents_without_collector_get_the_default_collector(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    result = run("--out", str(root), "--agent", "a1=localhost,127.0.0.1", "--agent", "a2=localhost,127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert "made the collector 'collector'" in result.stderr
    collector = load_config(root / "collector.json", CollectorConfig)
    a1, a2 = _agent(root, "a1"), _agent(root, "a2")
    assert set(a1.security.hmac_keys) == set(a2.security.hmac_keys) == {"collector"}
    # two agents on this host's loopback cannot share a port: the second takes the next one, and says so
    assert (a1.port, a2.port) == (8000, 8001) and "a2 listens on 127.0.0.1:8001" in result.stderr
    assert [(a.name, a.port) for a in collector.agents] == [("a1", 8000), ("a2", 8001)]


def test_per_agent_ports_and_reruns_stay_consistent(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    agents = ["--agent", "a1=localhost,127.0.0.1:9101", "--agent", "web=web.example.com,[2001:db8::5]:9443"]
    result = run("--out", str(root), *agents, "--collector", "c1")
    assert result.returncode == 0, result.stderr
    assert _agent(root, "a1").port == 9101 and _agent(root, "web").port == 9443
    sans = load(root / "agents/web.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("2001:db8::5")]
    # the predecessor's complaint: a rerun with --port changed only collector.json
    assert run("--out", str(root), "--agent", "a1=localhost,127.0.0.1", "--port", "9200").returncode == 0
    assert _agent(root, "a1").port == 9200
    # a collector added later polls every agent already there, each at its own port
    assert run("--out", str(root), "--collector", "c2").returncode == 0
    for path in (root / "collector.json", root / "collector-c2.json"):
        config = load_config(path, CollectorConfig)
        assert {(a.name, a.port) for a in config.agents} == {("a1", 9200), ("web", 9443)}, path
    assert set(_agent(root, "web").security.hmac_keys) == {"c1", "c2"}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--collector", "c"], "a collector needs an agent to poll: add --agent"),
        (["--agent", "a=localhost:8000", "--agent", "b=127.0.0.1:8000"], "give b another port"),
        (["--agent", "a=localhost:99999"], "the port after ':' must be 1..65535"),
    ],
)
def test_unusable_requests_fail_in_one_line_with_the_fix(tmp_path: Path, args: list[str], needle: str) -> None:
    root = tmp_path / "pki"
    result = run("--out", str(root), *args)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and needle in result.stderr
    assert not any(root.rglob("*.json")) and not any(root.rglob("*.key"))


def test_the_run_ends_by_checking_what_it_wrote(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    assert run("--out", str(root)).returncode == 0
    (root / "collectors" / "collector.hmac").write_text("not a key\n")  # damaged since the first run
    result = run("--out", str(root), "--agent", "web=web.example.com")
    assert result.returncode == 2 and "PKI ready" not in result.stdout
    assert str(root / "collectors" / "collector.hmac") in result.stderr
