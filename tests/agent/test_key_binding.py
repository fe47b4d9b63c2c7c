"""A token's key id belongs to the certificate that carries it (issue 14, item 3; docs/protocol.md).

Before, an admitted certificate could sign with any key id the agent held: one stolen key plus any admitted
certificate was enough. Now the key id must be the certificate's name or ``NAME/label``; anything else is
401 ``key_not_bound`` with an audit record, checked before the signature. The labelled form carries a
rotation (``make_certs --rotate-hmac``) with no refused poll.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pki import make_certs, tokens
from secure_collector.cli import main as collector_main
from tests.agent.wire import wait_for_record
from tests.audit.test_runbook import call_with_key
from tests.plugins.agent import RPCStatusError, StartAgent, rpc_call
from tests.plugins.pki import TestPKI


def make_certs_pki(tmp_path: Path) -> TestPKI:
    root = tmp_path / "pki"
    argv = ["--out", str(root), "--agent", "localhost=localhost,127.0.0.1,::1", "--collector", "collector"]
    assert make_certs.main([*argv, "--collector", "backup"]) == 0
    return TestPKI(root)


def test_a_certificate_cannot_sign_with_another_collectors_key(start_agent: StartAgent, tmp_path: Path) -> None:
    pki = make_certs_pki(tmp_path)
    agent = start_agent(pki)
    assert rpc_call(agent, pki, "ping", key_id="backup", collector="backup") == "pong"
    # "backup"'s certificate with "collector"'s key id and key: a stolen key and any admitted certificate
    with pytest.raises(RPCStatusError) as refused:
        rpc_call(agent, pki, "ping", key_id="collector", collector="backup")
    assert refused.value.status == 401
    record = wait_for_record(agent, lambda r: r.get("reason") == "key_not_bound")
    assert (record["event"], record["common_name"], record["key_id"]) == ("token_refused", "backup", "collector")


def test_the_signature_of_an_unbound_key_is_never_checked(start_agent: StartAgent, tmp_path: Path) -> None:
    pki = make_certs_pki(tmp_path)
    agent = start_agent(pki)
    for key_id in ("backup", "backup/x", "collectorx", "collector.2"):
        with pytest.raises(RPCStatusError) as refused:
            rpc_call(agent, pki, "ping", key_id=key_id)  # collector's certificate and key, another id
        assert refused.value.status == 401
    reasons = [r["reason"] for r in agent.audit_records() if r.get("event") == "token_refused"]
    assert reasons == ["key_not_bound"] * 4
    assert len(agent.agent.server.verifier.cache) == 0


def test_a_collector_whose_key_id_is_not_its_own_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = make_certs_pki(tmp_path)
    config = json.loads((pki.root / "collector.json").read_text())
    config["hmac"]["key_id"] = "backup"
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(config))
    assert collector_main(["--config", str(path), "--once"]) == 2
    err = capsys.readouterr().err
    assert "hmac.key_id: 'backup' is not this collector's" in err and len(err.strip().splitlines()) == 1


def test_a_rotation_with_make_certs_refuses_no_poll(
    start_agent: StartAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runbook's order: agents learn the new key id, the collector switches, agents forget the old id.

    At every step, the key the collector holds at that step is served; a real collector polls with the
    configs make_certs wrote."""
    pki = make_certs_pki(tmp_path)
    agent = start_agent(pki)
    old = json.loads((pki.root / "collector.json").read_text())["hmac"]
    old_key = tokens.load_key(Path(old["key_file"]))
    assert call_with_key(agent, pki, old["key_id"], old_key) == "pong"
    assert make_certs.main(["--out", str(pki.root), "--collector", "collector", "--rotate-hmac"]) == 0
    new = json.loads((pki.root / "collector.json").read_text())["hmac"]
    assert new["key_id"].startswith("collector/") and new["key_id"] != old["key_id"]
    new_key = tokens.load_key(Path(new["key_file"]))
    # 1. the agents reload with both ids: the collector, not yet switched, is still served
    keys = json.loads((pki.root / "agent-localhost.json").read_text())["security"]["hmac_keys"]
    assert set(keys) == {"collector", "backup", new["key_id"]}
    agent.rewrite_config(security={"hmac_keys": keys})
    assert agent.reload()
    assert call_with_key(agent, pki, old["key_id"], old_key) == "pong"
    # 2. the collector switches to the new collector.json: a real collector polls with it
    switched = json.loads((pki.root / "collector.json").read_text())
    switched["agents"] = [{"name": agent.name, "host": agent.host, "port": agent.port}]
    switched["spool_dir"] = str(tmp_path / "spool")
    switched["storage"] = {"type": "file", "json_file": str(tmp_path / "data" / "m.json")}
    config = tmp_path / "collector.json"
    config.write_text(json.dumps(switched))
    capsys.readouterr()
    code = collector_main(["--config", str(config), "--once"])
    out = capsys.readouterr().out
    assert code == 0 and out.split()[:2] == [agent.name, "up"], out
    # 3. overlap ends: the old id leaves the agents; the new one goes on, the old one is refused
    del keys["collector"]
    data = json.loads(agent.config_path.read_text())
    data["security"]["hmac_keys"] = keys  # replaced whole (rewrite_config merges)
    agent.config_path.write_text(json.dumps(data))
    assert agent.reload()
    assert call_with_key(agent, pki, new["key_id"], new_key) == "pong"
    with pytest.raises(RPCStatusError) as refused:
        call_with_key(agent, pki, old["key_id"], old_key)
    assert refused.value.status == 401
    calls = [r for r in agent.audit_records() if r.get("event") == "call"]
    used = [r["key_id"] for r in calls]
    assert used[:2] == ["collector", "collector"] and set(used[2:]) == {new["key_id"]}  # old id, then the new
    refusals = [r for r in agent.audit_records() if r.get("event") == "token_refused"]
    assert [r["reason"] for r in refusals] == ["unknown_key"]  # only the old id, after the overlap
