"""Shared helpers of the audit tests: run ``secure-audit check`` in process, edit configs, weak certificates."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki import ca as ca_lib
from pki.files import PRIVATE_MODE, PUBLIC_MODE, write_atomic
from secure_audit import check, cli
from tests.plugins.pki import TestPKI


class Report(NamedTuple):
    code: int
    document: dict[str, Any] | None  # the parsed --json output (None when nothing was printed)
    stderr: str

    @property
    def findings(self) -> list[dict[str, Any]]:
        assert self.document is not None
        findings: list[dict[str, Any]] = self.document["findings"]
        return findings

    @property
    def ids(self) -> set[str]:
        return {finding["id"] for finding in self.findings}

    def finding(self, id_: str) -> dict[str, Any]:
        matches = [f for f in self.findings if f["id"] == id_]
        assert len(matches) == 1, self.findings
        return matches[0]


def run_check(capsys: pytest.CaptureFixture[str], *args: str) -> Report:
    code = check.main([*args, "--json"])
    captured = capsys.readouterr()
    document: dict[str, Any] | None = json.loads(captured.out) if captured.out else None
    return Report(code, document, captured.err)


def run_verify(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """``secure-audit verify ARGS`` in process: exit code, stdout, stderr."""
    code = cli.main(["verify", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_program(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real ``secure-audit`` program (``python -m secure_audit``) in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "secure_audit", *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return path


def agent_config(pki: TestPKI) -> Path:
    return pki.root / "agent-localhost.json"


def collector_config(pki: TestPKI) -> Path:
    return pki.root / "collector.json"


def weak_certificate(pki: TestPKI, name: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    """A server certificate of ``pki``'s CA for ``key`` (which ``pki.ca`` would never make), written out."""
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(pki.authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(pki.authority.key, hashes.SHA256())
    )
    folder = pki.root / "weak"
    folder.mkdir(exist_ok=True)
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    write_atomic(cert_path, ca_lib.cert_pem(cert), mode=PUBLIC_MODE, overwrite=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(key_path, key_pem, mode=PRIVATE_MODE, overwrite=True)
    return cert_path, key_path


def resealed(lines: list[str], changed: int) -> list[str]:
    """``lines`` (a chain, or a segment of one) rewritten with valid hashes from the first on, the record at
    ``changed`` given another request id: what someone who can write the log can do."""
    from secure_agent.audit import seal

    records = [json.loads(line) for line in lines]
    prev, out = records[0]["prev"], []
    for number, record in enumerate(records):
        fields = {k: v for k, v in record.items() if k not in ("hash", "prev", "seq")}
        if number == changed:
            fields["request_id"] = "forged"
        sealed = seal(fields, prev, record["seq"])
        out.append(sealed.line)
        prev = sealed.hash
    return out
