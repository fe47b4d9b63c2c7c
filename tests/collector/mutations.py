"""Hostile answers for the fuzz tests: a seeded mutator of HTTP heads, bodies and connection ends.

``hostile_answer(rng, name)`` returns one :class:`~tests.collector.fakeagent.Reply`: a valid answer of
agent ``name`` (XML-RPC of a real ``get_metrics`` shape) with its head, body or both mutated, sent in
one or several pieces, and the connection kept, closed cleanly, cut without close_notify or reset.
The same seed gives the same answers, so a failure names its seed and is replayed exactly.
"""

from __future__ import annotations

import random
import xmlrpc.client
from typing import Any, Literal

from tests.collector.answers import good_answer
from tests.collector.fakeagent import Reply

LENGTHS = [
    "1\u00b2",  # the answer that stopped the collector
    "\u0661\u0662",
    "\uff11\uff12",
    "1_0",
    "+5",
    " 5",
    "-1",
    "0x10",
    "99999999999999999999999",
    "5, 6",
    "",
    "1e3",
]
HEAD_LINES = [
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Content-Encoding: gzip",
    "Connection: close",
    "Connection: keep-alive",
    " folded: continuation",
    "No-Colon-Here",
    "Bad Name: x",
    "X: \x00",
    "X: " + "a" * 20000,
    "Retry-After: 4\u00b2",
    "Content-Length: 0",
]
STATUS_LINES = [
    "HTTP/1.1 200 OK",
    "HTTP/1.0 200 OK",
    "HTTP/1.1 2\u00b200 OK",
    "HTTP/1.1 100 Continue",
    "HTTP/1.1 429 Too Many Requests",
    "HTTP/1.1 401 Unauthorized",
    "HTTP/2 200",
    "HTTP/1.1 200",
    "HTTP/1.1  200 OK",
    "SSH-2.0-OpenSSH_9.2",
    "",
]
BODY_SNIPPETS = [
    b"<",
    b">",
    b"&",
    b"<!DOCTYPE x>",
    b"<?pi?>",
    b"\x00",
    b"\xff\xfe",
    b"<value>",
    b"</value>",
    b"<int>\xd9\xa1</int>",
    b"<double>1_0.5</double>",
    b"<boolean> 1</boolean>",
    b"<nil/>",
    b"&#x202e;",
    b"&#10;db-01 up",
    b"<dateTime.iso8601>x</dateTime.iso8601>",
    b"]]>",
    b"\r\n",
]
_BASES: dict[str, bytes] = {}


def body_of(name: str, **changes: Any) -> bytes:
    if not changes and name in _BASES:
        return _BASES[name]
    answer = good_answer(name, **changes)
    body = xmlrpc.client.dumps((answer,), methodresponse=True, allow_none=True).encode()
    if not changes:
        _BASES[name] = body
    return body


def _mutate_body(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(data) + 1)
        roll = rng.random()
        if roll < 0.4:
            data[position:position] = rng.choice(BODY_SNIPPETS)
        elif roll < 0.6 and data:
            data[min(position, len(data) - 1)] = rng.randrange(256)
        elif roll < 0.8:
            del data[position : position + rng.randint(1, 40)]
        else:
            del data[position:]  # truncated
    return bytes(data)


def hostile_answer(rng: random.Random, name: str = "localhost") -> Reply:
    body = body_of(name)
    roll = rng.random()
    if roll < 0.55:
        body = _mutate_body(rng, body)
    elif roll < 0.65:
        values = {"cpu_usage": rng.choice([float("nan"), -1.0, 1e308, 101.0]), "agent": rng.choice([name, "other"])}
        body = body_of(name, **values) if values["agent"] == name else body_of("other")
    status = "HTTP/1.1 200 OK" if rng.random() < 0.7 else rng.choice(STATUS_LINES)
    lines = [status, "Content-Type: text/xml"]
    length = str(len(body))
    if rng.random() < 0.25:
        length = rng.choice(LENGTHS)
    elif rng.random() < 0.1:
        length = str(len(body) + rng.choice([-5, -1, 1, 7]))
    if rng.random() < 0.95:
        lines.append(f"Content-Length: {length}")
    if rng.random() < 0.25:
        lines.append(rng.choice(HEAD_LINES))
    separator = "\r\n" if rng.random() < 0.9 else "\n"
    head = (separator.join(lines) + separator + separator).encode("utf-8")
    if rng.random() < 0.1:
        head = head.replace(b"\r\n\r\n", b"\r\n")  # the head never ends
    data = head + body
    if rng.random() < 0.1:
        data += b"EXTRA"
    endings: list[Literal["keep", "close", "abort", "reset"]] = ["keep", "keep", "keep", "close", "abort", "reset"]
    after = rng.choice(endings)
    if after != "keep" and rng.random() < 0.5:
        data = data[: rng.randrange(len(data) + 1)]  # the peer goes away mid-answer
    return Reply(data, after, rng.choice([1, 1, 2, 3, 7]))
