"""What one get_metrics call is made of: the CPU of each step the agent runs, measured in-process.

Each step is repeated for up to :data:`STEP_SECONDS` seconds and timed with ``time.thread_time``
(CPU of this thread only), so the figures hold on a busy machine as well: waiting for a core costs
no CPU time. The steps are the agent's own building blocks, called as the agent calls them:

* ``MetricsService.snapshot_response()`` (secure_agent.metrics): the probes read /proc and the answer's
  XML is written (or, for an agent without it, ``snapshot()`` and ``xmlrpc.client.dumps`` of its struct);
* ``parse_call`` of the request body (secure_agent.xmlsafe, defusedxml);
* ``Verifier.verify`` of a fresh token (pki.tokens: HMAC-SHA256 + replay cache);
* ``AuditLog.record`` of a served call (secure_agent.audit: SHA-256 chain + write(2), fdatasync at most 1/s);
* the TLS 1.3 handshake, agent side and client side (pki.tls contexts, loopback socket pair);
* writing the answer through TLS and reading it on the other side.

A step whose module is missing or whose API has changed is reported as not measured.
"""

from __future__ import annotations

import socket
import statistics
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import AGENT_NAME, Pki
from pki.tls import client_context, server_context
from pki.tokens import Verifier, load_key, sign

STEP_SECONDS = 0.6
MAX_REPEATS = 2000


def _cpu_ms(step: Callable[[], object], prepare: Callable[[], object] | None = None) -> dict[str, Any]:
    """Median and mean CPU ms of ``step`` (``prepare`` runs untimed before each repeat)."""
    samples: list[float] = []
    deadline = time.monotonic() + STEP_SECONDS
    while len(samples) < MAX_REPEATS and (time.monotonic() < deadline or len(samples) < 5):
        if prepare is not None:
            prepare()
        begin = time.thread_time()
        step()
        samples.append((time.thread_time() - begin) * 1000)
    return {"cpu_ms_median": round(statistics.median(samples), 4), "cpu_ms_mean": round(statistics.fmean(samples), 4)}


def _handshake_pair(pki: Pki) -> tuple[dict[str, Any], dict[str, Any]]:
    """Agent-side and client-side CPU of a full mutual TLS 1.3 handshake, each timed in its own thread."""
    # as the agent builds it: the CRL is checked after the handshake (pki.tls.Revocations), not by OpenSSL
    server_ctx = server_context(pki.server_cert(AGENT_NAME), pki.server_key(AGENT_NAME), pki.ca)
    client_ctx = client_context(pki.client_cert, pki.client_key, pki.ca)
    rounds = 150
    server_ms: list[float] = []
    client_ms: list[float] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        port = listener.getsockname()[1]

        def serve() -> None:
            for _ in range(rounds):
                raw, _ = listener.accept()
                raw.settimeout(10)
                begin = time.thread_time()
                tls = server_ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                tls.do_handshake()
                server_ms.append((time.thread_time() - begin) * 1000)
                tls.recv(1)
                tls.close()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        for _ in range(rounds):
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            begin = time.thread_time()
            tls = client_ctx.wrap_socket(raw, server_hostname="127.0.0.1")
            client_ms.append((time.thread_time() - begin) * 1000)
            tls.sendall(b"x")
            tls.close()
        thread.join(30)
    return (
        {"cpu_ms_median": round(statistics.median(server_ms), 4), "cpu_ms_mean": round(statistics.fmean(server_ms), 4)},
        {"cpu_ms_median": round(statistics.median(client_ms), 4), "cpu_ms_mean": round(statistics.fmean(client_ms), 4)},
    )


def _tls_write(pki: Pki, payload: bytes) -> dict[str, Any]:
    """CPU of sending ``payload`` through an established TLS connection (the reader drains in a thread)."""
    server_ctx = server_context(pki.server_cert(AGENT_NAME), pki.server_key(AGENT_NAME), pki.ca)
    client_ctx = client_context(pki.client_cert, pki.client_key, pki.ca)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        client_raw = socket.create_connection(listener.getsockname()[:2], timeout=10)
        raw, _ = listener.accept()
        raw.settimeout(10)
        result: dict[str, Any] = {}
        box: list[socket.socket] = []
        accepter = threading.Thread(
            target=lambda: box.append(server_ctx.wrap_socket(raw, server_side=True)), daemon=True
        )
        accepter.start()
        client = client_ctx.wrap_socket(client_raw, server_hostname="127.0.0.1")
        accepter.join(10)
        server = box[0]
        stop = threading.Event()

        def drain() -> None:
            while not stop.is_set():
                try:
                    if not client.recv(65536):
                        return
                except OSError:
                    return

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        result = _cpu_ms(lambda: server.sendall(payload))
        stop.set()
        server.close()
        client.close()
        reader.join(10)
    return result


