"""docs/hostile-inputs.md "HTTP framing" (cases 14 to 18) and the rate limit (case 27)."""

from __future__ import annotations

import gzip
import time

import pytest

from tests.agent import wire
from tests.agent.wire import LOAD_SLACK
from tests.plugins.agent import RPCStatusError, RunningAgent, StartAgent, connect, rpc_body, rpc_call
from tests.plugins.pki import TestPKI


def _head_only(agent: RunningAgent, pki: TestPKI, headers: dict[str, str], *, length: bool = False) -> wire.Reply:
    """Send a signed request head whose body never comes; the answer must not wait for it."""
    body = rpc_body("ping")
    data = wire.request_bytes(
        body, authorization=wire.signed_headers(agent, pki, body), headers=headers, content_length=length
    )
    head = data[: data.index(b"\r\n\r\n") + 4]
    with wire.tls(agent, wire.collector_context(pki)) as sock:
        # an agent waiting for the body would answer 408 (request_timeout), which no caller accepts: the
        # status proves it did not wait, with no wall-clock bound to flake on a loaded machine
        reply = wire.exchange(sock, head)
    return reply


def test_body_over_the_cap_is_refused_unread(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    reply = _head_only(agent, test_pki, {"Content-Length": str(10**9)})
    assert reply.status == 413
    assert reply.body == b"content too large\n" or reply.body.startswith(b"request entity")
    record = wire.wait_for_record(agent, wire.event("bad_request", reason="body_too_large"))
    assert record["status"] == 413 and record["common_name"] == "collector"
    wire.assert_nothing_served(agent)


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 411, "length_required"),
        ({"Content-Length": "-1"}, 400, "bad_content_length"),
        ({"Content-Length": "ten"}, 400, "bad_content_length"),
        ({"Content-Length": "1e3"}, 400, "bad_content_length"),
        ({"Content-Length": "99999999999999999999"}, 400, "bad_content_length"),
        ({"Transfer-Encoding": "chunked"}, 400, "transfer_encoding"),
        ({"Transfer-Encoding": "chunked", "Content-Length": "100"}, 400, "transfer_encoding"),
        ({"Content-Length": "100", "content-length": "100"}, 400, "duplicate_header"),
        ({"Content-Encoding": "gzip", "Content-Length": "100"}, 415, "content_encoding"),
        ({"X-Folded": "a\r\n continued", "Content-Length": "100"}, 400, "bad_header"),
    ],
)
def test_bad_framing_is_refused_unread(
    start_agent: StartAgent, test_pki: TestPKI, headers: dict[str, str], status: int, reason: str
) -> None:
    agent = start_agent(test_pki)
    reply = _head_only(agent, test_pki, headers)
    assert reply.status == status
    assert b"<" not in reply.body and len(reply.body) < 40  # a short generic body
    assert wire.wait_for_record(agent, wire.event("bad_request", reason=reason))["status"] == status
    wire.assert_nothing_served(agent)


def test_gzip_body_is_refused(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    body = gzip.compress(rpc_body("ping") + b" " * 100_000)  # a bomb in miniature
    authorization = wire.signed_headers(agent, test_pki, body)
    data = wire.request_bytes(body, authorization=authorization, headers={"Content-Encoding": "gzip"})
    reply = wire.send_once(agent, test_pki, data)
    assert reply.status == 415
    wire.assert_nothing_served(agent)


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("GET", "/RPC2", 405, "method_not_allowed"),
        ("PUT", "/RPC2", 405, "method_not_allowed"),
        ("POST", "/other", 404, "unknown_path"),
        ("POST", "/RPC2/", 404, "unknown_path"),
        ("POST", "/RPC2?x=1", 404, "unknown_path"),
        ("GET", "/", 404, "unknown_path"),
    ],
)
def test_other_paths_and_methods(
    start_agent: StartAgent, test_pki: TestPKI, method: str, path: str, status: int, reason: str
) -> None:
    agent = start_agent(test_pki)
    body = rpc_body("ping")
    data = wire.request_bytes(
        body, authorization=wire.signed_headers(agent, test_pki, body), method=method, path=path
    )
    reply = wire.send_once(agent, test_pki, data)
    assert reply.status == status
    if status == 405:
        assert reply.headers["allow"] == "POST"
    record = wire.wait_for_record(agent, wire.event("bad_request", reason=reason))
    assert record["http_method"] == method and record["path"] == path
    wire.assert_nothing_served(agent)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /RPC2 HTTP/2.0\r\nContent-Length: 0\r\n\r\n",
        b"post /RPC2 HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        b"POST /RPC2 HTTP/1.1 extra\r\n\r\n",
        b"POST  /RPC2 HTTP/1.1\r\n\r\n",
        b"POST /RPC2 HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"POST /RPC2 HTTP/1.1\r\nX: \x00\r\n\r\n",
        b"POST /RPC2 HTTP/1.1\r\n" + b"X-A: b\r\n" * 40 + b"\r\n",
        b"POST /RPC2 HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n",
    ],
)
def test_malformed_heads(start_agent: StartAgent, test_pki: TestPKI, head: bytes) -> None:
    agent = start_agent(test_pki)
    reply = wire.send_once(agent, test_pki, head)
    assert reply.status == 400
    wire.wait_for_record(agent, wire.event("bad_request"))
    wire.assert_nothing_served(agent)


