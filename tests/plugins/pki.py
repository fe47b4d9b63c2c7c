"""Test PKI made at run time with our own ``pki`` code: never a committed key.

Fixtures:
- ``pki_dir``: a session-wide ``make_certs --out`` directory (default agent ``localhost``, collector ``collector``).
- ``make_pki``: a factory for fresh, isolated PKIs: ``make_pki(path, agents=[...], collectors=[...])``.
- ``TestPKI`` issues extra certificates from a PKI's CA (expired, future, wrong purpose) for bad-path tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki import ca as ca_lib
from pki import make_certs
from pki.files import PRIVATE_MODE, PUBLIC_MODE, write_atomic


class TestPKI:
    """A ``make_certs`` directory plus helpers to issue more certificates from its CA."""

    __test__ = False  # not a test class

    def __init__(self, root: Path) -> None:
        self.root = root
        cert = x509.load_pem_x509_certificate((root / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((root / "ca.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.authority = ca_lib.Issued(key, cert)

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"

    @property
    def crl(self) -> Path:
        return self.root / "crl.pem"

    def agent_files(self, name: str = "localhost") -> tuple[Path, Path]:
        return self.root / "agents" / f"{name}.crt", self.root / "agents" / f"{name}.key"

    def collector_files(self, name: str = "collector") -> tuple[Path, Path, Path]:
        folder = self.root / "collectors"
        return folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.hmac"

    def issue(
        self,
        name: str,
        role: ca_lib.Role = "client",
        *,
        hosts: Sequence[str] = (),
        not_before: dt.datetime | None = None,
        not_after: dt.datetime | None = None,
        usages: Sequence[x509.ObjectIdentifier] | None = None,
        folder: str = "extra",
    ) -> tuple[Path, Path]:
        """Issue and write ``NAME.crt``/``NAME.key`` under ``root/folder``; return their paths."""
        issued = ca_lib.issue(
            self.authority, name, role, hosts=hosts, not_before=not_before, not_after=not_after, usages=usages
        )
        target = self.root / folder
        target.mkdir(exist_ok=True)
        cert_path, key_path = target / f"{name}.crt", target / f"{name}.key"
        write_atomic(cert_path, ca_lib.cert_pem(issued.cert), mode=PUBLIC_MODE, overwrite=True)
        write_atomic(key_path, ca_lib.key_pem(issued.key), mode=PRIVATE_MODE, overwrite=True)
        return cert_path, key_path

    def revoke(self, name: str) -> None:
        assert make_certs.revoke(self.root, name)


def build_pki(root: Path, agents: Sequence[str] = (), collectors: Sequence[str] = ()) -> TestPKI:
    """Run make_certs into ``root``; ``agents`` are ``NAME=HOST,...`` specs."""
    argv = ["--out", str(root)]
    for spec in agents:
        argv += ["--agent", spec]
    for name in collectors:
        argv += ["--collector", name]
    assert make_certs.main(argv) == 0
    return TestPKI(root)


@pytest.fixture(scope="session")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pki") / "pki"
    build_pki(root)
    return root


@pytest.fixture(scope="session")
def test_pki(pki_dir: Path) -> TestPKI:
    return TestPKI(pki_dir)


@pytest.fixture
def make_pki() -> Callable[..., TestPKI]:
    return build_pki
