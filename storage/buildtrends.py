"""``python -m storage trends``: build the trend rollups of data stored before trends existed, or loaded
by another tool, resumably and idempotently.

MySQL: the stored samples' time span is rebuilt a day at a time (``INSERT ... SELECT`` on the server, the
same statements the collector's writes run), and the end of each finished day is kept in the table
``trends_progress``: an interrupted run goes on from there, a finished one builds only what was stored
since. Rebuilding a day again gives the same rows.

Files: the raw files (oldest backup first) are read one at a time, and every (agent, bucket) that has no
rollup yet is written, compacted, into its segment; a bucket that straddles two files is finished with
the next file's samples. Buckets that already have a rollup (written by the collector, or by an earlier
run) are left as they are: their raw samples may have rotated away since, and a rollup of what is left
would be smaller than the truth. A rerun therefore adds nothing twice, and resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from storage import frames, jsonlines
from storage.config import StorageConfig
from storage.rotating import family, whole_lines
from storage.trends import FIVE_MINUTES, HOURLY, LEVELS, merge, rollup

if TYPE_CHECKING:
    from storage.file import FileStore

log = logging.getLogger(__name__)

DAY = 86_400.0
Progress = Callable[[int, int, str], None]
"""(done, total, unit) after each step."""


@dataclass
class Built:
    steps: int = 0
    rollups: int = 0
    skipped: int = 0
    where: str = ""
    mysql: bool = False

    def summary(self) -> str:
        if self.mysql:
            return f"trends built in mysql {self.where}: {self.steps} day(s) of samples rolled up"
        return (f"trends built beside {self.where}: {self.rollups} rollups written from {self.steps} file(s), "
                f"{self.skipped} already present")


def build(config: StorageConfig, progress: Progress | None = None, *, rebuild: bool = False) -> Built:
    if config.type == "mysql":
        return _build_mysql(config, progress, rebuild)
    return _build_files(config, progress)


def _build_mysql(config: StorageConfig, progress: Progress | None, rebuild: bool) -> Built:
    from storage.mysql import MySQLStore

    store = MySQLStore(config)
    try:
        store.init_schema()
        span = store.sample_span()
        built = Built(where=store.where, mysql=True)
        if span is None:
            return built
        first = math.floor(span[0] / DAY) * DAY
        last = math.floor(span[1] / DAY) * DAY + DAY
        done = None if rebuild else store.trends_built_until()
        start = max(first, done) if done is not None else first
        days = int((last - first) // DAY)
        position = int((start - first) // DAY)
        if progress:
            progress(position, days, "day")
        day = start
        while day < last:
            store.build_trends(day, day + DAY)
            store.save_trends_built_until(min(day + DAY, math.floor(span[1] / HOURLY.width) * HOURLY.width))
            built.steps += 1
            day += DAY
            if progress:
                progress(int((day - first) // DAY), days, "day")
        return built
    finally:
        store.close()


def _build_files(config: StorageConfig, progress: Progress | None) -> Built:
    from storage.file import FileStore

    store = FileStore.from_config(config)  # the writer's lock: not beside a running collector
    try:
        members = family(store.json_file, store.backup_count)
        built = Built(where=str(store.json_file))
        carried = frames.empty(frames.SAMPLES)
        if progress:
            progress(0, len(members), "file")
        for index, member in enumerate(members, 1):
            frame = jsonlines.parse(whole_lines(member), frames.SAMPLES, member)
            frame = pd.concat([carried, frame], ignore_index=True) if not carried.empty else frame
            frame = frames.finish(frame, frames.SAMPLES, -math.inf, math.inf)
            if index < len(members):
                frame, carried = _hold_last_hour(frame)
            else:
                carried = frames.empty(frames.SAMPLES)
            written, skipped = _write_missing(store, frame)
            built.rollups += written
            built.skipped += skipped
            built.steps += 1
            if progress:
                progress(index, len(members), "file")
        return built
    finally:
        store.close()


def _hold_last_hour(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split off each agent's last (maybe unfinished) hour, to be finished with the next file."""
    if frame.empty:
        return frame, frame
    hour = np.floor(frame["timestamp"].to_numpy(dtype=np.float64) / HOURLY.width) * HOURLY.width
    last = pd.Series(hour).groupby(frame["agent"].to_numpy(dtype=object)).transform("max").to_numpy()
    held = hour >= last
    return frame.loc[~held].reset_index(drop=True), frame.loc[held].reset_index(drop=True)


def _write_missing(store: FileStore, frame: pd.DataFrame) -> tuple[int, int]:
    if frame.empty:
        return 0, 0
    five = rollup(frame, FIVE_MINUTES.width)
    hourly = merge(five, HOURLY.width)
    written = skipped = 0
    for level, rollups in zip(LEVELS, (five, hourly), strict=True):
        start, end = float(rollups["bucket"].min()), float(rollups["bucket"].max())
        present = store.trends.query(level, start, end)
        if not present.empty:
            have = pd.MultiIndex.from_frame(present[["agent", "bucket"]])
            mine = pd.MultiIndex.from_frame(rollups[["agent", "bucket"]])
            new = ~mine.isin(have)
            skipped += int((~new).sum())
            rollups = rollups.loc[new]
        if not rollups.empty:
            store.trends.write_compacted(level, rollups)
            written += len(rollups)
    return written, skipped


def terminal_progress(label: str) -> Progress | None:
    """A tqdm bar on stderr when it is a terminal; None otherwise (a cron job's log stays clean)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    bar: list[tqdm[Any]] = []

    def update(done: int, total: int, unit: str) -> None:
        if not bar:
            bar.append(tqdm(total=total, unit=unit, desc=label, file=sys.stderr))
        bar[0].n = done
        bar[0].refresh()
        if done >= total:
            bar[0].close()

    return update
