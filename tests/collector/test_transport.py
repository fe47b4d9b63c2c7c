"""The transport against real agents (refusals the agent decides) and a hostile TLS peer (everything else)."""

from __future__ import annotations

import gzip
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pki import tokens
from secure_collector.errors import (
    AgentAuthRefused,
    AgentBadResponse,
    AgentRateLimited,
    AgentTimeout,
    AgentTLSFailure,
    AgentUnreachable,
    PollError,
)
from secure_collector.transport import AgentConnection
from tests.collector.answers import good_answer
from tests.collector.fakeagent import FakeAgent, Responder, http, xmlrpc_answer
from tests.plugins.agent import StartAgent, client_context
from tests.plugins.pki import TestPKI

TIMEOUT = 1.0


def _connection(pki: TestPKI, name: str, host: str, port: int, *, key: bytes | None = None) -> AgentConnection:
    key = key if key is not None else tokens.load_key(pki.collector_files()[2])
    return AgentConnection(name, host, port, client_context(pki), "collector", key, timeout=TIMEOUT)


@pytest.fixture
def fake(test_pki: TestPKI) -> Iterator[Callable[[Responder], FakeAgent]]:
    started: list[FakeAgent] = []

    def start(responder: Responder) -> FakeAgent:
        agent = FakeAgent(test_pki, responder)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


def _call(pki: TestPKI, agent: FakeAgent) -> object:
    connection = _connection(pki, "localhost", agent.host, agent.port)
    try:
        return connection.call("get_metrics")
    finally:
        connection.close()


def test_good_answer_and_keep_alive(test_pki: TestPKI, fake: Callable[[Responder], FakeAgent]) -> None:
    agent = fake(lambda body: xmlrpc_answer(good_answer()))
    connection = _connection(test_pki, "localhost", agent.host, agent.port)
    for _ in range(3):
        assert connection.call("get_metrics") == good_answer()
    assert agent.requests == 3 and agent.connections == 1
    connection.close()


def test_connection_closed_by_the_agent_is_reopened_once_with_a_new_token(
    test_pki: TestPKI, fake: Callable[[Responder], FakeAgent]
) -> None:
    seen: list[bytes] = []

    def answer_then_hang_up(body: bytes) -> bytes:
        seen.append(body)
        return xmlrpc_answer("pong")

    agent = fake(answer_then_hang_up)
    connection = _connection(test_pki, "localhost", agent.host, agent.port)
    assert connection.call("ping") == "pong"
    agent.drop_connections()  # the agent closes the idle kept-alive connection
    assert connection.call("ping") == "pong"
    assert agent.connections == 2 and agent.requests == 2
    connection.close()


