"""One kept-alive mutual-TLS HTTP/1.1 connection per agent, every call signed, every socket under a deadline.

:class:`AgentConnection` speaks just enough HTTP/1.1 for ``POST /RPC2``: the request is pre-built but for the
``Authorization`` header (a fresh SMON1 token per call, bound to the body and the agent's name), and the
answer must carry a ``Content-Length`` of at most :data:`MAX_RESPONSE_BYTES` with no content coding. The
whole call (connect, handshake, request, answer) has one deadline of ``timeout`` seconds, and every socket
operation is bounded by what is left of it, so an agent that trickles bytes cannot hold a worker longer.

A kept-alive connection the agent has closed in the meantime is re-established once, with a new token.
Failures become the :class:`secure_collector.errors.PollError` of the matching agent state.
"""

from __future__ import annotations

import contextlib
import errno
import socket
import ssl
import time
from typing import Any

from pki import tokens
from secure_collector import wire
from secure_collector.errors import (
    AgentAuthRefused,
    AgentBadResponse,
    AgentRateLimited,
    AgentTimeout,
    AgentTLSFailure,
    AgentUnreachable,
    PollError,
)

DEFAULT_TIMEOUT = 10.0
MAX_RESPONSE_BYTES = 1024 * 1024
"""docs/protocol.md: a whole answer is at most 1 MiB."""
MAX_HEADER_BYTES = 16 * 1024
MAX_RETRY_AFTER = 3600.0
USER_AGENT = "secure-collector/0.1"
_RECV_SIZE = 65536