def test_trickled_request_is_cut_at_the_deadline(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    data = wire.signed_request(agent, test_pki, "ping")
    deadline = agent.config.server.request_timeout
    with wire.tls(agent, wire.collector_context(test_pki)) as sock:
        started = time.monotonic()
        answer = b""
        for byte in data:  # one byte per 50 ms: each read is quick, the whole request too slow
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            sock.settimeout(0.05)
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            break
        assert time.monotonic() - started < deadline + LOAD_SLACK  # a hang guard: the record proves the deadline
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
    wire.wait_for_record(agent, wire.event("bad_request", reason="request_timeout"))
    wire.assert_nothing_served(agent)


def test_keep_alive_requests_are_each_checked(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, security={"rate_limit": {"per_second": 0.01, "burst": 3}})
    with wire.tls(agent, wire.collector_context(test_pki)) as sock:
        for _ in range(2):
            reply = wire.exchange(sock, wire.signed_request(agent, test_pki, "ping"))
            assert reply.status == 200 and reply.headers["connection"] == "keep-alive"
        # a bad token on the same connection is refused on its own
        body = rpc_body("ping")
        bad = wire.request_bytes(body, authorization=wire.signed_headers(agent, test_pki, rpc_body("get_info")))
        assert wire.exchange(sock, bad).status == 401
    with wire.tls(agent, wire.collector_context(test_pki)) as sock:
        # the third token of the burst was spent by the refused request: rate limited on its own
        reply = wire.exchange(sock, wire.signed_request(agent, test_pki, "ping"))
        assert reply.status == 429
    calls = [r for r in wire.records(agent) if r["event"] == "call"]
    assert len(calls) == 2 and calls[0]["request_id"] != calls[1]["request_id"]
    assert calls[0]["peer"] == calls[1]["peer"]  # one connection, two audited requests
    assert wire.wait_for_record(agent, wire.event("token_refused", peer=calls[0]["peer"]))
    wire.assert_chain_intact(agent)


def test_last_request_of_a_connection_is_answered_with_connection_close(
    start_agent: StartAgent, test_pki: TestPKI
) -> None:
    """A client must learn from the answer that the connection ends, not by finding it closed later."""
    agent = start_agent(test_pki, server={"max_requests_per_connection": 3})
    with wire.tls(agent, wire.collector_context(test_pki)) as sock:
        replies = [wire.exchange(sock, wire.signed_request(agent, test_pki, "ping")) for _ in range(3)]
        assert [reply.status for reply in replies] == [200, 200, 200]
        assert [reply.headers["connection"] for reply in replies] == ["keep-alive", "keep-alive", "close"]
        assert wire.is_closed(sock)
    assert wire.served_calls(agent) == 3


def test_rate_limit_per_client(start_agent: StartAgent, test_pki: TestPKI) -> None:
    # a second certificate of the same collector name (another fingerprint): its key id is still its own
    test_pki.issue("collector", folder="second-collector")
    agent = start_agent(test_pki, security={"rate_limit": {"per_second": 0.5, "burst": 2}})
    for _ in range(2):
        assert rpc_call(agent, test_pki, "ping") == "pong"
    # the third: 429 with Retry-After, decided before any body is read or parsed
    reply = _head_only(agent, test_pki, {"Content-Length": "100"}, length=False)
    assert reply.status == 429
    assert int(reply.headers["retry-after"]) >= 1
    record = wire.wait_for_record(agent, wire.event("rate_limited"))
    assert record["status"] == 429 and record["common_name"] == "collector"
    with pytest.raises(RPCStatusError) as refused:
        rpc_call(agent, test_pki, "ping")
    assert refused.value.status == 429
    # another client is unaffected
    folder = test_pki.root / "second-collector"
    cert, key = folder / "collector.crt", folder / "collector.key"
    with wire.tls(agent, wire.tls_context(test_pki, cert, key)) as sock:
        assert wire.exchange(sock, wire.signed_request(agent, test_pki, "ping")).status == 200


def test_rate_limit_state_survives_reload(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki, security={"rate_limit": {"per_second": 0.01, "burst": 1}})
    assert rpc_call(agent, test_pki, "ping") == "pong"
    assert agent.reload()
    with pytest.raises(RPCStatusError) as refused:
        rpc_call(agent, test_pki, "ping")
    assert refused.value.status == 429


def test_connection_close_is_honoured(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    conn = connect(agent, test_pki)
    try:
        body = rpc_body("ping")
        headers = {"Authorization": wire.signed_headers(agent, test_pki, body), "Connection": "close"}
        conn.request("POST", "/RPC2", body=body, headers=headers)
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Connection") == "close"
        response.read()
    finally:
        conn.close()


def test_a_body_cut_short_is_recorded(start_agent: StartAgent, test_pki: TestPKI) -> None:
    agent = start_agent(test_pki)
    body = rpc_body("ping")
    data = wire.request_bytes(body, authorization=wire.signed_headers(agent, test_pki, body))
    with wire.tls(agent, wire.collector_context(test_pki)) as sock:
        sock.sendall(data[:-5])  # the head and all but the last bytes of the body, then close
    record = wire.wait_for_record(agent, wire.event("bad_request", reason="incomplete_body"))
    assert record["http_method"] == "POST" and record["path"] == "/RPC2" and record["common_name"] == "collector"
    wire.assert_nothing_served(agent)
