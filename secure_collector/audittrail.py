"""Each agent's audit trail, fetched every sweep, checked record by record and link by link, for the central copy.

After an agent answers ``get_metrics``, the engine asks this module what to call next on the same
connection (:meth:`AuditTrail.first_call`, :meth:`AuditTrail.answer`): ``get_audit(after, limit)`` with
``after`` the hash of the last record the central copy holds, page after page while the agent says
``more``, up to ``audit_fetch.max_records_per_sweep`` records, so a long backlog is caught up over several
sweeps and never delays polling by more than a few calls. What came is handed to storage with the sweep's
batch (:class:`~storage.models.AuditEntry`, spooled like samples while storage is down).

Every record is checked (:func:`pki.auditchain.read_record`: its hash over its content, canonical form)
and so is every link: a record's ``prev`` must be the hash of the record before it, across rotation
records and across pages and sweeps. A *break* is:

- ``gap``: the agent no longer holds (or never held) the record we asked after: records were cut from its
  log, segments deleted, the chain rewritten, or retention deleted records before we fetched them;
- ``link``: a record that does not follow the one before it;
- ``record``: a line that is not a sealed record of this agent (edited, forged, another agent's);
- ``start``: the oldest record of an agent seen for the first time does not start a chain.

A break is reported with what was expected and what came (:class:`Break`, the ``audit_chain`` alert) and
the central copy held so far is closed: the next good record starts a new copy (``new_copy``), so each
copy is one unbroken chain. A line that is not a sealed record is stored in no copy; the alert names it.

Where each agent's copy ends is read from storage once (:meth:`AuditTrail.load`); until then, and while
storage is down at start, that agent's trail is not fetched (its records wait on the agent, which keeps
what no collector has fetched).

Storage may lose what was fetched: a batch the spool could not take, or one it dropped when full. The
trail's place had moved past those records, so nothing fetched later would follow what storage holds, and
storage (which appends only records that link) would skip every one of them for good. So such a loss
:meth:`resyncs <AuditTrail.resync>` the trails: each agent's place is read from storage again (once the
spool is empty), the records are fetched again from there, and what a sweep fetched before the new place
was taken (its ``generation`` is old, :meth:`AuditTrail.current`) is not stored: it comes again.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from pydantic import ValidationError

from pki.auditchain import ChainRecord, read_record
from secure_collector.errors import PollError
from storage.escape import escape
from storage.models import AuditEntry, AuditTail

logger = logging.getLogger(__name__)

METHOD = "get_audit"
PAGE_LIMIT = 1000  # the most get_audit gives at once (docs/protocol.md)
DEFAULT_MAX_RECORDS_PER_SWEEP = 5000
_REMEMBERED_BREAKS = 16  # per agent: the same break met again (stuck behind a bad line) is not alerted twice
_CLAIMED_HASH = re.compile(r'"hash":"([0-9a-f]{64})"')
_RECORD_KEYS = frozenset({"records", "more", "gap"})
Call = tuple[str, tuple[Any, ...]]


class Break(NamedTuple):
    kind: str  # gap, link, record, start
    expected: str
    came: str

    @property
    def message(self) -> str:
        return f"audit chain broken ({self.kind}): expected {self.expected}; came {self.came}"


class AuditOutcome(NamedTuple):
    """What one sweep brought of one agent's trail."""

    entries: tuple[AuditEntry, ...]
    breaks: tuple[Break, ...]
    error: str | None  # why fetching stopped early (the agent's records wait for the next sweep)
    more: bool  # the agent holds more than this sweep fetched
    generation: int = 0  # the trail's place it was fetched from (:meth:`AuditTrail.current`)


class AnswerInvalid(ValueError):
    """A ``get_audit`` answer that is not the struct of the contract."""


class Page(NamedTuple):
    records: tuple[str, ...]
    more: bool
    gap: bool


