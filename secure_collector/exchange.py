"""HTTP/1.1 on one connection to an agent, through h11: requests written, answers read, no I/O here.

The collector has one HTTP grammar and it is h11's (a maintained, RFC 9110/9112 implementation, the
same one httpx uses): status lines, header names and values, ``Content-Length`` (ASCII digits only,
repeated values only when equal), keep-alive and ``Connection: close`` are all decided there. On top of it
:class:`Exchange` asks for what the protocol needs and refuses the rest before any body byte is kept:
status 200 with a ``Content-Length`` of at most ``max_response`` bytes, no transfer coding, no content
coding, nothing after the answer. Other statuses become the matching :mod:`~secure_collector.errors`.

Everything an agent controls ends as a :class:`~secure_collector.errors.PollError` whose detail is ours:
h11's own messages can quote the peer's bytes, so they are never passed on.

The transport feeds :meth:`Exchange.receive` whatever the socket returned (``b""`` for the end of the
stream); the fuzz tests feed it the same way, without sockets (tests/collector/test_answer_fuzz.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import h11

from secure_collector.errors import AgentAuthRefused, AgentBadResponse, AgentRateLimited

MAX_RESPONSE_BYTES = 1024 * 1024
"""docs/protocol.md: a whole answer is at most 1 MiB."""
MAX_HEADER_BYTES = 16 * 1024
MAX_RETRY_AFTER = 3600.0
USER_AGENT = b"secure-collector/0.1"
_RETRY_AFTER = re.compile(rb"[0-9]{1,6}")
"""Delay-seconds (RFC 9110 10.2.3) in ASCII digits; an HTTP date is ignored (backoff decides)."""


class Exchange:
    """The HTTP/1.1 state of one connection to agent ``agent``. Not thread-safe."""

    def __init__(self, agent: str, host_header: bytes, *, max_response: int = MAX_RESPONSE_BYTES) -> None:
        self.agent = agent
        self._host = host_header
        self._max_response = max_response
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self._parts: list[bytes] = []
        self.status = 0
        """The status of the current answer once its head arrived (0 before)."""
        self.received = False
        """True once any byte of the current answer arrived (a reused connection closed before is stale)."""

    def request(self, body: bytes, authorization: bytes) -> bytes:
        """The bytes of ``POST /RPC2`` with ``body``; begins a new request/answer cycle."""
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        self._parts = []
        self.status = 0
        self.received = False
        head = conn.send(
            h11.Request(
                method=b"POST",
                target=b"/RPC2",
                headers=[
                    (b"Host", self._host),
                    (b"User-Agent", USER_AGENT),
                    (b"Content-Type", b"text/xml"),
                    (b"Accept-Encoding", b"identity"),
                    (b"Content-Length", b"%d" % len(body)),
                    (b"Authorization", authorization),
                ],
            )
        )
        data = conn.send(h11.Data(data=body))
        end = conn.send(h11.EndOfMessage())
        return b"".join((head or b"", data or b"", end or b""))

    @property
    def reusable(self) -> bool:
        """True when the last answer left the connection open for another request."""
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE

    def receive(self, data: bytes) -> bytes | None:
        """Take bytes from the agent (``b""``: it closed); the body once the answer is complete."""
        if data:
            self.received = True
        conn = self._conn
        try:
            conn.receive_data(data)
            while True:
                event = conn.next_event()
                kind = type(event)
                if event is h11.NEED_DATA:
                    return None
                if kind is h11.Data:
                    self._parts.append(event.data)  # type: ignore[union-attr]
                elif kind is h11.Response:
                    self._head(event)  # type: ignore[arg-type]
                elif kind is h11.EndOfMessage:
                    return self._end()
                elif kind is h11.ConnectionClosed:
                    raise AgentBadResponse(self.agent, "connection closed before the answer was complete")
                else:  # an informational (1xx) answer, or h11 paused: nothing an agent sends
                    raise AgentBadResponse(self.agent, "unexpected HTTP answer")
        except h11.RemoteProtocolError:
            # h11's message may quote the agent's bytes: ours says what failed, not what was sent
            if not data and conn.their_state is h11.SEND_RESPONSE:
                raise AgentBadResponse(self.agent, "connection closed before the answer was complete") from None
            raise AgentBadResponse(self.agent, "malformed HTTP answer") from None

    def _head(self, response: h11.Response) -> None:
        headers = response.headers
        self.status = response.status_code
        if response.status_code != 200:
            raise_status(self.agent, response.status_code, headers)
        length: bytes | None = None
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                raise AgentBadResponse(self.agent, "transfer coding refused")
            elif name == b"content-encoding" and value.lower() != b"identity":
                raise AgentBadResponse(self.agent, "content coding refused")
        if length is None:
            raise AgentBadResponse(self.agent, "no Content-Length")
        if int(length) > self._max_response:  # h11 let through ASCII digits only, at most 20 of them
            raise AgentBadResponse(self.agent, f"answer larger than {self._max_response} bytes")

    def _end(self) -> bytes:
        trailing, _ = self._conn.trailing_data
        if trailing:
            raise AgentBadResponse(self.agent, "bytes after the answer")
        body = b"".join(self._parts)
        self._parts = []
        return body


def raise_status(agent: str, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
    """Raise the error an HTTP status other than 200 means."""
    if status in (401, 403):
        what = "request token refused" if status == 401 else "client identity not allowed"
        raise AgentAuthRefused(agent, f"HTTP {status}: {what}")
    if status == 429:
        value = next((v for n, v in headers if n == b"retry-after"), None)
        raise AgentRateLimited(agent, "HTTP 429: rate limited", retry_after(value))
    raise AgentBadResponse(agent, f"HTTP {status}")


def retry_after(value: bytes | None) -> float | None:
    """Seconds from a ``Retry-After`` value in ASCII digits, capped; None for anything else."""
    if value is None or _RETRY_AFTER.fullmatch(value.strip()) is None:
        return None
    return min(float(value), MAX_RETRY_AFTER)