@pytest.mark.parametrize(
    ("answer", "error", "detail"),
    [
        (http(b"x" * 10, headers={"Content-Length": "2000000"}, length=False), AgentBadResponse, "larger than"),
        (http(b"<x/>", length=False), AgentBadResponse, "no Content-Length"),
        (
            http(b"5\r\nhello\r\n0\r\n\r\n", headers={"Transfer-Encoding": "chunked"}, length=False),
            AgentBadResponse,
            "transfer coding",
        ),
        (
            http(gzip.compress(b"<methodResponse/>" * 1000), headers={"Content-Encoding": "gzip"}),
            AgentBadResponse,
            "content coding",
        ),
        (http(b"oops", status="500 Internal Server Error"), AgentBadResponse, "HTTP 500"),
        (http(b"", status="401 Unauthorized"), AgentAuthRefused, "401"),
        (http(b"", status="403 Forbidden"), AgentAuthRefused, "403"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", AgentBadResponse, "malformed HTTP answer"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"a" * 20000, AgentBadResponse, "malformed HTTP"),  # head > 16 KiB
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", AgentBadResponse, "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", AgentBadResponse, "malformed HTTP answer"),
        # U+00B2 is one latin-1 byte that str.isdigit() accepts and int() refuses: it once stopped the collector
        ("HTTP/1.1 200 OK\r\nContent-Length: 1\u00b2\r\n\r\nx".encode("latin-1"), AgentBadResponse, "malformed HTTP"),
        ("HTTP/1.1 2\u00b200 OK\r\nContent-Length: 1\r\n\r\nx".encode("latin-1"), AgentBadResponse, "malformed HTTP"),
        ("HTTP/1.1 200 OK\r\nContent-Length: \u0661\r\n\r\nx".encode(), AgentBadResponse, "malformed HTTP"),
        (http(b"<methodResponse>") + b"EXTRA", AgentBadResponse, "bytes after"),
        (http(b"<?xml version='1.0'?><methodResponse><params><param><value>"), AgentBadResponse, "malformed XML"),
        (xmlrpc_answer({"agent": "x"} | {f"k{i}": "v" * 500 for i in range(2500)}), AgentBadResponse, "larger than"),
    ],
)
def test_hostile_answers(
    test_pki: TestPKI, fake: Callable[[Responder], FakeAgent], answer: bytes, error: type[PollError], detail: str
) -> None:
    agent = fake(lambda body: answer)
    with pytest.raises(error) as refused:
        _call(test_pki, agent)
    assert detail in refused.value.detail
    assert refused.value.agent == "localhost"


@pytest.mark.parametrize(
    ("value", "seconds"), [("42", 42.0), ("99999", 3600.0), ("4\u00b2", None), ("\u0664\u0662", None), ("-1", None)]
)
def test_rate_limited_reports_retry_after_in_ascii_digits_only(
    test_pki: TestPKI, fake: Callable[[Responder], FakeAgent], value: str, seconds: float | None
) -> None:
    head = f"HTTP/1.1 429 Too Many Requests\r\nRetry-After: {value}\r\nContent-Length: 0\r\n\r\n"
    agent = fake(lambda body: head.encode("utf-8"))
    with pytest.raises(AgentRateLimited) as refused:
        _call(test_pki, agent)
    assert refused.value.retry_after == seconds


def test_silent_or_trickling_agent_times_out_within_the_deadline(
    test_pki: TestPKI, fake: Callable[[Responder], FakeAgent]
) -> None:
    for responder in (lambda body: None, lambda body: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n<meth"):
        agent = fake(responder)
        started = time.monotonic()
        with pytest.raises(AgentTimeout):
            _call(test_pki, agent)
        assert time.monotonic() - started < TIMEOUT + 10.0  # a hang guard with room for a busy machine


def test_closed_port_is_unreachable(test_pki: TestPKI, start_agent: StartAgent) -> None:
    agent = start_agent(test_pki)
    agent.stop()
    with pytest.raises(AgentUnreachable, match="ECONNREFUSED"):
        _connection(test_pki, "localhost", agent.host, agent.port).call("ping")


def test_unresolvable_name_is_unreachable(test_pki: TestPKI) -> None:
    with pytest.raises(AgentUnreachable, match="resolve"):
        _connection(test_pki, "localhost", "no-such-host.invalid", 9).call("ping")


def test_agent_of_another_ca_is_a_tls_failure(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other", agents=["localhost=localhost,127.0.0.1"], collectors=["collector"])
    agent = start_agent(other)
    with pytest.raises(AgentTLSFailure, match="certificate"):
        _connection(test_pki, "localhost", agent.host, agent.port).call("ping")


def test_agent_certificate_for_another_host_is_a_tls_failure(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path / "pki", agents=["named=named.example"], collectors=["collector"])
    agent = start_agent(pki, "named", host="127.0.0.1")
    with pytest.raises(AgentTLSFailure, match="certificate"):
        _connection(pki, "named", "127.0.0.1", agent.port).call("ping")


def test_agent_refusing_our_certificate_is_a_tls_failure(
    make_pki: Callable[..., TestPKI], start_agent: StartAgent, test_pki: TestPKI, tmp_path: Path
) -> None:
    # the agent's certificate is of our CA, but it trusts only another CA for its clients
    other = make_pki(tmp_path / "other", agents=["elsewhere=elsewhere.example"], collectors=["collector"])
    agent = start_agent(test_pki, tls={"ca": str(other.ca), "crl": None})
    with pytest.raises(AgentTLSFailure):
        _connection(test_pki, "localhost", agent.host, agent.port).call("ping")


def test_wrong_hmac_key_and_unlisted_client_are_auth_refused(test_pki: TestPKI, start_agent: StartAgent) -> None:
    agent = start_agent(test_pki)
    with pytest.raises(AgentAuthRefused, match="401"):
        _connection(test_pki, "localhost", agent.host, agent.port, key=b"\x01" * 32).call("ping")
    picky = start_agent(test_pki, security={"allowed_clients": ["someone-else"]})
    with pytest.raises(AgentAuthRefused, match="403"):
        _connection(test_pki, "localhost", picky.host, picky.port).call("ping")


def test_answer_for_another_agent_name_is_refused_by_the_agent(test_pki: TestPKI, start_agent: StartAgent) -> None:
    # the token binds the agent's name: a collector that dialled the wrong agent is refused, not served
    agent = start_agent(test_pki)
    with pytest.raises(AgentAuthRefused, match="401"):
        _connection(test_pki, "impostor", agent.host, agent.port).call("ping")


def test_real_agent_answers_and_fault_is_bad_response(test_pki: TestPKI, start_agent: StartAgent) -> None:
    agent = start_agent(test_pki)
    connection = _connection(test_pki, "localhost", agent.host, agent.port)
    assert connection.call("ping") == "pong"
    with pytest.raises(AgentBadResponse, match="fault"):
        connection.call("system.listMethods")
    assert connection.call("ping") == "pong"  # a fault does not spoil the connection
    connection.close()
