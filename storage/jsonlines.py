"""Turn JSON-lines bytes into frames: exactly what ``json.loads`` of each line gives, in any layout.

``json.loads`` of a day of 100 agents (288,000 lines, ~140 MB) and building a frame from the dicts takes
several seconds on a small machine; ``viz`` needs it in well under one. Arrow's JSON reader (pyarrow, in
C++ on every core) reads the frame's columns straight from the text with an explicit schema, whatever the
key order, whitespace, escapes or extra keys (nested findings and details are skipped unread): about
twice as fast as the CSV-tokenizer trick this replaced, which read our own layout only and could put a
value into another column when keys came in another order.

A few lines (less than :data:`SMALL` bytes) are read by :mod:`json` alone. A block arrow refuses (a
line that is not a JSON object, a value of another type than its column's) is read again in chunks, and
a chunk arrow still refuses goes line by line through :mod:`json`; lines that
are not records there either (damaged by hand or by a disk, no ``agent`` or ``timestamp``) are skipped
and counted in a warning naming their file. Differential tests hold every path to ``json.loads``
(tests/storage/test_readers_any_layout.py); an integer ``-0`` is read as ``-0.0`` (``json.loads``: 0).
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

CHUNK_LINES = 4096
"""Lines per chunk when a block arrow refused is read again: one bad line costs this many json.loads."""
SMALL = 64 * 1024
"""Bytes below which :mod:`json` reads the lines itself (a few status lines: no call into arrow's thread
pool); above, arrow is faster already for one agent's day (~1.4 MB: ~20 ms against ~45 ms)."""
_OPTIONS: dict[str, Any] = {}


def parse(data: bytes, spec: FrameSpec, source: object = "", *, small: int = SMALL) -> pd.DataFrame:
    """Frame (unfiltered, unsorted) of the whole lines in ``data``; see the module docstring.

    ``source`` names where the lines came from in the warning that counts lines that are not records;
    below ``small`` bytes the lines go through :mod:`json` alone."""
    if not data:
        return frames.empty(spec)
    if len(data) < small:
        return _slow(_lines(data), spec, source)
    import pyarrow as pa  # here, not at the top: see SMALL

    try:
        return _arrow(data, spec, source)
    except pa.ArrowInvalid:
        pass
    lines = _lines(data)
    parts: list[pd.DataFrame] = []
    for first in range(0, len(lines), CHUNK_LINES):
        chunk = lines[first : first + CHUNK_LINES]
        try:
            parts.append(_arrow(b"\n".join(chunk) + b"\n", spec, source))
        except pa.ArrowInvalid:
            parts.append(_slow(chunk, spec, source))
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def _options(spec: FrameSpec) -> Any:
    import pyarrow as pa  # here, not at the top: see SMALL
    import pyarrow.json as pa_json

    options = _OPTIONS.get(spec.name)
    if options is None:
        types = {"str": pa.string(), "opt_str": pa.string(), "float": pa.float64(), "int": pa.int64()}
        schema = pa.schema([(column, types[spec.kinds[column]]) for column in spec.columns])
        options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        _OPTIONS[spec.name] = options
    return options


def _arrow(data: bytes, spec: FrameSpec, source: object) -> pd.DataFrame:
    """The frame arrow reads (raises ArrowInvalid); records without an agent or a timestamp are counted out."""
    import pyarrow.json as pa_json  # here, not at the top: see SMALL

    frame = pa_json.read_json(io.BytesIO(data), parse_options=_options(spec)).to_pandas()
    records = frame["agent"].notna() & frame["timestamp"].notna()
    if not bool(records.all()):
        _count_skipped(int((~records).sum()), spec, source)
        frame = frame.loc[records].reset_index(drop=True)
    return frames.coerce(frame, spec)


def _count_skipped(skipped: int, spec: FrameSpec, source: object) -> None:
    where = f" in {source}" if source else ""
    log.warning("skipped %d line(s) that are not %s records%s", skipped, spec.name, where)


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
        _count_skipped(skipped, spec, source)
    return frames.from_rows(rows, spec)
