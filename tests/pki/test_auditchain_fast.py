"""The audit record check's fast path (orjson) says what the reference (json) says, for any line.

``pki.auditchain.read_record`` and ``check_line`` first try :func:`pki.auditchain._sealed_fast`: orjson reads the
line and writes it again, and only a line equal to that text is taken there. The reference is what they did
before, and still do for every other line: ``json.loads``, then the seal over ``canonical`` (``json.dumps``
sorted, compact, ASCII). Both are run here over records of any keys and values JSON can hold (floats,
integers beyond 64 bits, any character, surrogates), each written in several spellings (the canonical one,
orjson's, with raw non-ASCII, with other escapes, with spaces, keys reordered or repeated, a character
edited), as text, with a newline and as bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pki import auditchain
from pki.auditchain import GENESIS, ROTATE_EVENT, ChainRecord, canonical, check_line, read_record, record_hash


def reference_read(raw: str | bytes) -> ChainRecord | str:
    """read_record as it was before the fast path: json.loads, then the seal over the canonical text."""
    loaded = auditchain._load(raw)
    if isinstance(loaded, str):
        return loaded
    line, record, digest, previous, number = loaded
    problem = auditchain._seal_problem(line, record, digest)
    if problem is not None:
        return problem
    time, event, agent = record.get("time"), record.get("event"), record.get("agent")
    return ChainRecord(
        line, digest, previous, number,
        time if isinstance(time, str) else "", event if isinstance(event, str) else "",
        agent if isinstance(agent, str) else "",
    )


def reference_check(raw: str | bytes, prev: str, seq: int | None) -> tuple[str, int] | str:
    """check_line as it was before the fast path."""
    loaded = auditchain._load(raw)
    if isinstance(loaded, str):
        return loaded
    line, record, digest, previous, number = loaded
    if previous != prev:
        return "does not follow the record before it (a record was deleted, inserted or reordered)"
    if seq is not None and number != seq and not (number == 0 and record.get("event") == ROTATE_EVENT):
        return f"sequence number {number}, expected {seq}"
    try:
        sealed = record_hash(record) == digest
    except ValueError:
        return "not in canonical form (edited)"
    if not sealed:
        return "hash does not match its content (edited)"
    if canonical(record) != line:
        return "not in canonical form (edited)"
    return digest, number


_CHARACTERS = st.characters(codec=None, exclude_categories=())  # every code point, surrogates included
_TRICKY = st.sampled_from(["\x00", "\x1f", "\x7f", "\x80", "é", "\u2028", "\ud800", "\udfff", "😀", '"', "\\", "/",
                           "\n", "\t", "\b", "\f", "\r", "A"])
_TEXT = st.lists(st.one_of(_CHARACTERS, _TRICKY), max_size=8).map("".join)
_KEYS = st.one_of(st.sampled_from(["agent", "event", "time", "outcome", "method", "peer", "reason", "ts", "status",
                                   "a", "z", "Z", "_", "hash0", "prev_", "seq "]), _TEXT)
_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-(2**70), 2**70), st.floats(),
    st.sampled_from([1e16, 1e-5, -0.0, 5e-324, 1e22, 0.1, 2.0**63, 1.7976931348623157e308]), _TEXT,
    st.sampled_from(["agent007", "call", "served", "2026-12-04T10:00:00.123456Z", ROTATE_EVENT]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.sampled_from(["b", "a"]), st.integers(), max_size=2),
)
_SPELLINGS = ["canonical", "orjson", "raw unicode", "spaces", "reversed keys", "upper hex", "escaped slash",
              "escaped letter", "duplicate key", "edit", "hash of orjson text", "newline", "bytes", "latin-1 bytes"]


def _sealed(fields: dict[str, Any], prev: Any, seq: Any) -> dict[str, Any]:
    record = {**fields, "prev": prev, "seq": seq}
    try:
        record["hash"] = record_hash(record)
    except (ValueError, TypeError):  # NaN, infinities: JSON has no canonical form of them
        record["hash"] = "ab" * 32
    return record


def _spell(record: dict[str, Any], spelling: str, at: int, char: str) -> str | bytes:
    try:
        line = canonical(record)
    except ValueError:
        line = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if spelling == "canonical":
        return line
    if spelling == "orjson":
        try:
            return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode("utf-8")
        except (orjson.JSONEncodeError, UnicodeDecodeError):
            return line
    if spelling == "raw unicode":
        return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if spelling == "spaces":
        return json.dumps(record, sort_keys=True)
    if spelling == "reversed keys":
        return json.dumps(dict(reversed(list(record.items()))), separators=(",", ":"))
    if spelling == "upper hex":
        return line.replace("\\u00", "\\u00".upper()).replace("\\u001f", "\\u001F")
    if spelling == "escaped slash":
        return line.replace("/", "\\/")
    if spelling == "escaped letter":
        return line.replace("A", "\\u0041", 1)
    if spelling == "duplicate key":
        return line[:-1] + ',"seq":' + json.dumps(record.get("seq")) + "}"
    if spelling == "edit":
        spot = at % len(line)
        return line[:spot] + char + line[spot + 1 :]
    if spelling == "hash of orjson text":  # sealed over orjson's spelling of the rest, not the canonical one
        rest = {k: v for k, v in record.items() if k != "hash"}
        try:
            text = orjson.dumps(rest, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            return line
        record = {**record, "hash": hashlib.sha256(text).hexdigest()}
        try:
            return orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode("utf-8")
        except (orjson.JSONEncodeError, UnicodeDecodeError):
            return line
    if spelling == "newline":
        return line + "\n"
    if spelling == "bytes":
        return line.encode("ascii", "backslashreplace") + b"\n"
    return line.encode("ascii", "backslashreplace").replace(b"a", b"\xe1", 1)  # latin-1 bytes


def _same(found: object, expected: object) -> bool:
    if isinstance(found, ChainRecord) and isinstance(expected, ChainRecord):
        return tuple(found) == tuple(expected)
    return found == expected


@settings(max_examples=1500, deadline=None)
@given(
    fields=st.dictionaries(_KEYS, _VALUES, max_size=6),
    prev=st.one_of(st.just("cd" * 32), st.just(GENESIS), st.just("CD" * 32), st.integers(), _TEXT),
    seq=st.one_of(st.integers(0, 5), st.integers(), st.booleans(), st.floats(), st.none()),
    spelling=st.sampled_from(_SPELLINGS),
    at=st.integers(0, 10_000),
    char=st.sampled_from(["x", '"', " ", "\\", "0", "\x7f", "é", "}"]),
)
@example(fields={"event": "call", "ts": 2**64}, prev="cd" * 32, seq=1, spelling="canonical", at=0, char="x")
@example(fields={"event": "call", "n": 1e16}, prev="cd" * 32, seq=1, spelling="orjson", at=0, char="x")
@example(fields={"event": "call", "n": 1e-5}, prev="cd" * 32, seq=1, spelling="hash of orjson text", at=0, char="x")
@example(fields={"detail": "\x7f"}, prev="cd" * 32, seq=1, spelling="hash of orjson text", at=0, char="x")
@example(fields={"detail": "é"}, prev="cd" * 32, seq=1, spelling="hash of orjson text", at=0, char="x")
@example(fields={"detail": "\ud800"}, prev="cd" * 32, seq=1, spelling="canonical", at=0, char="x")
@example(fields={"n": -0.0}, prev="cd" * 32, seq=1, spelling="canonical", at=0, char="x")
def test_the_fast_path_says_what_the_reference_says(
    fields: dict[str, Any], prev: Any, seq: Any, spelling: str, at: int, char: str
) -> None:
    fields = {k: v for k, v in fields.items() if k not in ("hash", "prev", "seq")}
    record = _sealed(fields, prev, seq)
    raw = _spell(record, spelling, at, char)
    assert _same(read_record(raw), reference_read(raw))
    expected_prev = prev if isinstance(prev, str) else GENESIS
    for link, number in ((expected_prev, None), (expected_prev, seq if type(seq) is int else 0), ("ef" * 32, 7)):
        assert _same(check_line(raw, link, number), reference_check(raw, link, number))


def test_the_fast_path_is_taken_for_what_the_agent_writes() -> None:
    """Not a vacuous equality: the records the agent writes (strings, integers, nulls, booleans, escapes of
    control characters) are read by the fast path; floats and non-ASCII text go to the reference."""
    fields = {"event": "call", "outcome": "served", "agent": "agent007", "time": "2026-12-04T10:00:00.123456Z",
              "detail": 'a "quoted"\\ \t\x01 tab', "ts": 1733300000, "status": 200, "reason": None, "ok": True}
    line = canonical(_sealed(fields, "cd" * 32, 12))
    assert auditchain._sealed_fast(line) is not None
    assert auditchain._sealed_fast(line + "\n") is not None and auditchain._sealed_fast(line.encode()) is not None
    for other in ({"n": 0.5}, {"detail": "é"}, {"detail": "\x7f"}, {"n": 2**64}):
        assert auditchain._sealed_fast(canonical(_sealed({**fields, **other}, "cd" * 32, 12))) is None
