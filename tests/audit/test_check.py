"""``secure-audit check`` over real make_certs deployments: clean, then one finding at a time."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki import ca as ca_lib
from pki.files import PUBLIC_MODE, write_atomic
from secure_audit import check
from tests.audit.helpers import Report, agent_config, collector_config, edit, run_check, weak_certificate
from tests.plugins.pki import TestPKI
from tests.probes.journal import Entry, JournalFixture

MakePKI = Callable[..., TestPKI]
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def pki(tmp_path: Path, make_pki: MakePKI, capsys: pytest.CaptureFixture[str]) -> TestPKI:
    made = make_pki(tmp_path / "pki")
    capsys.readouterr()  # make_certs's "PKI ready" line is not part of any report
    auth_log = tmp_path / "auth.log"  # a readable SSH log source, whatever this host has
    auth_log.write_text("")
    set_agent(made, "security.auth_log_paths", [str(auth_log)])
    set_agent(made, "security.auth_sources", ["files"])
    return made


def test_no_readable_ssh_source_is_a_finding(capsys: pytest.CaptureFixture[str], pki: TestPKI, tmp_path: Path) -> None:
    # a journald-only host (Debian 12's default): no auth.log, and here no journal the agent may read either
    set_agent(pki, "security.auth_log_paths", [str(tmp_path / "missing.log")])
    set_agent(pki, "security.auth_sources", ["files", "journal"])
    set_agent(pki, "security.journal_directory", str(tmp_path))
    report = check_agent(capsys, pki)
    finding = report.finding("ssh-not-monitored")
    assert finding["severity"] == "medium" and finding["key"] == "security.auth_sources"
    assert "no auth log found" in finding["message"] and "no systemd journal found" in finding["message"]
    journal = JournalFixture(tmp_path / "journal")
    journal.append([Entry(time.time() - 1, "sshd", "Invalid user a from 203.0.113.4 port 1")])
    set_agent(pki, "security.journal_directory", str(journal.directory))
    assert "ssh-not-monitored" not in check_agent(capsys, pki).ids


def check_agent(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> Report:
    return run_check(capsys, "--agent-config", str(agent_config(pki)))


def check_collector(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> Report:
    return run_check(capsys, "--collector-config", str(collector_config(pki)))


def set_agent(pki: TestPKI, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")

    def change(document: dict[str, Any]) -> None:
        section = document
        for part in parents:
            section = section[part]
        if value is None:
            del section[leaf]
        else:
            section[leaf] = value

    edit(agent_config(pki), change)


# --- clean deployments and the report itself ---------------------------------------------------------


def test_make_certs_deployment_is_clean(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    code = check.main(["--agent-config", str(agent_config(pki)), "--collector-config", str(collector_config(pki))])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "no findings" in out
    assert str(agent_config(pki)) in out and str(collector_config(pki)) in out


def test_json_report_parses_and_names_severity_and_fix(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    both = ("--agent-config", str(agent_config(pki)), "--collector-config", str(collector_config(pki)))
    clean = run_check(capsys, *both)
    assert clean.code == 0
    assert clean.document == {
        "result": "clean",
        "checked": [
            {"role": "agent", "config": str(agent_config(pki))},
            {"role": "collector", "config": str(collector_config(pki))},
        ],
        "counts": {"high": 0, "medium": 0, "low": 0, "info": 0},
        "findings": [],
    }
    os.chmod(pki.agent_files()[1], 0o644)
    set_agent(pki, "tls.min_version", "TLSv1.2")
    dirty = check_agent(capsys, pki)
    assert dirty.code == 1
    assert dirty.document is not None and dirty.document["result"] == "findings"
    assert dirty.document["counts"] == {"high": 1, "medium": 0, "low": 0, "info": 1}
    first, second = dirty.document["findings"]  # most severe first
    assert (first["id"], first["severity"], first["key"]) == ("key-file-readable", "high", "tls.key")
    assert first["file"] == str(pki.agent_files()[1]) and "chmod 600" in first["fix"]
    assert (second["id"], second["severity"], second["file"]) == ("tls-floor", "info", None)
    assert all(f["message"] and f["fix"] for f in dirty.document["findings"])


def test_text_report_names_each_finding_with_severity_and_fix(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    os.chmod(pki.collector_files()[2], 0o640)
    code = check.main(["--collector-config", str(collector_config(pki))])
    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert out[1] == f"[HIGH] key-file-readable: collector hmac.key_file ({pki.collector_files()[2]})"
    assert out[2].strip().startswith("HMAC key file has mode 0640")
    assert out[3].strip() == f"fix: chmod 600 {pki.collector_files()[2]} (owner: the service user)"
    assert out[-1] == "1 finding: 1 high"


def test_fail_on_raises_the_exit_threshold(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    set_agent(pki, "tls.min_version", "TLSv1.2")
    assert run_check(capsys, "--agent-config", str(agent_config(pki)), "--fail-on", "low").code == 0
    assert run_check(capsys, "--agent-config", str(agent_config(pki))).code == 1


# --- one finding at a time ---------------------------------------------------------------------------


def test_tls12_floor_is_an_info_finding(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    set_agent(pki, "tls.min_version", "TLSv1.2")
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"tls-floor"}
    assert report.finding("tls-floor")["severity"] == "info"


@pytest.mark.parametrize("version", ["TLSv1.1", "TLSv1", "SSLv3"])
def test_tls_floor_below_12_is_refused_by_the_config(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, version: str
) -> None:
    set_agent(pki, "tls.min_version", version)
    report = check_agent(capsys, pki)
    assert report.code == 2 and report.document is None
    assert report.stderr.count("\n") == 1
    assert str(agent_config(pki)) in report.stderr and "tls.min_version" in report.stderr


@pytest.mark.parametrize(
    ("days", "expected", "severity"),
    [
        (10, "cert-expiring", "medium"),
        (-1, "cert-expired", "high"),
        (400, "cert-lifetime", "medium"),  # above the CA/Browser Forum's 397 days
        (120, "cert-lifetime-modern", "info"),  # above Mozilla modern's 90 days
    ],
)
def test_agent_certificate_expiry_and_lifetime(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, days: int, expected: str, severity: str
) -> None:
    start = NOW - dt.timedelta(days=30) if days < 0 else None
    cert, key = pki.issue(
        "localhost", "server", hosts=["localhost"], not_before=start, not_after=NOW + dt.timedelta(days=days)
    )
    set_agent(pki, "tls.cert", str(cert))
    set_agent(pki, "tls.key", str(key))
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {expected}
    assert report.finding(expected)["severity"] == severity
    assert report.finding(expected)["key"] == "tls.cert"


def test_collector_certificate_expiring_is_found(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    cert, key = pki.issue("collector", "client", not_after=NOW + dt.timedelta(days=29))
    edit(collector_config(pki), lambda d: d["tls"].update(cert=str(cert), key=str(key)))
    report = check_collector(capsys, pki)
    assert report.code == 1 and report.ids == {"cert-expiring"}
    assert "in 28 days" in report.finding("cert-expiring")["message"]


def test_a_397_day_leaf_is_within_policy_and_only_noted_against_the_modern_profile(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pki import make_certs

    assert make_certs.main(["--out", str(tmp_path / "pki"), "--days", "397"]) == 0
    capsys.readouterr()
    (tmp_path / "auth.log").write_text("")  # an SSH log source, whatever this host has
    config = edit(tmp_path / "pki" / "agent-localhost.json",
                  lambda d: d["security"].update(auth_log_paths=[str(tmp_path / "auth.log")], auth_sources=["files"]))
    report = run_check(capsys, "--agent-config", str(config))
    assert report.code == 1 and report.ids == {"cert-lifetime-modern"}, report.document
    assert report.finding("cert-lifetime-modern")["severity"] == "info"
    assert run_check(capsys, "--agent-config", str(config), "--fail-on", "low").code == 0


@pytest.mark.parametrize(
    ("key", "needle"),
    [
        # the point of the test is a breakable key: the check must find it
        (lambda: rsa.generate_private_key(65537, 1024), "RSA key of 1024 bits"),  # noqa: S505
        (lambda: ec.generate_private_key(ec.SECP224R1()), "secp224r1 (224 bits)"),
    ],
    ids=["rsa1024", "p224"],
)
def test_weak_keys_are_found(
    capsys: pytest.CaptureFixture[str],
    pki: TestPKI,
    key: Callable[[], rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey],
    needle: str,
) -> None:
    cert, key_path = weak_certificate(pki, "weak", key())
    set_agent(pki, "tls.cert", str(cert))
    set_agent(pki, "tls.key", str(key_path))
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"weak-key"}
    assert needle in report.finding("weak-key")["message"]


def test_rsa_2048_is_strong_enough(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    cert, key_path = weak_certificate(pki, "rsa2048", rsa.generate_private_key(65537, 2048))
    set_agent(pki, "tls.cert", str(cert))
    set_agent(pki, "tls.key", str(key_path))
    assert check_agent(capsys, pki).code == 0


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602])
def test_key_files_open_to_group_or_others_are_found(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, mode: int
) -> None:
    tls_key = pki.agent_files()[1]
    _, collector_key, hmac_key = pki.collector_files()
    for path in (tls_key, collector_key, hmac_key):
        os.chmod(path, mode)
    agent = check_agent(capsys, pki)
    assert agent.code == 1 and agent.ids == {"key-file-readable"}
    assert {f["key"] for f in agent.findings} == {"tls.key", "security.hmac_keys.collector"}
    collector = check_collector(capsys, pki)
    assert collector.code == 1
    assert {f["key"] for f in collector.findings} == {"tls.key", "hmac.key_file"}
    assert all(f"{mode:04o}" in f["message"] for f in collector.findings)


def test_missing_material_is_a_finding_that_names_the_file(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    set_agent(pki, "tls.cert", str(pki.root / "nowhere.crt"))
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"material-unusable"}
    assert report.finding("material-unusable")["file"] == str(pki.root / "nowhere.crt")


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["10.0.0.0/8"], {"allowlist-wide"}),
        (["192.168.0.0/23"], {"allowlist-wide"}),
        (["2001:db8::/48"], {"allowlist-wide"}),
        (["8.8.8.0/29"], {"allowlist-public-range"}),
        (["192.168.1.0/24", "10.1.2.3", "fd00::/64", "2001:db8::5"], set()),
    ],
)
def test_allowlist_width_is_judged_by_prefix(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, entries: list[str], expected: set[str]
) -> None:
    set_agent(pki, "security.allowed_ips", entries)
    report = check_agent(capsys, pki)
    assert report.ids == expected
    assert report.code == (1 if expected else 0)


@pytest.mark.parametrize("entries", [["0.0.0.0/0"], ["::/0"], []])
def test_open_or_empty_allowlist_is_refused_by_the_config(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, entries: list[str]
) -> None:
    set_agent(pki, "security.allowed_ips", entries)
    report = check_agent(capsys, pki)
    assert report.code == 2 and "security.allowed_ips" in report.stderr and report.stderr.count("\n") == 1


def test_empty_allowed_clients_is_an_info_finding(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    set_agent(pki, "security.allowed_clients", [])
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"allowed-clients-empty"}
    assert report.finding("allowed-clients-empty")["severity"] == "info"


def test_rate_limit_not_written_down_is_found(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    set_agent(pki, "security.rate_limit", None)
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"rate-limit-missing"}


@pytest.mark.parametrize(("per_second", "burst"), [(500, 20), (10, 5000)])
def test_very_high_rate_limit_is_found(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, per_second: int, burst: int
) -> None:
    set_agent(pki, "security.rate_limit", {"per_second": per_second, "burst": burst})
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"rate-limit-high"}


@pytest.mark.parametrize("length", [16, 31])
def test_short_hmac_keys_are_found_without_printing_them(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, length: int
) -> None:
    hmac_key = pki.collector_files()[2]
    secret = os.urandom(length).hex()
    write_atomic(hmac_key, secret.encode() + b"\n", mode=0o600, overwrite=True)
    for report in (check_agent(capsys, pki), check_collector(capsys, pki)):
        assert report.code == 1 and report.ids == {"hmac-key-short"}
        assert f"{length} bytes" in report.finding("hmac-key-short")["message"]
        assert secret not in json.dumps(report.document)


def test_crl_missing_is_found(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    set_agent(pki, "tls.crl", None)
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"crl-missing"}


def _write_crl(pki: TestPKI, last_update: dt.datetime, next_update: dt.datetime) -> None:
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.authority.cert.subject)
        .last_update(last_update)
        .next_update(next_update)
        .sign(pki.authority.key, hashes.SHA256())
    )
    write_atomic(pki.crl, ca_lib.crl_pem(crl), mode=PUBLIC_MODE, overwrite=True)


@pytest.mark.parametrize(
    ("next_update", "expected"),
    [(dt.timedelta(days=3), "crl-near-next-update"), (dt.timedelta(days=-1), "crl-expired")],
)
def test_crl_near_or_past_next_update_is_found(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, next_update: dt.timedelta, expected: str
) -> None:
    _write_crl(pki, NOW - dt.timedelta(days=20), NOW + next_update)
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {expected}


def test_crl_of_another_ca_is_found(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, make_pki: MakePKI, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other")
    capsys.readouterr()
    set_agent(pki, "tls.crl", str(other.crl))
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"crl-foreign"}


def test_audit_log_not_writable_is_found(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    blocker = pki.root / "data" / "a-file"
    blocker.write_text("")
    set_agent(pki, "audit_log", str(blocker / "audit.log"))  # its parent is a file: cannot be created
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"audit-log-not-writable"}
    set_agent(pki, "audit_log", str(pki.root / "data"))  # a directory
    assert check_agent(capsys, pki).ids == {"audit-log-not-writable"}


def test_audit_log_open_to_others_is_found(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    audit_log = pki.root / "data" / "audit-localhost.log"
    audit_log.write_text("")
    os.chmod(audit_log, 0o644)
    report = check_agent(capsys, pki)
    assert report.code == 1 and report.ids == {"audit-log-readable"}


def test_audit_log_not_configured_is_refused(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    set_agent(pki, "audit_log", None)
    report = check_agent(capsys, pki)
    assert report.code == 2 and "audit_log" in report.stderr and report.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("storage", "expected"),
    [
        ({"type": "mysql", "mysql_host": "db.example.net"}, {"mysql-without-tls"}),
        ({"type": "mysql", "mysql_host": "192.0.2.7"}, {"mysql-without-tls"}),
        ({"type": "mysql", "mysql_host": "127.0.0.1"}, set()),
        ({"type": "mysql", "mysql_host": "localhost"}, set()),
        ({"type": "mysql", "mysql_host": "::1"}, set()),
        ({"type": "mysql", "mysql_host": "db.example.net", "mysql_ssl": {"ca": "/etc/ssl/db-ca.pem"}}, set()),
    ],
)
def test_mysql_without_tls_on_a_remote_host_is_found(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, storage: dict[str, Any], expected: set[str]
) -> None:
    edit(collector_config(pki), lambda d: d.update(storage=storage))
    report = check_collector(capsys, pki)
    assert report.ids == expected and report.code == (1 if expected else 0)


@pytest.mark.parametrize(("retention", "expected"), [({"trends_days": 90}, {"retention-under-a-year"}),
                                                     ({"trends_days": 365, "history_days": 30}, set())])
def test_trends_kept_less_than_a_year_are_reported(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, retention: dict[str, Any], expected: set[str]
) -> None:
    edit(collector_config(pki), lambda d: d["storage"].update(retention=retention))
    report = check_collector(capsys, pki)
    assert report.ids == expected and report.code == (1 if expected else 0)
    if expected:
        assert "10.5.1" in report.finding("retention-under-a-year")["message"]


def test_mysql_password_in_a_group_readable_config_is_found(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    edit(collector_config(pki), lambda d: d.update(storage={"type": "mysql", "mysql_password": "pw"}))
    os.chmod(collector_config(pki), 0o640)
    report = check_collector(capsys, pki)
    assert report.ids == {"secret-in-readable-config"}
    assert "pw" not in report.finding("secret-in-readable-config")["message"]
    os.chmod(collector_config(pki), 0o600)
    assert check_collector(capsys, pki).code == 0


def test_findings_of_both_configs_in_one_report(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    set_agent(pki, "security.allowed_clients", [])
    edit(collector_config(pki), lambda d: d.update(storage={"type": "mysql", "mysql_host": "192.0.2.7"}))
    both = ("--agent-config", str(agent_config(pki)), "--collector-config", str(collector_config(pki)))
    report = run_check(capsys, *both)
    assert report.code == 1
    assert [(f["role"], f["id"]) for f in report.findings] == [
        ("collector", "mysql-without-tls"),
        ("agent", "allowed-clients-empty"),
    ]


# --- unusable input: exit 2, one line naming the file and key ----------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (None, "cannot read"),
    ],
)
def test_unusable_config_is_one_line_naming_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes | None, needle: str
) -> None:
    config = tmp_path / "agent.json"
    if content is not None:
        config.write_bytes(content)
    report = run_check(capsys, "--agent-config", str(config))
    assert report.code == 2 and report.document is None
    assert report.stderr.count("\n") == 1 and str(config) in report.stderr and needle in report.stderr


def test_unknown_key_is_one_line_naming_the_key(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    edit(collector_config(pki), lambda d: d["tls"].update(verify=False))
    report = check_collector(capsys, pki)
    assert report.code == 2 and report.stderr.strip().endswith("tls.verify: unknown key")


@pytest.mark.parametrize(("section", "key", "value"), [("security", "require_auth", False), ("tls", "verify", False)])
def test_predecessor_and_verification_switches_do_not_exist(
    capsys: pytest.CaptureFixture[str], pki: TestPKI, section: str, key: str, value: object
) -> None:
    edit(agent_config(pki), lambda d: d[section].update({key: value}))
    report = check_agent(capsys, pki)
    assert report.code == 2 and report.stderr.strip().endswith(f"{section}.{key}: unknown key")


def test_no_config_given_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    report = run_check(capsys)
    assert report.code == 2 and report.stderr.count("\n") == 1 and "--agent-config" in report.stderr


def test_the_exporters_key_open_to_others_is_found(capsys: pytest.CaptureFixture[str], pki: TestPKI) -> None:
    cert, key = pki.issue("exporter", "server", hosts=["127.0.0.1"], folder="exporter")
    key.chmod(0o644)
    tls_section = {"cert": str(cert), "key": str(key), "ca": str(pki.ca)}
    edit(collector_config(pki), lambda d: d.update(exporter={"listen": "127.0.0.1:0", "tls": tls_section}))
    report = check_collector(capsys, pki)
    assert report.code == 1 and report.ids == {"key-file-readable"}
    assert report.finding("key-file-readable")["key"] == "exporter.tls.key"
