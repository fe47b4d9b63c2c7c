"""docs/hostile-inputs.md "Request tokens" (cases 23 to 26): every refusal a 401 with an audit record, never a 5xx."""

from __future__ import annotations

import time

import pytest

from pki import tokens
from tests.agent import wire
from tests.plugins.agent import RunningAgent, StartAgent, rpc_body
from tests.plugins.pki import TestPKI


def _send(agent: RunningAgent, pki: TestPKI, body: bytes, authorization: str | None) -> wire.Reply:
    return wire.send_once(agent, pki, wire.request_bytes(body, authorization=authorization))


def _refused(agent: RunningAgent, reply: wire.Reply, reason: str, event: str = "token_refused") -> None:
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == "SMON1-HMAC-SHA256"
    assert reply.body == b"unauthorized\n"
    record = wire.wait_for_record(agent, wire.event(event, reason=reason))
    assert record["common_name"] == "collector" and record["status"] == 401


def test_replayed_request_is_refused(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    data = wire.signed_request(agent, test_pki, "ping")
    assert wire.send_once(agent, test_pki, data).status == 200
    _refused(agent, wire.send_once(agent, test_pki, data), "replay", event="replay")
    assert wire.served_calls(agent) == 1


def test_token_bound_to_method_and_body(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    body = rpc_body("ping")
    token = wire.signed_headers(agent, test_pki, body)
    _refused(agent, _send(agent, test_pki, rpc_body("get_metrics"), token), "bad_signature")
    changed = body.replace(b"ping", b"pinG")
    _refused(agent, _send(agent, test_pki, changed, wire.signed_headers(agent, test_pki, body)), "bad_signature")
    wire.assert_nothing_served(agent)


def test_token_bound_to_the_agent(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    body = rpc_body("ping")
    key = tokens.load_key(test_pki.collector_files()[2])
    _refused(agent, _send(agent, test_pki, body, tokens.sign("collector", key, "other-agent", body)), "bad_signature")


@pytest.mark.parametrize("offset", [-301, 301, -100_000, 10**9])
def test_timestamp_outside_the_skew(start_agent: StartAgent, test_pki: TestPKI, offset: int) -> None:
    agent = start_agent(test_pki)
    body = rpc_body("ping")
    token = wire.signed_headers(agent, test_pki, body, ts=int(time.time()) + offset)
    _refused(agent, _send(agent, test_pki, body, token), "stale")


def test_token_from_before_the_start_is_refused(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    body = rpc_body("ping")
    token = wire.signed_headers(agent, test_pki, body, ts=int(agent.agent.started_at) - 2)  # within the skew
    _refused(agent, _send(agent, test_pki, body, token), "stale")


def _valid(agent: RunningAgent, pki: TestPKI, body: bytes) -> str:
    return wire.signed_headers(agent, pki, body)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda t: None, "missing"),
        (lambda t: "", "missing"),
        (lambda t: t[:-10], "malformed"),
        (lambda t: t[: len(t) // 2], "malformed"),
        (lambda t: t + "x" * 300, "malformed"),
        (lambda t: "garbage", "malformed"),
        (lambda t: "Basic dXNlcjpwYXNz", "malformed"),
        (lambda t: t.replace('keyid="collector"', 'keyid="nobody"'), "key_not_bound"),  # another holder's id
        (lambda t: t.replace('keyid="collector"', 'keyid="collector/nobody"'), "unknown_key"),
        (lambda t: t.replace('keyid="collector"', 'keyid="../../etc/passwd"'), "malformed"),
        (lambda t: t.replace("SMON1", "smon1"), "malformed"),
        (lambda t: t.replace('sig="', 'sig="0'), "malformed"),
        (lambda t: t[:-66] + '"' + "0" * 64 + '"', "bad_signature"),
    ],
)
def test_bad_tokens_are_auth_errors(start_agent: StartAgent, test_pki: TestPKI, mangle: object, reason: str) -> None:
    agent = start_agent(test_pki)
    body = rpc_body("ping")
    token = mangle(_valid(agent, test_pki, body))  # type: ignore[operator]
    _refused(agent, _send(agent, test_pki, body, token), reason)
    wire.assert_nothing_served(agent)


def test_non_ascii_token(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    body = rpc_body("ping")
    data = wire.request_bytes(body, authorization=None, headers={"X-Pad": "y"})
    data = data.replace(b"X-Pad: y", b"Authorization: SMON1-HMAC-SHA256 keyid=\"\xff\xfe\"")
    reply = wire.send_once(agent, test_pki, data)
    assert reply.status in (400, 401)  # refused at the framing (non-ASCII header) or as a token
    wire.assert_nothing_served(agent)
