"""What is firing, kept in ``spool_dir`` so that a restart (or the next ``--once`` run) does not fire it again.

An alert fires on the transition into breach, not once per poll, and a collector run from cron with
``--once`` is one poll per process: without this file every run would fire every alert still in breach.

``spool_dir/alert-state.json`` (``alert-state-IofN.json`` for ``--shard I/N``, so collectors sharing a
directory keep apart)::

    {"format": "secure-collector alert state", "version": 1,
     "agents": {"web1": {"cpu_usage": "warning", "security.exec_from_tmp.0a1b2c3d4e": "critical"}}}

It is written after every sweep that changed what is firing, after that sweep's alerts were stored or
spooled (a crash in between fires an alert twice rather than losing one), through a temporary file,
``fsync`` and ``os.replace`` (:func:`pki.files.write_atomic`), mode 0600. Reading it treats it as untrusted:
at most :data:`MAX_BYTES`, a regular file, strict types, agent names and metric names as the collector makes
them, at most :data:`MAX_METRICS` per agent. A file that fails any of this is logged and ignored (the
collector starts with nothing firing, as before this file existed); it is never a reason not to start.
State of agents that are no longer polled (removed from ``agents[]``, or now another shard's) is dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from pki.files import PRIVATE_MODE, fsync_dir, write_atomic
from secure_collector.alerts import AlertEngine, FiringState
from storage.catalog import with_thresholds
from storage.models import AGENT_NAME_PATTERN, Severity

logger = logging.getLogger(__name__)

FILE_NAME = "alert-state.json"
FORMAT = "secure-collector alert state"
MAX_BYTES = 64 * 1024 * 1024
"""About 800,000 firing metrics; a bigger state is not written (it fires again after a restart instead)."""
MAX_METRICS = 1024
"""Per agent: 5 levels, the threat level, the agent's state and at most 256 findings per answer, with room."""
_LEVEL_NAMES = "|".join(re.escape(m.threshold.key) for m in with_thresholds() if m.threshold is not None)
_OWN_NAMES = "threat_level|agent_state|certificate_expiry"
METRIC_PATTERN = rf"^({_LEVEL_NAMES}|{_OWN_NAMES}|security\.[a-z][a-z0-9_]{{0,39}}\.[0-9a-f]{{10}})$"

AgentName = Annotated[str, StringConstraints(pattern=AGENT_NAME_PATTERN)]
MetricName = Annotated[str, StringConstraints(max_length=64, pattern=METRIC_PATTERN)]


class _StateFile(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    format: Literal["secure-collector alert state"]
    version: Literal[1]
    agents: dict[AgentName, Annotated[dict[MetricName, Severity], Field(max_length=MAX_METRICS)]]


def state_path(spool_dir: Path, shard: tuple[int, int] | None = None) -> Path:
    if shard is None:
        return spool_dir / FILE_NAME
    return spool_dir / f"alert-state-{shard[0]}of{shard[1]}.json"


class AlertState:
    """Loads an :class:`AlertEngine`'s firing state at start and saves it when it changed. One thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved = -1
        self._failing = False

    def load(self, engine: AlertEngine, agents: Collection[str]) -> None:
        """Restore into ``engine`` what the file says is firing for ``agents``; ignore a bad file (logged)."""
        self._remove_temporaries()
        state = self._read()
        if state is None:
            return
        kept = {agent: metrics for agent, metrics in state.items() if agent in agents and metrics}
        engine.restore(kept)
        dropped = len(state) - len(kept)
        if dropped:
            logger.info("%s: dropped the alert state of %d agents no longer polled here", self.path, dropped)
        else:
            self._saved = engine.revision  # the file says exactly this: no need to write it again
        if kept:
            logger.info("%s: %d alerts still firing from an earlier run", self.path, sum(map(len, kept.values())))

    def _read(self) -> FiringState | None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("%s: cannot read the alert state (%s); ignored", self.path, exc.strerror or exc)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                logger.warning("%s: not a regular file; alert state ignored", self.path)
                return None
            if info.st_size > MAX_BYTES:
                logger.warning("%s: larger than %d bytes; alert state ignored", self.path, MAX_BYTES)
                return None
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(MAX_BYTES + 1)
        except OSError as exc:
            logger.warning("%s: cannot read the alert state (%s); ignored", self.path, exc.strerror or exc)
            return None
        finally:
            os.close(fd)
        if len(data) > MAX_BYTES:
            logger.warning("%s: larger than %d bytes; alert state ignored", self.path, MAX_BYTES)
            return None
        try:
            parsed = _StateFile.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"])[:120] or "(file)"
            logger.warning(
                "%s: not an alert state file of this collector (%s at %s); ignored", self.path, first["type"], where
            )
            return None
        return {agent: dict(metrics) for agent, metrics in parsed.agents.items()}

    def save(self, engine: AlertEngine) -> None:
        """Write the engine's state if it changed since it was loaded or last written; never raises."""
        revision = engine.revision
        if revision == self._saved:
            return
        state = {"format": FORMAT, "version": 1, "agents": engine.export()}
        data = json.dumps(state, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        try:
            if len(data) > MAX_BYTES:
                # a stale file would restore alerts that have cleared since: better none at all
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                logger.error("alert state of %d bytes exceeds %d; not kept across restarts", len(data), MAX_BYTES)
            else:
                write_atomic(self.path, data, mode=PRIVATE_MODE, overwrite=True)
                fsync_dir(self.path.parent)
        except OSError as exc:
            if not self._failing:
                logger.warning("%s: cannot save the alert state (%s); retrying after the next sweep", self.path, exc)
            self._failing = True
            return
        if self._failing:
            logger.info("%s: alert state saved again", self.path)
        self._failing = False
        self._saved = revision

    def _remove_temporaries(self) -> None:
        """Temporary files of a run that died mid-write (``write_atomic`` names them ``.NAME.*``)."""
        with contextlib.suppress(OSError):
            for stale in self.path.parent.glob(f".{self.path.name}.*"):
                stale.unlink()