def measure(pki: Pki, response_body: bytes) -> list[dict[str, Any]]:
    """One row per step: its CPU per call, or why it was not measured."""
    rows: list[dict[str, Any]] = []

    def add(step: str, source: str, measure_step: Callable[[], dict[str, Any]]) -> None:
        try:
            figures = measure_step()
        except Exception as exc:  # code under construction: a step that breaks is reported, not fatal
            figures = {"not_measured": f"{type(exc).__name__}: {exc}"[:160]}
        rows.append({"step": step, "where": source, **figures})

    request = xmlrpc.client.dumps((), "get_metrics").encode("utf-8")
    answer = xmlrpc.client.loads(response_body, use_builtin_types=True)[0][0]
    key = load_key(pki.hmac_key_file)

    def service_steps() -> None:
        from secure_agent.config import AgentConfig
        from secure_agent.metrics import MetricsService

        config = AgentConfig.model_validate_json(pki.agent_config().read_text())
        service = MetricsService(config)
        service.start()
        try:
            respond = getattr(service, "snapshot_response", None)
            if respond is not None:  # the agent's path since it writes its own XML (secure_agent.xmlwire)
                add("metrics snapshot and its XML", "MetricsService.snapshot_response", lambda: _cpu_ms(respond))
                return
            add("metrics snapshot", "MetricsService.snapshot", lambda: _cpu_ms(service.snapshot))
        finally:
            service.stop()
        add(
            "marshal the answer",
            "xmlrpc.client.dumps(methodresponse=True), as secure_agent.dispatch.handle_call",
            lambda: _cpu_ms(
                lambda: xmlrpc.client.dumps((answer,), methodresponse=True, allow_none=True, encoding="utf-8").encode()
            ),
        )

    try:
        service_steps()
    except Exception as exc:  # as in add()
        rows.append({"step": "metrics snapshot", "where": "secure_agent.metrics", "not_measured": str(exc)[:160]})

    def parse() -> dict[str, Any]:
        from secure_agent.xmlsafe import parse_call

        return _cpu_ms(lambda: parse_call(request))

    add("parse the request", "secure_agent.xmlsafe.parse_call (defusedxml)", parse)

    def verify() -> dict[str, Any]:
        verifier = Verifier({pki.hmac_key_id: key}, AGENT_NAME)
        tokens: list[str] = []
        return _cpu_ms(
            lambda: verifier.verify(tokens.pop(), request),
            prepare=lambda: tokens.append(sign(pki.hmac_key_id, key, AGENT_NAME, request)),
        )

    add("check the token", "pki.tokens.Verifier.verify", verify)

    def audit() -> dict[str, Any]:
        from secure_agent.audit import AuditLog

        with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
            log = AuditLog(Path(tmp) / "audit.log", AGENT_NAME)
            log.open()
            fields = {
                "peer": "127.0.0.1:40000",
                "request_id": "0123456789abcdef",
                "method": "get_metrics",
                "key_id": pki.hmac_key_id,
                "status": 200,
                "subject": "CN=collector",
                "common_name": "collector",
                "fingerprint": "ab" * 32,
                "serial": "1f" * 8,
            }
            try:
                return _cpu_ms(lambda: log.record("call", "served", **fields))
            finally:
                log.close()

    add("audit record", "secure_agent.audit.AuditLog.record", audit)
    add(
        "send the answer over TLS", f"ssl sendall of {len(response_body)} bytes", lambda: _tls_write(pki, response_body)
    )
    try:
        agent_side, client_side = _handshake_pair(pki)
        rows.append(
            {"step": "TLS handshake, agent side", "where": "pki.tls.server_context, new connection only", **agent_side}
        )
        rows.append(
            {
                "step": "TLS handshake, client side",
                "where": "pki.tls.client_context, new connection only",
                **client_side,
            }
        )
    except Exception as exc:  # as in add() above
        rows.append({"step": "TLS handshake", "where": "pki.tls", "not_measured": str(exc)[:160]})
    return rows
