"""The trend rollups of the file backend (:mod:`storage.trends`), in segment files by period.

Layout, for ``json_file = DIR/metrics_data.json``::

    DIR/metrics_data.trends/5m/2026-12-04.json      5-minute rollups of one UTC day (JSON lines, appended)
    DIR/metrics_data.trends/5m/2026-12-04.parquet   the same day compacted (written once the day is over)
    DIR/metrics_data.trends/1h/2026-12.json         hourly rollups of one UTC month
    DIR/metrics_data.trends/1h/2026-12.parquet

A line is ``{"agent", "bucket", "count", "threat_max", METRIC: [mean] | [mean, min, max] | [mean, min,
max, n], ...}``: the shortest list that says it (min and max equal to the mean, n equal to count are left
out; a metric with no value in the bucket is left out). A bucket may appear more than once (recomputed
after a late sample, or after a restart): the last copy wins, in the JSON file after the Parquet one.

The writer keeps the samples of the last :data:`KEEP` seconds in memory (read back from the raw files when
it opens) and writes a bucket's rollup, computed from all of its samples, once the newest sample stored
is past the bucket's end; a late sample older than that memory makes the writer read its bucket's raw
samples back from the files. Idempotent as a recomputation is: a replayed sample is dropped by the file
store before it gets here, and a bucket written twice reads as its last copy.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storage.models import Sample
from storage.rotating import FILE_MODE, make_dirs, whole_lines
from storage.trends import (
    FIVE_MINUTES,
    HOURLY,
    LEVELS,
    Level,
    columns,
    decode,
    empty,
    finish,
    merge,
    metrics,
    rollup,
    rollup_rows,
    row_of,
)

log = logging.getLogger(__name__)

KEEP = 2 * 3600.0
"""Seconds of samples kept in memory: the open hour and the one before it."""
_SEGMENT = {FIVE_MINUTES.name: ("%Y-%m-%d", re.compile(r"^(\d{4})-(\d{2})-(\d{2})\.(json|parquet)$")),
            HOURLY.name: ("%Y-%m", re.compile(r"^(\d{4})-(\d{2})\.(json|parquet)$"))}
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW

RawReader = Callable[[float, float, "str | None"], pd.DataFrame]
"""Reads stored samples of ``[start, end]`` (and an agent) back: the file store's ``query_samples``."""


def trends_dir(json_file: Path) -> Path:
    return json_file.with_name(f"{json_file.stem}.trends")


def segment_name(level: Level, bucket: float) -> str:
    return time.strftime(_SEGMENT[level.name][0], time.gmtime(bucket))


def segment_span(level: Level, stem: str) -> tuple[float, float]:
    """The [start, end) of a segment named ``stem`` (``2026-12-04`` or ``2026-12``)."""
    parts = [int(p) for p in stem.split("-")]
    if level is FIVE_MINUTES:
        start = _epoch(parts[0], parts[1], parts[2])
        return start, start + 86_400.0
    year, month = parts
    start = _epoch(year, month, 1)
    end = _epoch(year + (month == 12), month % 12 + 1, 1)
    return start, end


def _epoch(year: int, month: int, day: int) -> float:
    import calendar

    return float(calendar.timegm((year, month, day, 0, 0, 0, 0, 0, 0)))


