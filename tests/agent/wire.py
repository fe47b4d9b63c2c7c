"""Hand-made clients for hostile tests: raw TCP, TLS with any certificate, requests byte by byte."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pki import tokens
from secure_agent.audit import verify_file
from tests.plugins.agent import Endpoint, RunningAgent, rpc_body
from tests.plugins.pki import TestPKI

TIMEOUT = 5.0
LOAD_SLACK = 10.0
"""Seconds a busy machine may add to a wait: time bounds in tests are a deadline under test plus this (a hang
guard), never a speed claim; speed is measured in bench/."""
AUDIT_WAIT = 5.0  # the longest we wait for a record written after the client saw the outcome


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def tls_context(
    pki: TestPKI,
    cert: Path | None = None,
    key: Path | None = None,
    *,
    ca: Path | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``ca`` (default: the PKI's CA), presenting ``cert`` if given.

    Built by hand (not with :func:`pki.tls.client_context`) so that tests can present
    certificates our own factory would refuse to load.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(ca or pki.ca))
    context.check_hostname = False  # we dial by address; the agent's certificate is not under test here
    if cert is not None and key is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def collector_context(pki: TestPKI, name: str = "collector") -> ssl.SSLContext:
    cert, key, _ = pki.collector_files(name)
    return tls_context(pki, cert, key)


def tcp(agent: Endpoint, *, source: str | None = None) -> socket.socket:
    sock = socket.create_connection(
        (agent.host, agent.port), timeout=TIMEOUT, source_address=(source, 0) if source else None
    )
    return sock


def tls(agent: Endpoint, context: ssl.SSLContext, *, source: str | None = None) -> ssl.SSLSocket:
    """A TLS connection whose handshake is done (raises what the handshake raises)."""
    sock = tcp(agent, source=source)
    try:
        return context.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def signed_headers(agent: Endpoint, pki: TestPKI, body: bytes, *, key_id: str = "collector", **sign: Any) -> str:
    key = tokens.load_key(pki.collector_files(key_id)[2])
    return tokens.sign(key_id, key, agent.name, body, **sign)


def request_bytes(
    body: bytes,
    *,
    authorization: str | None,
    method: str = "POST",
    path: str = "/RPC2",
    headers: Mapping[str, str] | None = None,
    content_length: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: agent", "Content-Type: text/xml"]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    if content_length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def signed_request(agent: Endpoint, pki: TestPKI, method: str, *params: Any, **sign: Any) -> bytes:
    body = rpc_body(method, *params)
    return request_bytes(body, authorization=signed_headers(agent, pki, body, **sign))


def read_reply(sock: socket.socket) -> Reply:
    response = http.client.HTTPResponse(sock)
    response.begin()
    body = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def exchange(sock: socket.socket, data: bytes) -> Reply:
    sock.sendall(data)
    return read_reply(sock)


def send_once(agent: Endpoint, pki: TestPKI, data: bytes, *, collector: str = "collector") -> Reply:
    """One request on a fresh connection with ``collector``'s certificate."""
    with tls(agent, collector_context(pki, collector)) as sock:
        return exchange(sock, data)


def is_closed(sock: socket.socket, within: float = TIMEOUT) -> bool:
    """True if the peer closes (EOF, reset or TLS alert) within ``within`` seconds without sending data."""
    sock.settimeout(within)
    try:
        data = sock.recv(1024)
    except TimeoutError:
        return False
    except (ConnectionError, ssl.SSLError):
        return True
    return data == b""


def records(agent: RunningAgent) -> list[dict[str, Any]]:
    return [json.loads(line) for line in agent.audit_log.read_text().splitlines()]


def wait_for_record(
    agent: RunningAgent, predicate: Callable[[dict[str, Any]], bool], *, timeout: float = AUDIT_WAIT
) -> dict[str, Any]:
    """The first audit record matching ``predicate``, once every open connection has ended.

    Needed where the client learns the outcome before the agent writes its record (a failed
    handshake is seen by both sides at once). A connection is registered before its handshake
    starts and leaves only after its records are written, so once the agent has no connection
    left, every record of what the client saw is in the file: no polling.
    """
    assert agent.agent.server.wait_idle(timeout), "connections still open"
    for record in records(agent):
        if predicate(record):
            return record
    raise AssertionError(f"no audit record matched: {records(agent)[-5:]}")


def event(name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    def match(record: dict[str, Any]) -> bool:
        return record["event"] == name and all(record.get(k) == v for k, v in fields.items())

    return match


def assert_chain_intact(agent: RunningAgent) -> None:
    verdict = verify_file(agent.audit_log)
    assert verdict.ok, verdict


def served_calls(agent: RunningAgent) -> int:
    return sum(1 for r in records(agent) if r["event"] == "call")


def assert_nothing_served(agent: RunningAgent) -> None:
    assert served_calls(agent) == 0
