"""Turn JSON-lines bytes written by :mod:`storage.file` into frames, fast.

``json.loads`` of a day of 100 agents (288,000 lines, ~110 MB) takes several seconds on a small machine;
``viz`` needs it in well under one. The lines this package writes have a fixed layout: a flat object
whose leading keys are the frame's columns, in order, each value a number, ``null``, or a string.
Rewriting every ``":`` to ``",`` turns such a line into comma-separated ``key,value`` tokens that
pandas' C CSV tokenizer reads (quoted strings keep their commas; ``\\"`` stays inside its string, so
quoting stays balanced; nested findings and extras at the end of a line are simply not read).

The fast path is only trusted where it is exact, and checked:

* a line holding a backslash (a JSON escape, which the CSV reader would not decode), the string
  ``"null"`` (which it could not tell from ``null``) or a string value beginning with ``:`` (whose
  opening ``":`` the rewrite would take for a key's end) is parsed with :mod:`json` instead;
* every row must carry the expected key tokens at the first and last column, the row count must equal
  the line count, and every number must parse; any line failing that goes to :mod:`json`;
* lines :mod:`json` cannot read either (damaged by hand or by a disk) are skipped and counted in a warning.

Callers pass whole lines only (everything up to the last newline), so a torn last line never gets here.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pandas as pd

from storage import frames
from storage.frames import FrameSpec

log = logging.getLogger(__name__)

_NEEDS_JSON = (b"\\", b'"null"', b':":')
"""A JSON escape; the string "null"; a string value that begins with a colon (its opening quote and
that colon would be taken for the end of a key)."""
_TAILS = {"samples": b',"findings":'}
"""Where the nested details begin: past it, markers are harmless (never read, quoting stays balanced)."""

# Before pandas 3 the default float parser is not exact; "round_trip" is (and is deprecated from 3 on).
_FLOAT_OPTIONS: dict[str, Any] = (
    {"float_precision": "round_trip"} if int(pd.__version__.split(".", 1)[0]) < 3 else {}
)


def parse(data: bytes, spec: FrameSpec) -> pd.DataFrame:
    """Frame (unfiltered, unsorted) of the whole lines in ``data``; see the module docstring."""
    if not data:
        return frames.empty(spec)
    if not _needs_json(data):
        fast = _fast(data, spec)
        if fast is not None:
            return fast
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    clean: list[bytes] = []
    slow_lines: list[bytes] = []
    tail = _TAILS.get(spec.name)
    for line in lines:
        end = line.find(tail) if tail is not None else -1
        (slow_lines if _needs_json(line if end < 0 else line[:end]) else clean).append(line)
    parts: list[pd.DataFrame] = []
    if clean:
        fast = _fast(b"\n".join(clean) + b"\n", spec)
        if fast is None:
            slow_lines.extend(clean)
        else:
            parts.append(fast)
    if slow_lines:
        parts.append(_slow(slow_lines, spec))
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts, ignore_index=True)


def _needs_json(data: bytes) -> bool:
    """Whether ``data`` holds something the fast path would misread (see the module docstring)."""
    return any(marker in data for marker in _NEEDS_JSON)


def _fast(data: bytes, spec: FrameSpec) -> pd.DataFrame | None:
    """The CSV-tokenizer path; None when the data does not have the layout it needs."""
    n_columns = len(spec.columns)
    first_key, last_key = 0, 2 * (n_columns - 1)
    value_positions = [2 * i + 1 for i in range(n_columns)]
    dtypes: dict[int, Any] = {first_key: object, last_key: object}
    na_values: dict[int, list[str]] = {}
    for position, column in zip(value_positions, spec.columns, strict=True):
        kind = spec.kinds[column]
        dtypes[position] = {"float": "float64", "int": "int64"}.get(kind, object)
        if kind in ("float", "opt_str"):
            na_values[position] = ["null"]
    tokens = data.replace(b'":', b'",')
    if spec.closes_object:
        # the last column ends the object: detach the closing brace from the last value
        tokens = tokens.replace(b"}\n", b",}\n")
    options: dict[str, Any] = {
        "sep": ",",
        "header": None,
        "usecols": [first_key, last_key, *value_positions],
        "dtype": dtypes,
        "quotechar": '"',
        "escapechar": "\\",
        "keep_default_na": False,
        "na_values": na_values,
        "skip_blank_lines": False,
        "engine": "c",
        **_FLOAT_OPTIONS,
    }
    try:
        raw = pd.read_csv(io.BytesIO(tokens), **options)
    except (ValueError, pd.errors.ParserError) as exc:
        log.debug("fast %s reader declined (%s); using json", spec.name, exc)
        return None
    if len(raw) != data.count(b"\n"):
        return None
    layout_ok = (raw[first_key] == '{"' + spec.columns[0] + '"') & (raw[last_key] == spec.columns[-1])
    for position, column in zip(value_positions, spec.columns, strict=True):
        if spec.kinds[column] == "str":
            layout_ok &= raw[position].notna()
    if not bool(layout_ok.all()):
        return None
    frame = raw[value_positions]
    frame.columns = list(spec.columns)
    return frames.coerce(frame, spec)


def _slow(lines: list[bytes], spec: FrameSpec) -> pd.DataFrame:
    """One ``json.loads`` per line; lines that are not a record are skipped and counted."""
    rows: list[list[Any]] = []
    skipped = 0
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if (
            not isinstance(record, dict)
            or not isinstance(record.get("agent"), str)
            or not isinstance(record.get("timestamp"), int | float)
        ):
            skipped += 1
            continue
        rows.append([record.get(column) for column in spec.columns])
    if skipped:
        log.warning("skipped %d unreadable %s line(s)", skipped, spec.name)
    return frames.from_rows(rows, spec)
