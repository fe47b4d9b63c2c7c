"""httpframe.parse_head against the stricter-looking reference it replaced (a lazy value regex):
the same heads are accepted, with the same values, and the same ones refused."""

from __future__ import annotations

import http
import re
import time

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from secure_agent.httpframe import HTTPRefusal, Reader, parse_head, response

# the header rule before the greedy rewrite, kept here as the reference
_REFERENCE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}):[ \t]*([\x20-\x7e\t]*?)[ \t]*")


def reference_header(line: bytes) -> tuple[str, str] | None:
    match = _REFERENCE.fullmatch(line)
    if match is None:
        return None
    return match.group(1).decode("ascii").lower(), match.group(2).decode("ascii")


LINE_BYTES = st.sampled_from(
    [b" ", b"\t", b"a", b"Z", b"-", b":", b"\r", b"\n", b"\x00", b"\x7f", b"\xff", b'"', b"x y"]
)


@settings(max_examples=300, deadline=None)
@given(
    name=st.sampled_from([b"X-Test", b"x_y", b"", b"bad name", b"A" * 65, b"caf\xc3\xa9"]),
    rest=st.lists(LINE_BYTES, max_size=12),
)
def test_a_header_line_is_judged_as_the_reference_judges_it(name: bytes, rest: list[bytes]) -> None:
    line = name + b":" + b"".join(rest)
    assume(b"\r\n" not in line)  # that would be two lines
    expected = reference_header(line)
    head = b"POST /RPC2 HTTP/1.1\r\n" + line
    if expected is None:
        with pytest.raises(HTTPRefusal) as refused:
            parse_head(head)
        assert refused.value.status == 400
        return
    assert dict(parse_head(head).headers) == dict([expected])


def test_values_are_stripped_of_surrounding_blanks_only() -> None:
    head = parse_head(b"POST /RPC2 HTTP/1.1\r\nAuthorization: \t a  b \t\r\nContent-Length:7")
    assert head.headers == {"authorization": "a  b", "content-length": "7"}
    assert (head.method, head.target, head.version) == ("POST", "/RPC2", "1.1")


class _Chunks:
    """A socket stand-in for Reader: hands out prepared chunks (tests httpframe, not TLS)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def settimeout(self, value: float | None) -> None:
        assert value is not None and value > 0

    def recv(self, size: int) -> bytes:
        return self._chunks.pop(0) if self._chunks else b""


@pytest.mark.parametrize("cut", [1, 5, 30, 40, 47])
def test_the_reader_splits_head_and_body_however_the_bytes_arrive(cut: int) -> None:
    wire = b"POST /RPC2 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello" + b"POST /RPC2 HTTP/1.1"
    reader = Reader(_Chunks([wire[:cut], wire[cut:]]))  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    assert reader.read_head(deadline) == b"POST /RPC2 HTTP/1.1\r\nContent-Length: 5"
    assert reader.read_exact(5, deadline) == b"hello"
    assert reader.wait_for_request(deadline)


def reference_response(status: int, body: bytes, content_type: str, keep_alive: bool, headers: dict[str, str]) -> bytes:
    """The response as it was written before its fixed parts were cached."""
    lines = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


@pytest.mark.parametrize("status", [200, 400, 401, 429, 503])
@pytest.mark.parametrize("keep_alive", [True, False])
@pytest.mark.parametrize("headers", [{}, {"X-Request-Id": "0123abcd"}, {"Retry-After": "3", "X-Request-Id": "ff"}])
def test_response_bytes_are_unchanged(status: int, keep_alive: bool, headers: dict[str, str]) -> None:
    for body in (b"", b"x" * 7355):
        for content_type in ("text/xml; charset=utf-8", "text/plain; charset=utf-8"):
            expected = reference_response(status, body, content_type, keep_alive, headers)
            got = response(status, body, content_type=content_type, keep_alive=keep_alive, headers=headers)
            assert got == expected
