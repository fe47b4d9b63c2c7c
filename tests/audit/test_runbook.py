"""docs/runbook.md's procedures, run against a real agent: HMAC key rotation with an overlap window,
revoking a collector, renewing certificates. Each step is the one the runbook tells an operator to take
(``make_certs`` for the PKI, the config file edited, ``reload()`` being what SIGHUP does)."""

from __future__ import annotations

import json
import secrets
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pki import make_certs, tokens
from pki.files import PRIVATE_MODE, write_atomic
from tests.plugins.agent import RPCStatusError, RunningAgent, StartAgent, connect, rpc_body, rpc_call
from tests.plugins.pki import TestPKI

MakePKI = Callable[..., TestPKI]
LOCALHOST = "localhost=localhost,127.0.0.1,::1"


def call_with_key(agent: RunningAgent, pki: TestPKI, key_id: str, key: bytes) -> Any:
    """``ping`` over the collector's TLS identity, signed with ``key_id``/``key``; the result or the refusal."""
    body = rpc_body("ping")
    conn = connect(agent, pki)
    try:
        conn.request("POST", "/RPC2", body=body, headers={"Authorization": tokens.sign(key_id, key, agent.name, body)})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise RPCStatusError(response.status, dict(response.getheaders()), data)
    return xmlrpc.client.loads(data)[0][0]


def last(agent: RunningAgent, event: str) -> dict[str, Any]:
    return [r for r in agent.audit_records() if r["event"] == event][-1]


@pytest.fixture
def pki(tmp_path: Path, make_pki: MakePKI) -> TestPKI:
    return make_pki(tmp_path / "pki", agents=[LOCALHOST], collectors=["collector", "backup"])


def test_hmac_rotation_with_an_overlap_window_refuses_no_call(start_agent: StartAgent, pki: TestPKI) -> None:
    agent = start_agent(pki)
    old_key = tokens.load_key(pki.collector_files()[2])
    # 1. a new key under a new key id, made as the runbook says (32 random bytes as hex, mode 0600)
    new_path = pki.root / "collectors" / "collector.2025b.hmac"
    write_atomic(new_path, secrets.token_hex(32).encode() + b"\n", mode=PRIVATE_MODE)
    new_key = tokens.load_key(new_path)
    keys = dict(agent.config.security.hmac_keys)
    # 2. overlap: the agent holds both key ids
    both = {**{key_id: str(path) for key_id, path in keys.items()}, "collector/2025b": str(new_path)}
    agent.rewrite_config(security={"hmac_keys": both})
    assert agent.reload()
    assert call_with_key(agent, pki, "collector", old_key) == "pong"
    assert call_with_key(agent, pki, "collector/2025b", new_key) == "pong"
    # 4. the audit log shows which key id each call used
    calls = [r for r in agent.audit_records() if r["event"] == "call"]
    assert [r["key_id"] for r in calls] == ["collector", "collector/2025b"]
    # 5. overlap ends: the old id is removed; a token with it is refused, the new one still served
    data = json.loads(agent.config_path.read_text())
    del data["security"]["hmac_keys"]["collector"]
    agent.config_path.write_text(json.dumps(data))
    assert agent.reload()
    with pytest.raises(RPCStatusError) as refused:
        call_with_key(agent, pki, "collector", old_key)
    assert refused.value.status == 401
    assert last(agent, "token_refused")["reason"] == "unknown_key"
    assert call_with_key(agent, pki, "collector/2025b", new_key) == "pong"


def test_revoking_a_collector_refuses_it_and_keeps_the_others(start_agent: StartAgent, pki: TestPKI) -> None:
    agent = start_agent(pki)
    assert rpc_call(agent, pki, "ping", key_id="backup", collector="backup") == "pong"
    # 1. make_certs --revoke  2. crl.pem is where tls.crl points; SIGHUP
    assert make_certs.main(["--out", str(pki.root), "--revoke", "backup"]) == 0
    assert agent.reload()
    assert last(agent, "reload")["outcome"] == "ok"
    with pytest.raises(RPCStatusError) as forbidden:
        rpc_call(agent, pki, "ping", key_id="backup", collector="backup")
    assert forbidden.value.status == 403
    assert rpc_call(agent, pki, "ping") == "pong"
    refused = last(agent, "identity_refused")
    assert refused["reason"] == "certificate_revoked" and refused["common_name"] == "backup"


def test_renewing_an_agent_certificate_takes_effect_at_reload(start_agent: StartAgent, pki: TestPKI) -> None:
    agent = start_agent(pki)
    before = x509.load_pem_x509_certificate(pki.agent_files()[0].read_bytes()).serial_number
    assert make_certs.main(["--out", str(pki.root), "--force", "--agent", LOCALHOST]) == 0
    after = x509.load_pem_x509_certificate(pki.agent_files()[0].read_bytes()).serial_number
    assert after != before
    assert agent.reload()
    conn = connect(agent, pki)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    assert der is not None and x509.load_der_x509_certificate(der).serial_number == after
    assert rpc_call(agent, pki, "ping") == "pong"


def test_renewing_a_collector_certificate_keeping_its_hmac_key(start_agent: StartAgent, pki: TestPKI) -> None:
    agent = start_agent(pki)
    cert_path, _, hmac_path = pki.collector_files()
    before_cert, before_key = cert_path.read_bytes(), hmac_path.read_bytes()
    # the runbook's command: --force renews the certificate and keeps the HMAC key
    assert make_certs.main(["--out", str(pki.root), "--force", "--collector", "collector"]) == 0
    assert hmac_path.read_bytes() == before_key and cert_path.read_bytes() != before_cert
    # the agent needs nothing: the new certificate is trusted through the CA, the key is unchanged
    assert rpc_call(agent, pki, "ping") == "pong"
    assert last(agent, "call")["serial"] == format(
        x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number, "x"
    )
