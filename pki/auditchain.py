"""The audit log's record format and hash chain: how a record is encoded, hashed, linked and checked.

The agent writes records in this format (:mod:`secure_agent.audit`), the collector checks every record it
copies off an agent (:mod:`secure_collector.audittrail`) and ``secure-audit verify`` checks files; all three
use this one module, so there is one definition of a good record.

Canonical form
    ``canonical(r) = json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``.
    Pure ASCII, with every control character escaped, so a record is always exactly one line.

Chain
    ``hash = sha256(canonical(record without "hash")).hexdigest()`` where the record includes ``prev``,
    the ``hash`` of the record before (:data:`GENESIS`, 64 zeros, for the first record of a log). The
    line is ``canonical(record with "hash")``. A checker recomputes every hash, checks every ``prev``
    against the hash before it, and checks that the line is exactly canonical, so editing any byte,
    deleting, inserting or reordering a line is detected at that line. A segment that continues another
    (rotation) starts with a ``rotate`` record whose ``prev`` is the last hash of the segment before and
    whose ``seq`` is 0 again, so a copy of several segments in one file (the collector's central copy)
    verifies as one chain.

Lives in ``pki`` because the agent and the collector share only this package.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import orjson

GENESIS = "0" * 64
MAX_LINE = 16_384  # bytes: no record the agent writes comes close (fields x 128 characters x 6 for \\uXXXX)
ROTATE_EVENT = "rotate"
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")
_NO_CANONICAL_FORM = "not in canonical form (edited)"

Scalar = str | int | float | bool | None

# one encoder for every record: json.dumps with options builds a new one per call
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical(record: Mapping[str, Scalar]) -> str:
    return _CANONICAL.encode(record)


def record_hash(record: Mapping[str, Scalar]) -> str:
    """SHA-256 (hex) of the canonical form of ``record`` without its ``hash`` field."""
    body = {key: value for key, value in record.items() if key != "hash"}
    return hashlib.sha256(canonical(body).encode("ascii")).hexdigest()


def parse_timestamp(text: object) -> float | None:
    """Unix seconds of a record's ``time`` (``YYYY-MM-DDTHH:MM:SS.ffffffZ``), or None if it is not one."""
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
    except ValueError:
        return None


class ChainRecord(NamedTuple):
    """A record that is sealed correctly (its own hash matches, canonical form); not yet linked."""

    line: str  # without the newline
    hash: str
    prev: str
    seq: int
    time: str  # as written ("" when the record has none)
    event: str
    agent: str

    @property
    def starts_chain(self) -> bool:
        """The first record of a log, or the first of a segment that continues an older one."""
        return self.prev == GENESIS or self.event == ROTATE_EVENT

    def describe(self) -> str:
        """``seq 12 (2026-03-10T03:22:00.123456Z, hash 1a2b3c4d5e6f7a8b)`` for messages."""
        return f"seq {self.seq} ({self.time or 'no time'}, hash {self.hash[:16]})"


def _seal_problem(line: str, record: dict[str, Any], digest: str) -> str | None:
    """What :func:`record_hash` and :func:`canonical` would find wrong with ``line``, with one encoding.

    ``prev`` and ``seq`` sort after ``hash``, so in the canonical form of the record the ``hash`` member is
    followed by a comma, and the canonical form without it is that text with ``"hash":"...",`` taken out
    (its first occurrence: a quote inside a value is always escaped, so the pattern can only be the key).
    The member is written out rather than encoded: for a ``digest`` of 64 lowercase hex digits it is the
    canonical text, and any other ``digest`` can never equal a SHA-256 hex digest, whatever is taken out.
    A number JSON cannot hold (``NaN``, ``Infinity``, ``1e400``: ``json.loads`` reads them) has no canonical
    form, so such a line is not in canonical form (it used to raise ValueError out of the check).
    Equal to the reference by a differential test (``tests/collector/test_audittrail.py``).
    """
    try:
        encoded = canonical(record)
    except ValueError:
        return _NO_CANONICAL_FORM
    member = f'"hash":"{digest}",'
    if hashlib.sha256(encoded.replace(member, "", 1).encode("ascii")).hexdigest() != digest:
        return "hash does not match its content (edited)"
    if encoded != line:
        return _NO_CANONICAL_FORM
    return None


def read_record(raw: str | bytes) -> ChainRecord | str:
    """The record on one line (with or without its newline), or what is wrong with it (not its link)."""
    fast = _sealed_fast(raw)
    loaded = fast if fast is not None else _load(raw)
    if isinstance(loaded, str):
        return loaded
    line, record, digest, previous, number = loaded
    if fast is None:
        problem = _seal_problem(line, record, digest)
        if problem is not None:
            return problem
    time, event, agent = record.get("time"), record.get("event"), record.get("agent")
    return ChainRecord(
        line,
        digest,
        previous,
        number,
        time if isinstance(time, str) else "",
        event if isinstance(event, str) else "",
        agent if isinstance(agent, str) else "",
    )