def _number(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def encode_lines(rollups: pd.DataFrame) -> list[bytes]:
    """Decoded rollups as segment lines (see the module docstring)."""
    if rollups.empty:
        return []
    cols = {c: rollups[c].to_numpy() for c in columns()}
    lines: list[bytes] = []
    stats = [(m.name, f"{m.name}_min", f"{m.name}_max", f"{m.name}_n") for m in metrics()]
    agents = cols["agent"]
    for i in range(len(rollups)):
        count = int(cols["count"][i])
        parts = [
            '{"agent":' + _json_text(str(agents[i])),
            f'"bucket":{_number(float(cols["bucket"][i]))}',
            f'"count":{count}',
            f'"threat_max":{int(cols["threat_max"][i])}',
        ]
        for mean_c, low_c, high_c, n_c in stats:
            mean = float(cols[mean_c][i])
            n = int(cols[n_c][i])
            if n == 0 or mean != mean:
                continue
            low, high = float(cols[low_c][i]), float(cols[high_c][i])
            values = [mean]
            if n != count:
                values += [low, high, float(n)]
            elif low != mean or high != mean:
                values += [low, high]
            parts.append(f'"{mean_c}":[' + ",".join(_number(v) for v in values) + "]")
        lines.append((",".join(parts) + "}\n").encode())
    return lines


def _json_text(text: str) -> str:
    import json

    return json.dumps(text)


def parse_lines(data: bytes, source: object = "") -> pd.DataFrame:
    """Segment lines back to decoded rollups (unsorted, duplicates kept)."""
    if not data.strip():
        return empty()
    import io

    import pyarrow as pa
    import pyarrow.json as pajson

    fields = [pa.field("agent", pa.string()), pa.field("bucket", pa.float64()),
              pa.field("count", pa.int64()), pa.field("threat_max", pa.int64())]
    fields += [pa.field(m.name, pa.list_(pa.float64())) for m in metrics()]
    schema = pa.schema(fields)
    try:
        table = pajson.read_json(
            io.BytesIO(data),
            read_options=pajson.ReadOptions(block_size=1 << 24),
            parse_options=pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except pa.ArrowInvalid as exc:
        return _parse_slowly(data, source, exc)
    out: dict[str, Any] = {
        "agent": table.column("agent").to_numpy(zero_copy_only=False).astype(object),
        "bucket": table.column("bucket").to_numpy(zero_copy_only=False),
        "count": table.column("count").to_numpy(zero_copy_only=False),
        "threat_max": table.column("threat_max").fill_null(0).to_numpy(zero_copy_only=False),
    }
    count = np.asarray(out["count"], dtype=np.float64)
    for metric in metrics():
        mean, low, high, n = _unpack(table.column(metric.name).combine_chunks(), count)
        out[metric.name], out[f"{metric.name}_min"], out[f"{metric.name}_max"], out[f"{metric.name}_n"] = (
            mean, low, high, n)
    return pd.DataFrame(out, columns=list(columns()))


def _unpack(column: Any, count: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A list<double> column ([mean], [mean, min, max] or [mean, min, max, n]; null: no value) as arrays."""
    rows = len(column)
    mean = np.full(rows, np.nan)
    low = np.full(rows, np.nan)
    high = np.full(rows, np.nan)
    n = np.zeros(rows, dtype=np.int64)
    if rows == 0:
        return mean, low, high, n
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    values = column.values.to_numpy(zero_copy_only=False).astype(np.float64)
    valid = ~column.is_null().to_numpy(zero_copy_only=False)
    lengths = np.diff(offsets)
    present = valid & (lengths >= 1)
    first = offsets[:-1]
    mean[present] = values[first[present]]
    wide = present & (lengths >= 3)
    low[present] = mean[present]
    high[present] = mean[present]
    low[wide] = values[first[wide] + 1]
    high[wide] = values[first[wide] + 2]
    n[present] = count[present].astype(np.int64)
    counted = present & (lengths >= 4)
    n[counted] = values[first[counted] + 3].astype(np.int64)
    return mean, low, high, n


def _parse_slowly(data: bytes, source: object, why: Exception) -> pd.DataFrame:
    """Line by line through json: a damaged line is skipped and counted (never the whole segment)."""
    import json

    rows: list[dict[str, Any]] = []
    bad = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            rows.append(_row(record))
        except (ValueError, TypeError, KeyError, IndexError):
            bad += 1
    if bad:
        log.warning("%s: %d trend lines are not rollups and were skipped (%s)", source, bad, why)
    if not rows:
        return empty()
    return pd.DataFrame(rows, columns=list(columns()))


def _row(record: dict[str, Any]) -> dict[str, Any]:
    count = int(record["count"])
    row: dict[str, Any] = {"agent": str(record["agent"]), "bucket": float(record["bucket"]), "count": count,
                           "threat_max": int(record.get("threat_max", 0))}
    for metric in metrics():
        values = record.get(metric.name)
        if not values:
            row.update({metric.name: np.nan, f"{metric.name}_min": np.nan, f"{metric.name}_max": np.nan,
                        f"{metric.name}_n": 0})
            continue
        mean = float(values[0])
        low, high = (float(values[1]), float(values[2])) if len(values) >= 3 else (mean, mean)
        n = int(values[3]) if len(values) >= 4 else count
        row.update({metric.name: mean, f"{metric.name}_min": low, f"{metric.name}_max": high, f"{metric.name}_n": n})
    return row


class FileTrends:
    """Writes and reads the trend segments beside one samples file. The owner serialises calls."""

    def __init__(self, json_file: Path, *, read_raw: RawReader, fsync: bool = True) -> None:
        self.directory = trends_dir(json_file)
        self.fsync = fsync
        self._read_raw = read_raw
        self._recent: dict[str, dict[float, tuple[Any, ...]]] = {}  # agent -> timestamp -> trends.row_of
        self._dirty: dict[str, set[tuple[str, float]]] = {level.name: set() for level in LEVELS}
        self._watermark = -np.inf
        self._complete_since = np.inf
        """Memory holds every stored sample from this time on."""
        self._forgotten_before = -np.inf

    def level_dir(self, level: Level) -> Path:
        return self.directory / level.name

    # -- writing -------------------------------------------------------------------------------------

    def seed(self, newest: float | None) -> None:
        """At open: read back the samples of the last :data:`KEEP` seconds before ``newest`` (the newest stored),
        and mark their buckets for writing again (complete, once newer samples come)."""
        if newest is None:
            self._complete_since = -np.inf
            return
        since = float(np.floor((newest - KEEP) / HOURLY.width) * HOURLY.width)
        frame = self._read_raw(since, np.inf, None)
        names = ["agent", "timestamp", "threat_level", *(metric.name for metric in metrics())]
        self._remember_rows(list(zip(*(frame[name].tolist() for name in names), strict=True)))
        self._watermark = max(self._watermark, newest)
        self._complete_since = since

    def add(self, samples: Sequence[Sample]) -> None:
        """Remember newly stored ``samples`` and write every bucket that is over. Raises OSError."""
        if not samples:
            return
        rows = [row_of(s) for s in samples]
        late = [row for row in rows if row[1] < self._complete_since]
        self._remember_rows(rows)
        self._watermark = max(self._watermark, max(row[1] for row in rows))
        if late:
            self._rewrite_late(late)
        self._flush(self._watermark)

    def close(self) -> None:
        """Write every bucket not yet written (an open bucket too: it is written again, whole, later)."""
        self._flush(np.inf)

    def _remember_rows(self, rows: Iterable[tuple[Any, ...]]) -> None:
        for row in rows:
            agent, timestamp = str(row[0]), float(row[1])
            self._recent.setdefault(agent, {})[timestamp] = row
            for level in LEVELS:
                self._dirty[level.name].add((agent, (timestamp // level.width) * level.width))

    def _rewrite_late(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Buckets older than memory get their raw samples read back, so that they are written whole."""
        hours = {(str(r[0]), float(np.floor(r[1] / HOURLY.width) * HOURLY.width)) for r in rows}
        for agent, hour in sorted(hours):
            frame = self._read_raw(hour, hour + HOURLY.width - 1e-6, agent)
            frame = frame.loc[frame["timestamp"] < hour + HOURLY.width]
            for level in LEVELS:
                self._append(level, rollup(frame, level.width))
                self._dirty[level.name] -= {key for key in self._dirty[level.name] if key[0] == agent
                                            and hour <= key[1] < hour + HOURLY.width}

    def _flush(self, until: float) -> None:
        for level in LEVELS:
            due = {key for key in self._dirty[level.name] if key[1] + level.width <= until}
            if not due:
                continue
            rows = [row for agent, bucket in sorted(due) for row in self._rows_of(agent, bucket, level.width)]
            if rows:
                self._append(level, rollup_rows(rows, level.width))
            self._dirty[level.name] -= due
        self._forget(self._watermark - KEEP)

    def _rows_of(self, agent: str, bucket: float, width: int) -> list[tuple[Any, ...]]:
        recent = self._recent.get(agent, {})
        return [row for ts, row in recent.items() if bucket <= ts < bucket + width]

    def _forget(self, before: float) -> None:
        """Drop the samples of hours that ended :data:`KEEP` ago (once per hour, not per write)."""
        if not np.isfinite(before):
            return
        before = float(np.floor(before / HOURLY.width) * HOURLY.width)
        if before <= self._forgotten_before:
            return
        self._forgotten_before = before
        for agent in list(self._recent):
            kept = {ts: row for ts, row in self._recent[agent].items() if ts >= before}
            if kept:
                self._recent[agent] = kept
            else:
                del self._recent[agent]
        self._complete_since = max(self._complete_since, before)

    def _append(self, level: Level, rollups: pd.DataFrame) -> None:
        if rollups.empty:
            return
        names = [segment_name(level, b) for b in rollups["bucket"].to_numpy(dtype=np.float64)]
        directory = self.level_dir(level)
        make_dirs(directory)
        for name, part in rollups.groupby(np.asarray(names), sort=True):
            write_lines(directory / f"{name}.json", encode_lines(part), fsync=self.fsync)

    def write_compacted(self, level: Level, rollups: pd.DataFrame) -> list[Path]:
        """Write ``rollups`` (whole segments, e.g. from the back-fill command) straight as Parquet segments,
        merged with what each segment held."""
        if rollups.empty:
            return []
        names = np.asarray([segment_name(level, b) for b in rollups["bucket"].to_numpy(dtype=np.float64)])
        written = []
        for name, part in rollups.groupby(names, sort=True):
            written.append(self.compact(level, str(name), extra=part))
        return written

    def compact(self, level: Level, stem: str, extra: pd.DataFrame | None = None) -> Path:
        """Merge a segment's JSON lines (and ``extra``) into its Parquet file; the JSON file goes."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        directory = self.level_dir(level)
        make_dirs(directory)
        parts = [self._read_segment(directory, stem)]
        if extra is not None:
            parts.append(extra)
        merged = pd.concat([p for p in parts if not p.empty] or [empty()], ignore_index=True)
        merged = merged.loc[~merged.duplicated(subset=["agent", "bucket"], keep="last")]
        merged = merged.sort_values(["bucket", "agent"], kind="stable").reset_index(drop=True)
        target = directory / f"{stem}.parquet"
        temporary = directory / f".{stem}.parquet.tmp"
        table = pa.Table.from_pandas(_for_parquet(merged), preserve_index=False)
        pq.write_table(table, temporary, compression="zstd")
        os.chmod(temporary, FILE_MODE)
        if self.fsync:
            _fsync_file(temporary)
        os.replace(temporary, target)
        (directory / f"{stem}.json").unlink(missing_ok=True)
        return target

    def compact_closed(self, now: float) -> list[Path]:
        """Compact every JSON segment whose period ended more than an hour before ``now``."""
        done = []
        for level in LEVELS:
            for path in sorted(self.level_dir(level).glob("*.json")):
                stem = path.name[: -len(".json")]
                if _SEGMENT[level.name][1].match(path.name) and segment_span(level, stem)[1] + 3600 <= now:
                    done.append(self.compact(level, stem))
        return done

    # -- reading -------------------------------------------------------------------------------------

    def query(self, level: Level, start: float, end: float, agent: str | None = None) -> pd.DataFrame:
        if level not in LEVELS:  # 6 hours: the hourly segments merged (storage.trends.SIX_HOURS)
            first = float(np.floor(start / level.width) * level.width)
            last = float(np.floor(end / level.width) * level.width) + level.width - HOURLY.width
            hourly = self.query(HOURLY, first, last, agent)  # every hour of each bucket the range overlaps
            return finish(merge(hourly, level.width), level.width, start, end, agent)
        directory = self.level_dir(level)
        parts = [self._read_segment(directory, stem, agent) for stem in self.segments(level, start - level.width, end)]
        parts = [p for p in parts if not p.empty]
        if not parts:
            return empty()
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return finish(frame, level.width, start, end, agent)

    def segments(self, level: Level, start: float, end: float) -> list[str]:
        """Stems of the segments of ``level`` that overlap ``[start, end]``, oldest first."""
        directory = self.level_dir(level)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        stems = set()
        for name in names:
            match = _SEGMENT[level.name][1].match(name)
            if match is None:
                continue
            stem = name.rsplit(".", 1)[0]
            low, high = segment_span(level, stem)
            if high > start and low <= end:
                stems.add(stem)
        return sorted(stems)

    def _read_segment(self, directory: Path, stem: str, agent: str | None = None) -> pd.DataFrame:
        parts = []
        parquet = directory / f"{stem}.parquet"
        if parquet.exists():
            import pyarrow.parquet as pq

            filters = [("agent", "=", agent)] if agent is not None else None
            table = pq.read_table(parquet, filters=filters)
            parts.append(decode(table.to_pandas()) if table.num_rows else empty())
        path = directory / f"{stem}.json"
        data = whole_lines(path)
        if data:
            if agent is not None:
                from storage.lineindex import lines_of

                data = lines_of(data, agent)
            parts.append(parse_lines(data, path))
        parts = [p for p in parts if not p.empty]
        if not parts:
            return empty()
        return pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]

    # -- retention -----------------------------------------------------------------------------------

    def purge(self, level: Level, before: float) -> tuple[int, int]:
        """Remove whole segments of ``level`` that end before ``before``; rewrite the one that straddles it.
        Returns (files removed, rollups removed)."""
        files = rows = 0
        for stem in self.segments(level, -np.inf, before):
            low, high = segment_span(level, stem)
            directory = self.level_dir(level)
            if high <= before:
                frame = self._read_segment(directory, stem)
                rows += len(frame)
                for suffix in (".json", ".parquet"):
                    path = directory / f"{stem}{suffix}"
                    if path.exists():
                        path.unlink()
                        files += 1
            elif low < before:
                frame = self._read_segment(directory, stem)
                old = frame["bucket"].to_numpy(dtype=np.float64) < before
                if old.any():
                    rows += int(old.sum())
                    self._replace_segment(level, stem, frame.loc[~old])
        return files, rows

    def _replace_segment(self, level: Level, stem: str, frame: pd.DataFrame) -> None:
        directory = self.level_dir(level)
        (directory / f"{stem}.json").unlink(missing_ok=True)
        (directory / f"{stem}.parquet").unlink(missing_ok=True)
        if not frame.empty:
            self.compact(level, stem, extra=frame)


def _for_parquet(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame.copy()
    out["agent"] = out["agent"].astype(str)
    return out


def write_lines(path: Path, lines: Sequence[bytes], *, fsync: bool) -> None:
    """Append whole lines; a failed write is cut back to the last whole line. Raises OSError."""
    if not lines:
        return
    fd = os.open(path, _OPEN_FLAGS, FILE_MODE)
    try:
        before = _cut_torn_tail(fd, path)
        data = b"".join(lines)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if fsync:
                os.fsync(fd)
        except OSError:
            os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)


def _cut_torn_tail(fd: int, path: Path) -> int:
    """Cut whatever follows the last newline (a write a crash interrupted); the file's size after."""
    size = os.fstat(fd).st_size
    if size == 0:
        return 0
    with open(path, "rb") as handle:
        handle.seek(max(0, size - 65_536))
        tail = handle.read()
    if tail.endswith(b"\n"):
        return size
    newline = tail.rfind(b"\n")
    keep = size - len(tail) + newline + 1 if newline >= 0 else (0 if size <= 65_536 else size)
    log.warning("cut a torn last line of %s (%d bytes) left by an interrupted write", path, size - keep)
    os.ftruncate(fd, keep)
    return keep


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
