"""Strict HTTP/1.1 framing for the agent: read a request head under a deadline, judge its framing, reply.

Deliberately small: one request line, at most :data:`MAX_HEADERS` header lines, at most
:data:`MAX_HEAD_BYTES` in all, no obsolete line folding, no duplicate framing headers, a
``Content-Length`` body only (``Transfer-Encoding`` of any kind is refused so that no two parsers
can disagree on where a request ends), identity ``Content-Encoding`` only. Every read happens with
the socket timeout set to what remains of the request's deadline, so a client that trickles bytes
is cut off when the deadline passes, however slowly it trickles.
"""

from __future__ import annotations

import functools
import http
import re
import socket
import time
from collections.abc import Mapping
from typing import NamedTuple

MAX_HEAD_BYTES = 8192
MAX_HEADERS = 32
MAX_TARGET = 2048
_RECV_BYTES = 16_384
_SEND_BYTES = 16_384

_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) ([\x21-\x7e]{1,%d}) HTTP/(1\.[01])" % MAX_TARGET)
# The value is taken greedily and its surrounding blanks stripped after the match: a lazy value
# followed by optional blanks made the engine backtrack at every character (8 us for one token header).
_HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):([\x20-\x7e\t]*)")
_DIGITS = re.compile(r"[0-9]{1,10}")
# h11's grammar for the header (digits, or a list of them it folds when equal); body_length judges the rest
_CONTENT_LENGTH = re.compile(r"[0-9]+(?:[ \t]*,[ \t]*[0-9]+)*")
# headers that decide framing, routing or authentication: a second copy is an attack, not a list
_SINGLETONS = frozenset({"content-length", "transfer-encoding", "content-encoding", "authorization", "host"})


class HTTPRefusal(Exception):
    """A request refused at the HTTP layer: ``status`` for the client, ``reason`` (one word) for the audit."""

    def __init__(self, status: int, reason: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = dict(headers or {})


class ReadTimeout(Exception):
    """The deadline passed while reading a request."""


class RequestHead(NamedTuple):
    method: str
    target: str
    version: str
    headers: Mapping[str, str]  # lowercase names

    @property
    def keep_alive(self) -> bool:
        tokens = {part.strip().lower() for part in self.headers.get("connection", "").split(",")}
        if self.version == "1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


def remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise ReadTimeout
    return left


class Reader:
    """Buffered reads from a (TLS) socket, each bounded by a deadline."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()

    def _fill(self, deadline: float) -> bool:
        """Read once more; False at end of stream."""
        self._sock.settimeout(remaining(deadline))
        try:
            data = self._sock.recv(_RECV_BYTES)
        except TimeoutError:
            raise ReadTimeout from None
        if not data:
            return False
        self._buffer += data
        return True

    def wait_for_request(self, idle_deadline: float) -> bool:
        """Wait until a request starts arriving; False if the peer closed or stayed idle until the deadline."""
        if self._buffer:
            return True
        try:
            return self._fill(idle_deadline)
        except ReadTimeout:
            return False

    def read_head(self, deadline: float) -> bytes:
        """The request head, without its blank line. Raises HTTPRefusal, ReadTimeout or EOFError."""
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                if end + 4 > MAX_HEAD_BYTES:
                    raise HTTPRefusal(400, "head_too_large")
                head = self._take(end)
                del self._buffer[:4]
                return head
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise HTTPRefusal(400, "head_too_large")
            if not self._fill(deadline):
                raise EOFError("peer closed inside a request head")

    def read_exact(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            if not self._fill(deadline):
                raise EOFError("peer closed inside a request body")
        return self._take(size)

    def _take(self, size: int) -> bytes:
        """The first ``size`` buffered bytes, copied once (not sliced into a bytearray first)."""
        buffer = self._buffer
        if size == len(buffer):  # the usual case: the request ends where the last read ended
            data = bytes(buffer)
            buffer.clear()
            return data
        with memoryview(buffer) as view:
            data = bytes(view[:size])
        del buffer[:size]
        return data


def parse_head(raw: bytes) -> RequestHead:
    """Parse a request head strictly; anything unusual is a 400."""
    lines = raw.split(b"\r\n")
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        raise HTTPRefusal(400, "bad_request_line")
    if len(lines) - 1 > MAX_HEADERS:
        raise HTTPRefusal(400, "too_many_headers")
    headers: dict[str, str] = {}
    match_header = _HEADER_LINE.fullmatch
    for line in lines[1:]:
        header = match_header(line)
        if header is None:  # also refuses obs-fold continuation lines and bare CR/LF inside values
            raise HTTPRefusal(400, "bad_header")
        raw_name, raw_value = header.groups()
        name = raw_name.lower().decode("ascii")
        value = raw_value.strip(b" \t").decode("ascii")
        if name in headers:
            if name in _SINGLETONS:
                raise HTTPRefusal(400, "duplicate_header")
            headers[name] = f"{headers[name]}, {value}"
        else:
            headers[name] = value
    length = headers.get("content-length")
    if length is not None and _CONTENT_LENGTH.fullmatch(length) is None:
        raise HTTPRefusal(400, "bad_content_length")  # as h11 refuses it, in the head (its size: body_length)
    method, target, version = match.groups()
    return RequestHead(method.decode("ascii"), target.decode("ascii"), version.decode("ascii"), headers)


def body_length(head: RequestHead, cap: int) -> int:
    """The body length the framing headers announce, refused unless it is plain and at most ``cap``."""
    if "transfer-encoding" in head.headers:
        raise HTTPRefusal(400, "transfer_encoding")
    value = head.headers.get("content-length")
    if value is None:
        raise HTTPRefusal(411, "length_required")
    if _DIGITS.fullmatch(value) is None:
        raise HTTPRefusal(400, "bad_content_length")
    length = int(value)
    if length > cap:
        raise HTTPRefusal(413, "body_too_large")
    encoding = head.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise HTTPRefusal(415, "content_encoding")
    return length


def response(
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    keep_alive: bool = False,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    before, after = _fixed_head(status, content_type, keep_alive)
    extra = "".join([f"\r\n{name}: {value}" for name, value in (headers or {}).items()]).encode("ascii")
    return b"".join((before, b"%d" % len(body), after, extra, b"\r\n\r\n", body))


@functools.lru_cache(maxsize=64)
def _fixed_head(status: int, content_type: str, keep_alive: bool) -> tuple[bytes, bytes]:
    """The response head around its Content-Length, the same for every answer of one kind."""
    before = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\nContent-Length: "
    connection = "keep-alive" if keep_alive else "close"
    after = f"\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: {connection}"
    return before.encode("ascii"), after.encode("ascii")


def refusal_body(status: int) -> bytes:
    """The short generic body of a refusal: the status phrase, nothing of ours."""
    return (http.HTTPStatus(status).phrase.lower() + "\n").encode("ascii")


def send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    """Send within the deadline (a client that reads slowly is cut off). Raises ReadTimeout, OSError."""
    view = memoryview(data)
    while view:
        sock.settimeout(remaining(deadline))
        try:
            sent = sock.send(view[:_SEND_BYTES])
        except TimeoutError:
            raise ReadTimeout from None
        view = view[sent:]
