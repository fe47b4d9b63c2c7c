"""A deliberately broken agent for the collector's "answers garbage" cases: a test peer, not a mock.

It is a real TLS server on 127.0.0.1 port 0 with an agent certificate of the test PKI (so the collector's
handshake and hostname checks pass) that reads each request and answers whatever the test scripts:
malformed HTTP, hostile XML, oversized or truncated bodies, or nothing at all.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
import xmlrpc.client
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

from pki import tls
from tests.plugins.pki import TestPKI


class Reply(NamedTuple):
    """Bytes to send, in ``pieces`` writes, and what the connection does then."""

    data: bytes
    after: Literal["keep", "close", "abort", "reset"] = "keep"
    """keep serving; close with TLS close_notify; abort (TCP FIN, no close_notify); reset (TCP RST)."""
    pieces: int = 1


Responder = Callable[[bytes], bytes | Reply | None]
"""Gets the raw request body; returns raw bytes (or a :class:`Reply`) to send back, or None to send
nothing and hold the line."""

SOCKET_TIMEOUT = 5.0


def http(body: bytes, status: str = "200 OK", headers: dict[str, str] | None = None, length: bool = True) -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: text/xml"]
    if length:
        head.append(f"Content-Length: {len(body)}")
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def xmlrpc_answer(value: Any) -> bytes:
    return http(xmlrpc.client.dumps((value,), methodresponse=True, allow_none=True).encode("utf-8"))


def answering(value: Any) -> Responder:
    """A responder that answers every request with ``value`` (a typed stand-in for a capturing lambda)."""
    answer = xmlrpc_answer(value)
    return lambda body: answer


class FakeAgent:
    """Serves ``responder`` over TLS until :meth:`stop`; counts requests."""

    def __init__(self, pki: TestPKI, responder: Responder, name: str = "localhost") -> None:
        cert, key = pki.agent_files(name)
        self._context = tls.server_context(cert, key, pki.ca)
        self._responder = responder
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(SOCKET_TIMEOUT)
        self.host, self.port = self._listener.getsockname()[:2]
        self.name = name
        self.requests = 0
        self.connections = 0
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._accept = threading.Thread(target=self._serve, name="fake-agent", daemon=True)
        self._accept.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            thread = threading.Thread(target=self._handle, args=(raw,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, raw: socket.socket) -> None:
        raw.settimeout(SOCKET_TIMEOUT)
        try:
            with self._context.wrap_socket(raw, server_side=True) as conn:
                self._sockets.append(conn)  # after wrapping, only this object owns the descriptor
                while not self._stop.is_set():
                    body = _read_request(conn)
                    if body is None:
                        return
                    self.requests += 1
                    answer = self._responder(body)
                    if answer is None:
                        self._stop.wait(SOCKET_TIMEOUT)
                        return
                    reply = answer if isinstance(answer, Reply) else Reply(answer)
                    step = max(1, -(-len(reply.data) // max(1, reply.pieces)))
                    for start in range(0, len(reply.data), step):
                        conn.sendall(reply.data[start : start + step])
                    if reply.after != "keep":
                        _end(conn, reply.after)
                        return
        except (OSError, ssl.SSLError, ValueError):
            return

    def drop_connections(self) -> None:
        """Close every open connection from the agent's side (as an idle timeout would)."""
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(SOCKET_TIMEOUT)

    def stop(self) -> None:
        self._stop.set()
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in accept() or recv()
        self._listener.close()
        self._accept.join(SOCKET_TIMEOUT)
        for thread in self._threads:
            thread.join(SOCKET_TIMEOUT)


def _end(conn: ssl.SSLSocket, how: str) -> None:
    """End the connection as a hostile or broken peer would."""
    if how == "close":
        with contextlib.suppress(OSError, ssl.SSLError):
            conn.unwrap()  # TLS close_notify, then the TCP close
    elif how == "reset":
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # "abort": closing without close_notify is what leaving the ``with`` block does


def _read_request(conn: ssl.SSLSocket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
        if len(data) > 65536:
            raise ValueError("request head too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return rest[:length]