def _clean(text: str, limit: int = 80) -> str:
    """Agent-chosen text made safe for a log line or a stored detail: printable and short."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return text


class AgentConnection:
    """The collector's link to one agent. Not thread-safe: the poller gives it to one worker at a time."""

    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        context: ssl.SSLContext,
        key_id: str,
        key: bytes,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.timeout = timeout
        self._context = context
        self._key_id = key_id
        self._key = key
        self._max_response = max_response_bytes
        self._sock: ssl.SSLSocket | None = None
        self._server_hostname = host.strip("[]")
        host_header = f"[{self._server_hostname}]" if ":" in self._server_hostname else self._server_hostname
        self._head_prefix = (
            f"POST /RPC2 HTTP/1.1\r\nHost: {host_header}:{port}\r\nUser-Agent: {USER_AGENT}\r\n"
            "Content-Type: text/xml\r\nAccept-Encoding: identity\r\n"
        ).encode("ascii")
        self._bodies: dict[str, tuple[bytes, bytes]] = {}

    # -- public ----------------------------------------------------------------------------------
    def call(self, method: str) -> Any:
        """Call ``method()`` on the agent and return its value; raise a :class:`PollError` on failure."""
        deadline = time.monotonic() + self.timeout
        body = self._respond(method, deadline)
        try:
            answer = wire.parse_response(body)
        except wire.WireError as exc:
            self.close()  # what else this peer sends on the connection is suspect too
            raise AgentBadResponse(self.name, str(exc)) from None
        if answer.fault:
            code = answer.value.get("faultCode")
            shown = code if type(code) is int else "?"
            raise AgentBadResponse(self.name, f"XML-RPC fault {shown}")
        return answer.value

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):  # closing a broken socket: nothing left to do
                sock.close()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # -- the exchange ----------------------------------------------------------------------------
    def _request(self, method: str) -> bytes:
        cached = self._bodies.get(method)
        if cached is None:
            body = wire.request_body(method)
            cached = (body, b"Content-Length: %d\r\n" % len(body))
            self._bodies[method] = cached
        body, length = cached
        token = tokens.sign(self._key_id, self._key, self.name, body)
        return b"".join((self._head_prefix, length, b"Authorization: ", token.encode("ascii"), b"\r\n\r\n", body))

    def _respond(self, method: str, deadline: float) -> bytes:
        reused = self._sock is not None
        try:
            sock = self._sock if self._sock is not None else self._connect(deadline)
            self._sock = sock
            try:
                return self._exchange(sock, method, deadline, fresh=not reused)
            except _StaleConnection:
                # The agent closed the idle kept-alive connection: once more, on a new one, new token.
                self.close()
                sock = self._connect(deadline)
                self._sock = sock
                return self._exchange(sock, method, deadline, fresh=True)
        except PollError:
            self.close()
            raise
        except BaseException:
            self.close()
            raise

    def _connect(self, deadline: float) -> ssl.SSLSocket:
        remaining = _remaining(self.name, deadline)
        try:
            raw = socket.create_connection((self._server_hostname, self.port), timeout=remaining)
        except TimeoutError:
            raise AgentTimeout(self.name, "connect timed out") from None
        except socket.gaierror as exc:
            raise AgentUnreachable(self.name, f"cannot resolve host ({_clean(str(exc.strerror))})") from None
        except OSError as exc:
            raise AgentUnreachable(self.name, _os_detail(exc, "connect")) from None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            raw.settimeout(_remaining(self.name, deadline))
            return self._context.wrap_socket(raw, server_hostname=self._server_hostname)
        except ssl.SSLCertVerificationError as exc:
            raw.close()
            raise AgentTLSFailure(
                self.name, f"agent certificate rejected: {_clean(exc.verify_message or 'invalid')}"
            ) from None
        except ssl.SSLError as exc:
            raw.close()
            raise AgentTLSFailure(self.name, f"handshake failed: {_ssl_reason(exc)}") from None
        except TimeoutError:
            raw.close()
            raise AgentTimeout(self.name, "TLS handshake timed out") from None
        except OSError as exc:
            raw.close()
            raise AgentTLSFailure(self.name, f"handshake failed: {_os_detail(exc, 'handshake')}") from None
        except PollError:
            raw.close()
            raise

    def _exchange(self, sock: ssl.SSLSocket, method: str, deadline: float, *, fresh: bool) -> bytes:
        request = self._request(method)
        try:
            sock.settimeout(_remaining(self.name, deadline))
            sock.sendall(request)
            head, rest = self._read_head(sock, deadline)
        except TimeoutError:
            raise AgentTimeout(self.name, "no answer within timeout") from None
        except ssl.SSLError as exc:
            # With TLS 1.3 the agent judges our certificate after our side of the handshake is done:
            # its refusal arrives as an alert on the first read.
            if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError) and not fresh:
                raise _StaleConnection from None
            raise AgentTLSFailure(self.name, f"TLS error: {_ssl_reason(exc)}") from None
        except _PeerClosed:
            if not fresh:
                raise _StaleConnection from None
            raise AgentTLSFailure(self.name, "agent closed the connection after the handshake") from None
        except OSError as exc:
            if not fresh and exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
                raise _StaleConnection from None
            raise AgentUnreachable(self.name, _os_detail(exc, "exchange")) from None
        status, headers = self._parse_head(head)
        if headers.get("transfer-encoding") is not None:
            raise AgentBadResponse(self.name, "chunked or encoded transfer refused")
        encoding = headers.get("content-encoding")
        if encoding is not None and encoding.lower() != "identity":
            raise AgentBadResponse(self.name, "content coding refused")
        length = _content_length(self.name, headers.get("content-length"), self._max_response)
        try:
            body = self._read_body(sock, rest, length, deadline)
        except TimeoutError:
            raise AgentTimeout(self.name, "answer body timed out") from None
        except ssl.SSLError as exc:
            raise AgentTLSFailure(self.name, f"TLS error: {_ssl_reason(exc)}") from None
        except _PeerClosed:
            raise AgentBadResponse(self.name, "answer shorter than its Content-Length") from None
        except OSError as exc:
            raise AgentUnreachable(self.name, _os_detail(exc, "read")) from None
        if headers.get("connection", "").lower() == "close":
            self.close()
        if status != 200:
            self.close()
            self._raise_status(status, headers)
        return body

    def _read_head(self, sock: ssl.SSLSocket, deadline: float) -> tuple[bytes, bytes]:
        buffer = b""
        while True:
            chunk = sock.recv(_RECV_SIZE)
            if not chunk:
                if buffer:
                    raise AgentBadResponse(self.name, "connection closed inside the HTTP head")
                raise _PeerClosed
            buffer += chunk
            end = buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end > MAX_HEADER_BYTES:
                    raise AgentBadResponse(self.name, "HTTP head too large")
                return buffer[:end], buffer[end + 4 :]
            if len(buffer) > MAX_HEADER_BYTES:
                raise AgentBadResponse(self.name, "HTTP head too large")
            sock.settimeout(_remaining(self.name, deadline))

    def _read_body(self, sock: ssl.SSLSocket, rest: bytes, length: int, deadline: float) -> bytes:
        if len(rest) >= length:
            if len(rest) > length:
                raise AgentBadResponse(self.name, "bytes after the answer")
            return rest
        parts = [rest]
        have = len(rest)
        while have < length:
            sock.settimeout(_remaining(self.name, deadline))
            chunk = sock.recv(min(_RECV_SIZE, length - have))
            if not chunk:
                raise _PeerClosed
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def _parse_head(self, head: bytes) -> tuple[int, dict[str, str]]:
        try:
            text = head.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
            raise AgentBadResponse(self.name, "undecodable HTTP head") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ", 2)
        if (
            len(parts) < 2
            or parts[0] not in ("HTTP/1.1", "HTTP/1.0")
            or not (len(parts[1]) == 3 and parts[1].isdigit())
        ):
            raise AgentBadResponse(self.name, "not an HTTP response")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise AgentBadResponse(self.name, "malformed HTTP header")
            key = name.lower()
            if key in headers and key in ("content-length", "transfer-encoding"):
                raise AgentBadResponse(self.name, "repeated framing header")
            headers[key] = value.strip()
        if parts[0] == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive":
            headers["connection"] = "close"
        return int(parts[1]), headers

    def _raise_status(self, status: int, headers: dict[str, str]) -> None:
        if status in (401, 403):
            what = "request token refused" if status == 401 else "client identity not allowed"
            raise AgentAuthRefused(self.name, f"HTTP {status}: {what}")
        if status == 429:
            raise AgentRateLimited(self.name, "HTTP 429: rate limited", _retry_after(headers.get("retry-after")))
        raise AgentBadResponse(self.name, f"HTTP {status}")


class _StaleConnection(Exception):
    """A reused connection turned out closed by the agent before it answered."""


class _PeerClosed(Exception):
    """The agent closed the connection (clean EOF)."""


def _remaining(agent: str, deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise AgentTimeout(agent, "deadline exceeded")
    return left


def _content_length(agent: str, value: str | None, cap: int) -> int:
    if value is None:
        raise AgentBadResponse(agent, "no Content-Length")
    if not value.isdigit() or len(value) > 12:
        raise AgentBadResponse(agent, "malformed Content-Length")
    length = int(value)
    if length > cap:
        raise AgentBadResponse(agent, f"answer larger than {cap} bytes")
    return length


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.isdigit() or len(value) > 6:
        return None
    return min(float(value), MAX_RETRY_AFTER)


def _ssl_reason(exc: ssl.SSLError) -> str:
    reason = exc.reason or type(exc).__name__
    return _clean(str(reason)).lower().replace("_", " ")


def _os_detail(exc: OSError, stage: str) -> str:
    if exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        return f"{stage}: {name} ({_clean(exc.strerror or '')})"
    return f"{stage}: {_clean(str(exc))}"