def parse_page(value: object, limit: int) -> Page:
    """The validated ``get_audit`` answer (untrusted input: the wire parser already bounded its size)."""
    if not isinstance(value, dict) or set(value) != _RECORD_KEYS:
        raise AnswerInvalid("not a {records, more, gap} struct")
    records, more, gap = value["records"], value["more"], value["gap"]
    if type(more) is not bool or type(gap) is not bool:
        raise AnswerInvalid("more and gap must be booleans")
    if not isinstance(records, list) or len(records) > limit:
        raise AnswerInvalid(f"records must be a list of at most {limit}")
    if not all(type(line) is str for line in records):
        raise AnswerInvalid("every record must be a string")
    return Page(tuple(records), more, gap)


@dataclass
class _Trail:
    """One agent's place in its trail, and what the current sweep brought."""

    after: str  # the hash to ask after next ("": from the oldest record on the host)
    tail: str  # the hash of the current copy's last record ("": no copy yet)
    loaded_text: str  # that record described, as storage gave it (until a record of this run replaces it)
    new_copy: bool  # the next good record starts a new copy
    fresh: bool = False  # nothing of this agent was ever copied: its oldest record must start a chain
    broke_at: float | None = None
    generation: int = 0  # how often its place was read from storage again (:meth:`AuditTrail.resync`)
    remembered: deque[Break] = field(default_factory=lambda: deque(maxlen=_REMEMBERED_BREAKS))
    # this sweep
    entries: list[AuditEntry] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)
    fetched: int = 0
    limit: int = 0
    error: str | None = None
    more: bool = False
    active: bool = False
    broke: bool = False  # this sweep met a break already: a second one ends the sweep for this agent
    absorbing: bool = False  # the lines since this sweep's break are no records: more such lines are part of it
    absorbed: int = 0  # lines that were
    last: ChainRecord | None = None  # the current copy's last record, when it came in this run

    @property
    def tail_text(self) -> str:
        """The current copy's last record described, for messages (only made when one is needed)."""
        return self.last.describe() if self.last is not None else self.loaded_text

    def start_sweep(self) -> None:
        self.entries, self.breaks, self.fetched, self.error, self.more, self.active = [], [], 0, None, False, True
        self.broke, self.absorbing, self.absorbed = False, False, 0


