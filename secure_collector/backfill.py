"""Back-filling a collector's outages from the agents' sample buffers (``get_samples``).

The collector remembers, per agent, the newest buffered sample it is covered up to (``last``): a good live
poll covers the agent up to the ``sample_seq`` its answer names. After a gap -- the collector's own restart
(the state survives in ``spool_dir``), or a poll of that agent that failed -- the next good poll is followed
on the same connection by ``get_samples(last, PAGE)`` pages, at most ``max_per_sweep`` samples a sweep, and
each sample is stored once, with the agent's clock as its timestamp and ``extra.backfilled``.

An agent is untrusted, and back-filled samples carry its clock; so each one goes through the same validation
as a live answer, must be newer than ``max_age`` and not in the future beyond :data:`FUTURE_SKEW`, and
sequence numbers must grow. What does not pass is dropped and counted, never stored. The dedup key of a
stored sample (agent, timestamp) is the agent's own time here: a replay, or a re-fetch after a crash before
the state was saved, stores nothing twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pki.files import PRIVATE_MODE, write_atomic
from secure_collector.errors import PollError
from secure_collector.validate import AnswerInvalid, to_sample, validate_answer
from storage.models import Sample

logger = logging.getLogger(__name__)

METHOD = "get_samples"
PAGE = 100  # samples per call: a page stays well under the collector's 1 MiB answer cap
DEFAULT_MAX_PER_SWEEP = 3000  # a day at a 30 s sample interval is 2,880: one sweep catches up a day
DEFAULT_MAX_AGE = 7 * 86_400.0
FUTURE_SKEW = 300.0  # seconds an agent's clock may run ahead (as security.max_clock_skew's default)
STATE_FILE = "backfill-state.json"
Call = tuple[str, tuple[Any, ...]]


class BackfillOutcome(NamedTuple):
    samples: tuple[Sample, ...]
    refused: int  # samples dropped: invalid, out of the time window, or out of order
    gap: bool  # the agent no longer held samples we had not stored (its buffer dropped them)
    more: bool  # more to fetch in the next sweep


@dataclass
class _Agent:
    last: int | None = None  # covered up to this buffered sample (None: never seen)
    pending: bool = False  # a gap since: fetch (last, newest] at the next good poll
    active: bool = False
    fetched: int = 0
    samples: list[Sample] = field(default_factory=list)
    refused: int = 0
    gap: bool = False
    more: bool = False
    target: int = 0  # the newest seq the live answer named


class Backfill:
    """The ``get_samples`` follow-up of every agent's poll (an :class:`secure_collector.engine.FollowUp`)."""

    def __init__(
        self,
        agents: list[str],
        *,
        max_per_sweep: int = DEFAULT_MAX_PER_SWEEP,
        max_age: float = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._agents = {name: _Agent() for name in agents}
        self.max_per_sweep = max_per_sweep
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()

    # -- state across restarts --------------------------------------------------------------------

    def load(self, state: Mapping[str, int]) -> None:
        """Where a previous run was covered up to: each such agent has a gap (the collector was down)."""
        for name, last in state.items():
            agent = self._agents.get(name)
            if agent is not None and type(last) is int and last >= 0:
                agent.last, agent.pending = last, True

    def export(self) -> dict[str, int]:
        with self._lock:
            return {name: agent.last for name, agent in self._agents.items() if agent.last is not None}

    def gap(self, name: str) -> None:
        """A poll of ``name`` failed: what its agent samples from now on is fetched at the next good poll."""
        agent = self._agents.get(name)
        if agent is not None and agent.last is not None:
            agent.pending = True

    # -- the follow-up protocol -------------------------------------------------------------------

    def first_call(self, name: str, sample: Sample | None = None) -> Call | None:
        agent = self._agents.get(name)
        newest = sample.extra.get("sample_seq") if sample is not None else None
        if agent is None or type(newest) is not int:
            return None  # an agent without a buffer (an older version): nothing to back-fill
        agent.samples, agent.refused, agent.gap, agent.more, agent.fetched = [], 0, False, False, 0
        if agent.last is None:  # first contact: this live poll covers it
            agent.last = newest
            return None
        if newest < agent.last:  # the agent's buffer started afresh (a new buffer.path): fetch it whole
            agent.last, agent.pending = 0, True
        if not agent.pending or newest == agent.last:
            agent.last, agent.pending = newest, False
            return None
        agent.active, agent.target = True, newest
        return METHOD, (agent.last, PAGE)

    def answer(self, name: str, value: object) -> Call | None:
        agent = self._agents[name]
        if not isinstance(value, dict) or set(value) != {"samples", "more", "gap"}:
            agent.refused += 1
            return None
        samples, more, gap = value["samples"], value["more"], value["gap"]
        if not isinstance(samples, list) or type(more) is not bool or type(gap) is not bool or len(samples) > PAGE:
            agent.refused += 1
            return None
        agent.gap = agent.gap or gap
        for raw in samples:
            self._take(name, agent, raw)
        agent.fetched += len(samples)
        agent.more = more
        if more and samples and agent.fetched < self.max_per_sweep:
            return METHOD, (agent.last or 0, PAGE)
        return None

    def _take(self, name: str, agent: _Agent, raw: object) -> None:
        if not isinstance(raw, dict):
            agent.refused += 1
            return
        seq, stamp = raw.get("seq"), raw.get("timestamp")
        now = self._clock()
        if (
            type(seq) is not int
            or seq <= (agent.last or 0)
            or not isinstance(stamp, float)
            or not now - self.max_age <= stamp <= now + FUTURE_SKEW
        ):
            agent.refused += 1
            return
        try:
            sample = to_sample(validate_answer(raw, name), stamp)
        except AnswerInvalid:
            agent.refused += 1
            return
        extra = {**sample.extra, "backfilled": True, "agent_seq": seq}
        agent.samples.append(sample.model_copy(update={"extra": extra}))
        agent.last = seq

    def failed(self, name: str, error: PollError) -> None:
        agent = self._agents.get(name)
        if agent is not None and agent.active:
            logger.warning("%s: back-fill: get_samples: %s: %s", name, error.state, error.detail)

    def finish(self, name: str) -> BackfillOutcome | None:
        agent = self._agents.get(name)
        if agent is None or not agent.active:
            return None
        agent.active = False
        agent.pending = agent.more or (agent.last or 0) < agent.target
        if agent.gap:
            logger.warning("%s: back-fill: the agent's buffer no longer held every sample missed (buffer.max_*)", name)
        if agent.refused:
            logger.warning("%s: back-fill: %d samples refused (invalid, out of time or order)", name, agent.refused)
        outcome = BackfillOutcome(tuple(agent.samples), agent.refused, agent.gap, agent.pending)
        agent.samples = []
        return outcome


class BackfillState:
    """``spool_dir/backfill-state.json``: where each agent's back-fill resumes after a restart."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / STATE_FILE
        self._saved: dict[str, int] | None = None

    def load(self) -> dict[str, int]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("%s: unreadable (%s); back-fill starts afresh", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and type(v) is int and v >= 0}

    def save(self, state: dict[str, int]) -> None:
        if state == self._saved:
            return
        try:
            write_atomic(self.path, json.dumps(state, sort_keys=True).encode(), mode=PRIVATE_MODE, overwrite=True)
        except OSError as exc:
            logger.warning("%s: cannot save the back-fill state (%s)", self.path, exc)
            return
        self._saved = dict(state)


class FollowUps:
    """Several follow-ups one after the other on the same connection: the back-fill, then the audit trail."""

    def __init__(self, **stages: Any) -> None:
        self._stages = stages  # PollResult field -> follow-up
        self._current: dict[str, int] = {}

    def _start(self, name: str, index: int, sample: Sample | None) -> Call | None:
        stages = list(self._stages.values())
        while index < len(stages):
            call: Call | None = stages[index].first_call(name, sample)
            if call is not None:
                self._current[name] = index
                return call
            index += 1
        self._current.pop(name, None)
        return None

    def first_call(self, name: str, sample: Sample | None = None) -> Call | None:
        return self._start(name, 0, sample)

    def answer(self, name: str, value: object) -> Call | None:
        index = self._current.get(name)
        if index is None:
            return None
        call: Call | None = list(self._stages.values())[index].answer(name, value)
        return call if call is not None else self._start(name, index + 1, None)

    def failed(self, name: str, error: PollError) -> None:
        index = self._current.pop(name, None)
        if index is not None:
            list(self._stages.values())[index].failed(name, error)

    def finish(self, name: str) -> dict[str, Any]:
        self._current.pop(name, None)
        return {key: stage.finish(name) for key, stage in self._stages.items()}

