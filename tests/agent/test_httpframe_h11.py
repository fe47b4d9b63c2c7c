"""The agent's request framing (:mod:`secure_agent.httpframe`) held to h11, the maintained HTTP/1.1 parser.

httpframe stays for speed (it parses a head in a few microseconds, in the agent's hot path; h11's event
machinery costs several times that, measured in docs/fast-paths.md). For every request head generated from
the HTTP/1.1 grammar and mutated around it: where h11 accepts, httpframe gives the same method, target,
version and header values (a repeated header as its values joined by ", ") or refuses for one of the
reasons it lists as stricter; where h11 refuses, httpframe refuses too, but for a request without ``Host``
(which it does not require: it answers one path of one host).
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from secure_agent.httpframe import MAX_HEADERS, MAX_TARGET, HTTPRefusal, RequestHead, body_length, parse_head

TCHAR = "!#$%&'*+.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-"
# what httpframe refuses although h11 takes it: its reasons, each a deliberate narrowing
STRICTER = {
    "bad_request_line",  # a method other than 1-16 capital letters; a target over MAX_TARGET
    "bad_header",  # obs-fold, bytes outside printable ASCII in a value, a name over 64 characters
    "too_many_headers",
    "duplicate_header",  # Content-Length, Transfer-Encoding, Content-Encoding, Authorization, Host twice
}

tokens = st.text(alphabet=TCHAR, min_size=1, max_size=70)
value_bytes = st.binary(max_size=24).map(lambda b: bytes(c for c in b if c not in (10, 13)))
printable = st.text(alphabet=[chr(c) for c in range(0x20, 0x7F)] + ["\t"], max_size=24).map(str.encode)
names = st.sampled_from(
    [b"Host", b"Content-Length", b"Authorization", b"Connection", b"X-Test", b"Accept"]
) | tokens.map(str.encode)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(
        st.sampled_from([b"POST", b"GET", b"post", b"M-SEARCH", b"PATCHXXXXXXXXXXXXX"]) | tokens.map(str.encode)
    )
    target = draw(
        st.sampled_from([b"/RPC2", b"/", b"*", b"/a?b=c", b"/" + b"x" * MAX_TARGET])
        | st.binary(min_size=1, max_size=12).map(
            lambda b: b.replace(b" ", b"").replace(b"\r", b"").replace(b"\n", b"") or b"/"
        )
    )
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/2.0", b"http/1.1"]))
    lines = [method + b" " + target + b" " + version]
    if draw(st.booleans()):
        lines.append(b"Host: agent")
    for _ in range(draw(st.integers(min_value=0, max_value=MAX_HEADERS + 2))):
        name = draw(names)
        value = draw(printable | value_bytes)
        blank = draw(st.sampled_from([b"", b" ", b"\t", b"  "]))
        line = name + b":" + blank + value + draw(st.sampled_from([b"", b" ", b"\t"]))
        if draw(st.integers(min_value=0, max_value=20)) == 0:
            line = draw(st.sampled_from([b" folded", b"\tfolded", b"no colon", b"", b": novalue"]))
        lines.append(line)
    return b"\r\n".join(lines)


def h11_head(raw: bytes) -> h11.Request | None:
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(raw + b"\r\n\r\n")
    try:
        event = connection.next_event()
    except h11.RemoteProtocolError:
        return None
    return event if isinstance(event, h11.Request) else None


def ours(raw: bytes) -> RequestHead | str:
    try:
        return parse_head(raw)
    except HTTPRefusal as refused:
        return refused.reason


@settings(max_examples=600, deadline=None)
@given(heads())
@example(b"POST /RPC2 HTTP/1.1\r\nHost: agent\r\nContent-Length:")  # an empty length: h11 refuses the head
def test_a_head_is_read_as_h11_reads_it_or_refused_for_a_listed_reason(raw: bytes) -> None:
    reference = h11_head(raw)
    got = ours(raw)
    if reference is None:
        if not isinstance(got, str):
            assert b"\r\nhost:" not in raw.lower(), raw  # the one head h11 refuses and we take: no Host
        return
    if isinstance(got, str):
        assert got in STRICTER, (got, raw)
        return
    assert got.method.encode() == reference.method
    assert got.target.encode() == reference.target
    assert got.version.encode() == reference.http_version
    joined: dict[str, str] = {}
    for name, value in reference.headers:
        key = name.decode("ascii")
        joined[key] = f"{joined[key]}, {value.decode('ascii')}" if key in joined else value.decode("ascii")
    assert dict(got.headers) == joined


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([b"0", b"5", b"007", b"4294967295", b"12345678901", b"-1", b"5 ", b"0x5", b"+5", b"", b"1,1"]))
def test_content_length_is_the_number_h11_reads_or_refused(value: bytes) -> None:
    raw = b"POST /RPC2 HTTP/1.1\r\nHost: a\r\nContent-Length: " + value
    reference = h11_head(raw)
    head = ours(raw)
    if reference is None:
        assert isinstance(head, str) or _refused_length(head)
        return
    assert not isinstance(head, str)
    length = dict(reference.headers)[b"content-length"]
    try:
        assert body_length(head, 10**12) == int(length)
    except HTTPRefusal as refused:
        # stricter: more than 10 digits, or a list of equal values that h11 folds into one
        assert refused.reason == "bad_content_length" and (len(length) > 10 or b"," in value)


def _refused_length(head: RequestHead) -> bool:
    with pytest.raises(HTTPRefusal):
        body_length(head, 10**12)
    return True
