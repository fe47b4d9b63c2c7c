"""Turn JSON-lines bytes into frames: exactly what ``json.loads`` of each line gives, fast for our own layout.

``json.loads`` of a day of 100 agents (288,000 lines, ~110 MB) takes several seconds on a small machine;
``viz`` needs it in well under one. The lines our writer (:mod:`storage.file`) produces have a fixed
layout: a flat object whose leading keys are the frame's columns, in order, each value a number, ``null``,
or a string. Rewriting every ``":`` to ``",`` turns such a line into comma-separated ``key,value`` tokens
that pandas' C CSV tokenizer reads (quoted strings keep their commas; nested findings and extras at the
end of a line are simply not read).

The fast path is only trusted where it is exact, and checked line by line:

* a line holding a backslash (a JSON escape, which the CSV reader would not decode), the string
  ``"null"`` (which it could not tell from ``null``) or a string value beginning with ``:`` (whose
  opening ``":`` the rewrite would take for a key's end) is parsed with :mod:`json` instead;
* every key of every row is read and must be the column's own name at its place: a line in any other
  layout (another key order, whitespace, keys in between: the predecessor's files, or lines another tool
  appended) is parsed with :mod:`json`, so a value is never read into another column;
* the row count must equal the line count, and every number must parse, else every line goes to
  :mod:`json`;
* lines :mod:`json` cannot read either (damaged by hand or by a disk) are skipped and counted in a warning.

Duplicate keys in one object are outside this contract (RFC 8259 leaves their meaning open). Callers pass
whole lines only (everything up to the last newline), so a torn last line never gets here.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import numpy as np
import numpy.typing as npt
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


def parse(data: bytes, spec: FrameSpec, source: object = "") -> pd.DataFrame:
    """Frame (unfiltered, unsorted) of the whole lines in ``data``; see the module docstring.

    ``source`` names where the lines came from in the warning that counts lines that are not records."""
    if not data:
        return frames.empty(spec)
    if not _needs_json(data):
        fast = _fast(data, spec)
        if fast is not None:
            return _with_foreign(data, fast, spec, source)
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
        joined = b"\n".join(clean) + b"\n"
        fast = _fast(joined, spec)
        if fast is None:
            slow_lines.extend(clean)
        else:
            frame, foreign = fast
            parts.append(frame)
            slow_lines.extend(_lines_at(joined, foreign))
    if slow_lines:
        parts.append(_slow(slow_lines, spec, source))
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts, ignore_index=True)


def _with_foreign(
    data: bytes, fast: tuple[pd.DataFrame, npt.NDArray[np.intp]], spec: FrameSpec, source: object
) -> pd.DataFrame:
    frame, foreign = fast
    if not len(foreign):
        return frame
    return pd.concat([frame, _slow(_lines_at(data, foreign), spec, source)], ignore_index=True)


def _lines_at(data: bytes, rows: npt.NDArray[np.intp]) -> list[bytes]:
    """The lines of ``data`` at the row numbers ``rows``."""
    if not len(rows):
        return []
    lines = data.split(b"\n")
    return [lines[row] for row in rows.tolist()]


def _needs_json(data: bytes) -> bool:
    """Whether ``data`` holds something the fast path would misread (see the module docstring)."""
    return any(marker in data for marker in _NEEDS_JSON)


def _fast(data: bytes, spec: FrameSpec) -> tuple[pd.DataFrame, npt.NDArray[np.intp]] | None:
    """The CSV-tokenizer path: the frame of the lines in our own layout, and the row numbers of the others
    (another key order, whitespace, keys in between: :func:`json.loads` reads those); None when the data
    cannot be tokenized this way at all."""
    n_columns = len(spec.columns)
    key_positions = [2 * i for i in range(n_columns)]
    value_positions = [2 * i + 1 for i in range(n_columns)]
    # every key is read and checked: a value is taken for its column only where its key says so
    dtypes: dict[int, Any] = dict.fromkeys(key_positions, "category")
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
        "usecols": [*key_positions, *value_positions],
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
    ours = np.ones(len(raw), dtype=bool)
    for position, column in zip(key_positions, spec.columns, strict=True):
        expected = '{"' + column + '"' if position == 0 else column
        ours &= (raw[position] == expected).to_numpy(dtype=bool, na_value=False)
    for position, column in zip(value_positions, spec.columns, strict=True):
        if spec.kinds[column] == "str":
            ours &= raw[position].notna().to_numpy()
    frame = raw.loc[ours, value_positions] if not ours.all() else raw[value_positions]
    frame.columns = list(spec.columns)
    return frames.coerce(frame.reset_index(drop=True), spec), np.flatnonzero(~ours)


def _slow(lines: list[bytes], spec: FrameSpec, source: object = "") -> pd.DataFrame:
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
        where = f" in {source}" if source else ""
        log.warning("skipped %d line(s) that are not %s records%s", skipped, spec.name, where)
    return frames.from_rows(rows, spec)