_FAST_TYPES = frozenset({str, int, bool, type(None)})
"""What the fast path reads: not floats (orjson and json write some of them differently, and orjson reads an
integer beyond 64 bits as a float), not containers (no record of ours holds one)."""


def _sealed_fast(raw: str | bytes) -> _Loaded | None:
    """The line's record when it is sealed and in canonical form, read by orjson; None to let the reference
    (:func:`_load`, then :func:`_seal_problem`) decide, and say what is wrong.

    For an ASCII line without DEL, of a flat object of strings, integers, booleans and nulls, orjson's compact
    sorted encoding is the canonical form exactly: the same separators and escapes (``\\uXXXX`` for control
    characters but the five short ones, ``\\"`` and ``\\\\``). So a line equal to orjson's encoding of what
    orjson read from it is canonical, json reads from it what orjson read, and the seal is checked over that
    text. Anything else (non-ASCII, which orjson writes as UTF-8; DEL, which it writes raw; a float; an
    edit) is not equal, or not read, and goes to the reference. ~3x cheaper than the reference's json.loads
    and re-encoding; equal to it by a differential test (``tests/pki/test_auditchain_fast.py``).
    """
    if isinstance(raw, bytes):
        if not raw.isascii():
            return None
        raw = raw.decode("ascii")
    line = raw[:-1] if raw.endswith("\n") else raw
    if len(line) > MAX_LINE or not line.isascii() or "\x7f" in line:
        return None
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if type(record) is not dict:
        return None
    for value in record.values():
        if type(value) not in _FAST_TYPES:
            return None
    digest, previous, number = record.get("hash"), record.get("prev"), record.get("seq")
    if type(digest) is not str or type(previous) is not str or type(number) is not int:
        return None
    try:
        if orjson.dumps(record, option=orjson.OPT_SORT_KEYS) != line.encode("ascii"):
            return None
    except orjson.JSONEncodeError:
        return None
    member = f'"hash":"{digest}",'  # as in _seal_problem: the canonical text without the hash member
    if hashlib.sha256(line.replace(member, "", 1).encode("ascii")).hexdigest() != digest:
        return None
    return _Loaded(line, record, digest, previous, number)


class Verdict(NamedTuple):
    ok: bool
    records: int
    last_hash: str  # hash of the last good record (``prev`` as given when there is none)
    bad_line: int | None = None  # 1-based line number of the first bad record
    problem: str | None = None


class _Loaded(NamedTuple):
    line: str  # without the newline
    record: dict[str, Any]
    hash: str
    prev: str
    seq: int


def _load(raw: str | bytes) -> _Loaded | str:
    """The line (without its newline), its JSON object and its chain fields, or what is wrong with it."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            return "not ASCII (edited)"
    line = raw[:-1] if raw.endswith("\n") else raw
    if len(line) > MAX_LINE:
        return "line too long"
    try:
        record = json.loads(line)
    except ValueError:
        return "not a JSON record"
    if not isinstance(record, dict):
        return "not a JSON object"
    digest, previous, number = record.get("hash"), record.get("prev"), record.get("seq")
    if not isinstance(digest, str) or not isinstance(previous, str) or type(number) is not int:
        return "lacks hash, prev or seq"
    return _Loaded(line, record, digest, previous, number)


def check_line(raw: str | bytes, prev: str, seq: int | None) -> tuple[str, int] | str:
    """(hash, seq) of a good line following the record whose hash is ``prev``, or the problem with it."""
    fast = _sealed_fast(raw)
    loaded = fast if fast is not None else _load(raw)
    if isinstance(loaded, str):
        return loaded
    line, record, digest, previous, number = loaded
    if previous != prev:
        return "does not follow the record before it (a record was deleted, inserted or reordered)"
    if seq is not None and number != seq and not (number == 0 and record.get("event") == ROTATE_EVENT):
        return f"sequence number {number}, expected {seq}"  # a rotate record starts a segment: its seq is 0
    if fast is not None:  # sealed and canonical already
        return digest, number
    try:
        sealed = record_hash(record) == digest
    except ValueError:  # a number JSON cannot hold: no canonical form (_seal_problem)
        return _NO_CANONICAL_FORM
    if not sealed:
        return "hash does not match its content (edited)"
    if canonical(record) != line:
        return _NO_CANONICAL_FORM
    return digest, number


def verify_lines(lines: Iterable[str | bytes], prev: str = GENESIS, *, first_line: int = 1) -> Verdict:
    """Check a chain of records; ``prev`` is the hash the first record must follow.

    Stops at the first bad record and names its line number (counted from ``first_line``).
    """
    count = 0
    seq: int | None = None
    number = first_line
    for number, raw in enumerate(lines, start=first_line):
        result = check_line(raw, prev, seq)
        if isinstance(result, str):
            return Verdict(False, count, prev, number, result)
        prev, last_seq = result
        seq = last_seq + 1
        count += 1
    return Verdict(True, count, prev)