class AuditTrail:
    """The engine's follow-up calls for every agent's audit trail. Used by the polling thread; :meth:`load`
    may come from another (the writer, once storage answers)."""

    def __init__(
        self,
        agents: Sequence[str],
        *,
        max_records_per_sweep: int = DEFAULT_MAX_RECORDS_PER_SWEEP,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agents = tuple(agents)
        self.max_records = max_records_per_sweep
        self._clock = clock
        self._lock = threading.Lock()
        self._trails: dict[str, _Trail] = {}
        self._stale: set[str] = set()  # agents whose place must be read from storage again
        self._reload: dict[str, AuditTail | None] = {}  # places read again, taken at the agent's next sweep

    @property
    def pending(self) -> tuple[str, ...]:
        """Agents whose place in storage is not known yet (or must be read again)."""
        with self._lock:
            return tuple(agent for agent in self.agents if agent not in self._trails or agent in self._stale)

    def load(self, tails: Mapping[str, AuditTail]) -> None:
        """Where each agent's central copy ends (agents missing from ``tails`` have none yet)."""
        with self._lock:
            for agent in self.agents:
                if agent in self._stale:
                    self._stale.discard(agent)
                    self._reload[agent] = tails.get(agent)  # the polling thread takes it (first_call)
                elif agent not in self._trails:
                    self._trails[agent] = _Trail("", "", "", new_copy=True)
                    self._place(self._trails[agent], tails.get(agent))

    @staticmethod
    def _place(trail: _Trail, tail: AuditTail | None) -> None:
        if tail is None:
            trail.after, trail.tail, trail.loaded_text = "", "", "nothing (no copy yet)"
            trail.new_copy, trail.fresh = True, True
        else:
            trail.after, trail.tail = tail.hash, tail.hash
            trail.loaded_text = f"seq {tail.seq} ({tail.time or 'no time'}, hash {tail.hash[:16]})"
            trail.new_copy, trail.fresh = False, False
        trail.last, trail.broke_at = None, None

    def resync(self, agents: Iterable[str] | None = None) -> tuple[str, ...]:
        """Read the place of ``agents`` (None: every agent) from storage again before their trails are fetched
        again: storage lost records this trail had fetched (module docstring), or another collector copied
        them meanwhile (``--shard auto``, an agent taken over). The agents concerned."""
        wanted = set(self.agents if agents is None else agents)
        with self._lock:
            known = tuple(agent for agent in self.agents if agent in self._trails and agent in wanted)
            self._stale.update(known)
            for agent in known:
                self._reload.pop(agent, None)
        return known

    def current(self, agent: str, generation: int) -> bool:
        """Was an outcome of ``generation`` fetched from ``agent``'s place as storage knows it (store it)?"""
        with self._lock:
            trail = self._trails.get(agent)
            return (
                trail is not None
                and agent not in self._stale
                and agent not in self._reload
                and trail.generation == generation
            )

    # -- the engine's hook ------------------------------------------------------------------------

    def first_call(self, agent: str, sample: object = None) -> Call | None:
        """The first ``get_audit`` of this sweep for ``agent`` (None: its place is not known yet)."""
        with self._lock:
            trail = self._trails.get(agent)
            if trail is None or agent in self._stale:
                return None
            if agent in self._reload:
                self._place(trail, self._reload.pop(agent))
                trail.generation += 1
        trail.start_sweep()
        return self._next(trail)

    def _next(self, trail: _Trail) -> Call | None:
        trail.limit = min(PAGE_LIMIT, self.max_records - trail.fetched)
        if trail.limit <= 0:
            return None
        return METHOD, (trail.after, trail.limit)

    def answer(self, agent: str, value: object) -> Call | None:
        """Take one answer; the next call to make, or None when this sweep is done with ``agent``."""
        trail = self._trails[agent]
        try:
            page = parse_page(value, trail.limit)
        except AnswerInvalid as exc:
            trail.error = f"bad get_audit answer: {exc}"
            return None
        self._take(agent, trail, page)
        trail.fetched += len(page.records)
        trail.more = page.more
        if page.more and page.records and trail.error is None:
            return self._next(trail)
        return None

    def failed(self, agent: str, error: PollError) -> None:
        trail = self._trails.get(agent)
        if trail is not None:
            trail.error = f"get_audit: {error.state}: {error.detail}"

    def finish(self, agent: str) -> AuditOutcome | None:
        """What this sweep brought for ``agent`` (None if its trail was not fetched)."""
        trail = self._trails.get(agent)
        if trail is None or not trail.active:
            return None
        trail.active = False
        if trail.absorbed:
            logger.warning("%s: audit trail: %d more lines that are not sealed records followed", agent, trail.absorbed)
        if trail.error is not None:
            logger.warning("%s: audit trail: %s", agent, trail.error)
        if trail.error is not None or trail.limit <= 0:
            trail.more = True
        outcome = AuditOutcome(tuple(trail.entries), tuple(trail.breaks), trail.error, trail.more, trail.generation)
        trail.entries, trail.breaks = [], []
        return outcome

    # -- checking ---------------------------------------------------------------------------------

    def _take(self, agent: str, trail: _Trail, page: Page) -> None:
        if page.gap and trail.after:
            if self._again(trail):
                return
            came = "nothing: its log holds no record at all"
            first = read_record(page.records[0]) if page.records else None
            if isinstance(first, ChainRecord):
                came = f"its oldest record is {first.describe()}"
            elif page.records:
                came = f"its oldest line, which is not a record ({first}): {escape(page.records[0], 120)}"
            self._break(trail, Break("gap", f"the agent to still hold {trail.tail_text}", came))
            trail.absorbing = True  # lines that are no records at the host's oldest are part of the gap
            if not page.records:
                trail.after = ""
        for raw in page.records:
            record = read_record(raw)
            entry = None if isinstance(record, str) else self._entry(agent, record)
            found = self._problem(agent, trail, record, entry, raw)
            if found is not None and found.kind == "record" and trail.absorbing:
                trail.absorbed += 1  # a run of lines that are no records is one break (there may be no hash
                # to ask past them: split over sweeps, such a run would hold the trail there for good)
            elif found is not None:
                if self._again(trail):
                    return  # this record and what follows wait for the next sweep
                self._break(trail, found)
                trail.absorbing = found.kind == "record"
            if entry is None or isinstance(record, str):
                claimed = _CLAIMED_HASH.search(raw)
                if claimed is not None:
                    trail.after = claimed.group(1)  # ask past it next time
                continue
            trail.absorbing = False
            if trail.new_copy:
                entry = entry.model_copy(update={"new_copy": True, "closes": trail.tail, "broke_at": trail.broke_at})
            trail.new_copy, trail.fresh, trail.broke_at = False, False, None
            trail.entries.append(entry)
            trail.tail, trail.after, trail.last = record.hash, record.hash, record

    @staticmethod
    def _again(trail: _Trail) -> bool:
        """A second break in one sweep: stop fetching this agent until the next sweep (True).

        One break a sweep is all an honest agent's log can show; a stream of breaks (sealed records each
        following a record that is not there) would otherwise start a new central copy, and log a line, per
        record. So each sweep takes one break, at most one new copy; the records wait on the agent. A run
        of lines that are not records is one break (:meth:`_take`): the next sweep could not ask past a
        line without a hash.
        """
        if not trail.broke:
            return False
        trail.error = "the chain broke again in this sweep; the rest is fetched next sweep"
        return True

    @staticmethod
    def _entry(agent: str, record: ChainRecord) -> AuditEntry | None:
        if record.agent != agent:
            return None
        try:
            return AuditEntry(
                agent=agent,
                seq=record.seq,
                hash=record.hash,
                prev=record.prev,
                time=record.time[:32],
                line=record.line,
            )
        except ValidationError:
            return None  # sealed, but with values no record of ours has (a negative seq, a malformed prev)

    @staticmethod
    def _problem(
        agent: str, trail: _Trail, record: ChainRecord | str, entry: AuditEntry | None, raw: str
    ) -> Break | None:
        """The break ``record`` is where it came (None: it continues the copy, or starts the new one)."""
        if entry is None or isinstance(record, str):
            if isinstance(record, str):
                problem = record
            elif record.agent != agent:
                problem = "not a record of this agent"
            else:  # sealed (by anyone: the seal is a plain hash), but with values no agent writes
                problem = "a sealed record with values no agent writes (a forgery)"
            expected = f"a sealed record of {agent} after {trail.tail_text}"
            return Break("record", expected, f"{problem}: {escape(raw, 120)}")
        if trail.fresh and not record.starts_chain:
            expected = "the agent's oldest record to start a chain (prev 0...0, or a rotate record)"
            return Break("start", expected, f"{record.describe()} following {record.prev[:16]}")
        if not trail.new_copy and record.prev != trail.tail:
            came = f"{record.describe()} following {record.prev[:16]}"
            return Break("link", f"a record following {trail.tail_text}", came)
        return None

    def _break(self, trail: _Trail, found: Break) -> None:
        trail.broke = True
        trail.new_copy = True
        trail.fresh = False
        if trail.broke_at is None:
            trail.broke_at = self._clock()
        if found in trail.remembered:
            return  # the same break again (stuck behind a bad line until records follow it): said already
        trail.remembered.append(found)
        trail.breaks.append(found)
